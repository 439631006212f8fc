//! The engine without Python: timers, a cancelled timer, a level-triggered reader on a
//! socket pair, and a wake-up from another thread.
//!
//!     cargo run -p oxio-core --example ticker

use std::cell::Cell;
use std::io::{Read, Write};
use std::os::fd::AsRawFd;
use std::os::unix::net::UnixStream;
use std::rc::Rc;
use std::time::Duration;

use oxio_core::EventLoop;

fn main() -> std::io::Result<()> {
    let mut lp = EventLoop::new()?;
    let start = lp.time();

    let ticks = Rc::new(Cell::new(0));
    for i in 1..=3 {
        let ticks = ticks.clone();
        lp.call_later(0.01 * i as f64, move |lp| {
            ticks.set(ticks.get() + 1);
            println!("tick {i} at +{:.3}s", lp.time() - start);
        });
    }
    let never = lp.call_later(0.02, |_| unreachable!("cancelled timers never run"));
    lp.cancel(&never);

    let (mut ours, mut theirs) = UnixStream::pair()?;
    ours.set_nonblocking(true)?;
    theirs.write_all(b"hi")?;
    let fd = ours.as_raw_fd();
    lp.add_reader(fd, move |lp| {
        let mut byte = [0u8; 1];
        if ours.read(&mut byte).is_ok() {
            println!("read {:?}", byte[0] as char);
        } else {
            lp.remove_reader(fd);
        }
    })?;

    let remote = lp.remote();
    let waker = std::thread::spawn(move || {
        std::thread::sleep(Duration::from_millis(50));
        remote.call_soon_threadsafe(|lp| {
            println!("woken from another thread; stopping");
            lp.stop();
        });
    });
    lp.run_forever()?;
    waker.join().expect("waker thread");
    assert_eq!(ticks.get(), 3);
    Ok(())
}
