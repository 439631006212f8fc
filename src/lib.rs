//! `oxio._oxio`: the Python binding of oxio's engine.
//!
//! This crate is the only Rust that touches Python. It turns the engine's parts
//! (`oxio-core`) into an asyncio event loop: `Loop` schedules and dispatches, `Handle`
//! and `TimerHandle` are the scheduled callbacks, and the remaining modules hold the
//! cold paths (error reporting, descriptor watches, the executor bridge).

mod bytes_pool;
mod callback_check;
mod errors;
mod event_loop;
mod executor;
mod fastcall;
mod fd_watch;
mod gil_cell;
mod handle;
mod handle_alloc;
mod handles;
mod py_buffer;
mod py_refs;
mod resolve;
mod sock_ops;
mod sockaddr;
mod transport_proxy;

use pyo3::prelude::*;

/// The extension module. It needs the GIL: the loop's state is guarded by it.
#[pymodule(gil_used = true)]
fn _oxio(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add("__version__", env!("CARGO_PKG_VERSION"))?;
    event_loop::register(m)?;
    resolve::register(m)?;
    handles::stream::register(m)?;
    handles::accept::register(m)?;
    handles::tls::register(m)?;
    sock_ops::register(m)?;
    transport_proxy::register(m)?;
    m.add_class::<handle::Handle>()?;
    m.add_class::<handle::TimerHandle>()?;
    handle_alloc::install_all(&[
        m.py().get_type::<handle::Handle>(),
        m.py().get_type::<handle::TimerHandle>(),
    ]);
    Ok(())
}
