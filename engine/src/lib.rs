//! The engines behind Pulse's three storage roles, each a small trait with an
//! embedded implementation (for `pulse up` and fast tests) and a production one:
//!
//! | trait | embedded | production |
//! |---|---|---|
//! | [`bus::BusProducer`], [`bus::BusConsumer`] | [`bus::embedded::SqliteBus`], a durable partitioned log in SQLite | Kafka |
//! | [`store::Store`] | [`store::sqlite::SqliteStore`] | TimescaleDB / PostgreSQL |
//! | [`cache::Cache`] | [`cache::memory::MemoryCache`] | Redis |
//!
//! Every implementation of a trait passes the same conformance suite
//! (`conformance` module), so the roles cannot tell them apart.

pub mod bus;
pub mod cache;
mod sqlite;
pub mod store;
mod tls;

#[cfg(test)]
pub mod conformance;
#[cfg(test)]
mod kafka_front;
#[cfg(test)]
mod kafka_tls;
#[cfg(test)]
mod tls_peers;
