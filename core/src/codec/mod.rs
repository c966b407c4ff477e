//! Wire codecs: HTTP request bodies, bus records and checkpointed window state.

pub mod body;
pub mod record;
pub mod remote_write;
pub mod state;
