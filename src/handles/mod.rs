//! One module per transport kind, as uvloop keeps one file per handle kind. The loop
//! itself only schedules and dispatches; these drive protocols.

pub mod accept;
pub mod stream;
pub mod tls;
