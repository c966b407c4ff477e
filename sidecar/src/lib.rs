//! `pulse-sidecar`: the small process next to every app container. Apps send it
//! metrics the way they already do — the gateway's HTTP contract, StatsD /
//! DogStatsD over UDP, a Prometheus endpoint it scrapes, OTLP/HTTP — on
//! localhost; it validates them, keeps them in a disk buffer, and forwards them
//! to the pipeline's gateway in compressed batches, retrying, so that nothing
//! is lost while the gateway, Kafka or the network are down.
//!
//! Pure parts (parsers, aggregation, the segment format, the retry policy)
//! are apart from I/O, so they are tested on their own; `app` wires them up.

pub mod admin;
pub mod aggregate;
pub mod app;
pub mod buffer;
pub mod config;
pub mod encode;
pub mod forward;
pub mod metrics;
pub mod openapi;
pub mod parse;
pub mod receivers;
pub mod split;
