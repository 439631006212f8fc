"""The loop releases the GIL while it waits in the poller, as select() does in asyncio,
so other Python threads run meanwhile."""

import threading
import time


def test_other_threads_run_while_the_loop_waits(loop):
    stop = threading.Event()
    ticks = [0]

    def spin():
        while not stop.is_set():
            ticks[0] += 1

    t = threading.Thread(target=spin)
    t.start()
    try:
        # The loop has nothing to do for 0.2 s: it should be blocked in the poller
        # with the GIL released, leaving the spinning thread the interpreter.
        start = ticks[0]
        t0 = time.monotonic()
        loop.call_later(0.2, loop.stop)
        loop.run_forever()
        elapsed = time.monotonic() - t0
        during = ticks[0] - start
    finally:
        stop.set()
        t.join()
    assert 0.15 < elapsed < 5
    # Holding the GIL through the wait would leave the thread only the interpreter's
    # switch interval slices; released, it spins freely. Compare with a measured rate.
    stop.clear()
    ticks[0] = 0
    t = threading.Thread(target=spin)
    t.start()
    time.sleep(0.05)
    stop.set()
    t.join()
    free_rate = ticks[0] / 0.05
    assert during > 0.3 * free_rate * elapsed, (during, free_rate * elapsed)
