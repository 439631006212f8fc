//! The loop's clock.
//!
//! asyncio's `loop.time()` is `time.monotonic()`, which reads `CLOCK_MONOTONIC`. Timers
//! scheduled with `call_at(time.monotonic() + d)` must compare with the loop's own idea of
//! now, so oxio reads the very same clock rather than an `Instant` with its own origin.

/// Seconds on `CLOCK_MONOTONIC`, the clock behind Python's `time.monotonic()`.
///
/// Guaranteed never to go backwards within a process.
#[inline]
pub fn monotonic() -> f64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `ts` is a valid, writable timespec and CLOCK_MONOTONIC exists on every
    // platform oxio builds for; clock_gettime only writes into the struct it is given.
    let rc = unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    debug_assert_eq!(rc, 0);
    ts.tv_sec as f64 + ts.tv_nsec as f64 * 1e-9
}

/// Resolution of [`monotonic`] in seconds (asyncio's `_clock_resolution`).
///
/// Timers due within one resolution step of now are run now, so a timer is never
/// polled for with a zero timeout over and over.
pub fn resolution() -> f64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: as in `monotonic`: a valid out-pointer for a clock that exists.
    let rc = unsafe { libc::clock_getres(libc::CLOCK_MONOTONIC, &mut ts) };
    if rc != 0 {
        return 1e-9;
    }
    ts.tv_sec as f64 + ts.tv_nsec as f64 * 1e-9
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn monotonic_never_goes_back() {
        let mut last = monotonic();
        for _ in 0..10_000 {
            let now = monotonic();
            assert!(now >= last);
            last = now;
        }
    }

    #[test]
    fn resolution_is_small_and_positive() {
        let r = resolution();
        assert!(r > 0.0 && r < 0.01, "{r}");
    }
}
