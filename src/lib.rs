//! The `pulse` command: every role of the platform in one binary.
//!
//! `pulse up` wires the gateway, processor and dashboard to the embedded engines
//! in one process; the same [`up::start`] is what the end-to-end tests run.

pub mod bench;
pub mod up;
