//! The HTTP edge every role shares: what a connection, a request head and a
//! request body may take, and the one error shape of every answer.
//!
//! - [`budget`]: the bytes all bodies of a process may hold while decoded;
//! - [`body`]: reading and decoding an ingest body (gateway and sidecar);
//! - [`shape`]: head limits and JSON error answers, applied by
//!   [`crate::serve`], which also caps connections and times out heads.

pub mod body;
pub mod budget;
pub mod shape;

pub use body::{BodyEdge, DecodeError, ReadError, Received, content_encoding};
pub use budget::{DecodeBudget, Reservation};
