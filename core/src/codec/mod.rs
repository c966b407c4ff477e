//! Wire codecs: HTTP request bodies, the JSON of points and sketches, bus
//! records and checkpointed window state.

pub mod body;
pub mod json;
pub mod record;
pub mod remote_write;
pub mod state;
