//! The bus: a partitioned, durable log of point records between gateway and processor.

use std::time::Duration;

use async_trait::async_trait;

pub mod embedded;
pub mod kafka;
mod kafka_security;

/// A record to append. `key` is the series id (see `pulse_core::series`): all
/// records of one key go to one partition, in order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OutgoingRecord {
    pub key: u64,
    pub value: Vec<u8>,
}

/// A record read back, with its position.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BusRecord {
    pub partition: u32,
    pub offset: u64,
    pub key: Vec<u8>,
    pub value: Vec<u8>,
}

/// What a consumer sees next.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ConsumerEvent {
    /// These partitions are now this consumer's; load their checkpoints and seek.
    Assigned(Vec<u32>),
    /// These partitions are taken away; commit their progress now.
    Revoked(Vec<u32>),
    /// Records, in offset order within each partition.
    Records(Vec<BusRecord>),
    /// Nothing arrived within the wait.
    Idle,
}

/// Bus failures. `Unavailable` and `Full` are transient: callers answer 503 with
/// `Retry-After` (gateway) or retry with backoff (processor).
#[derive(Debug, thiserror::Error)]
pub enum BusError {
    #[error("bus is unavailable: {0}")]
    Unavailable(String),
    #[error("bus queue is full; retry later")]
    Full,
    #[error("bus error: {0}")]
    Other(String),
}

/// The producing side (gateway).
#[async_trait]
pub trait BusProducer: Send + Sync {
    /// Appends `records` and returns once they are durable: after this returns
    /// `Ok`, a crash of any process loses none of them.
    async fn send(&self, records: Vec<OutgoingRecord>) -> Result<(), BusError>;

    /// Whether the bus currently accepts writes (for `/readyz`).
    async fn ready(&self) -> Result<(), BusError>;
}

/// The consuming side (processor): one consumer of the pipeline's group.
#[async_trait]
pub trait BusConsumer: Send {
    /// Waits up to `wait` for the next event; at most `max` records per event.
    async fn next(&mut self, max: usize, wait: Duration) -> Result<ConsumerEvent, BusError>;

    /// Continues `partition` from `offset` (the next offset to read).
    async fn seek(&mut self, partition: u32, offset: u64) -> Result<(), BusError>;

    /// Records progress with the bus (advisory: the store holds the offsets that
    /// count; this lets the bus trim old records and report lag).
    async fn commit(&mut self, offsets: &[(u32, u64)]) -> Result<(), BusError>;

    /// Stops (`true`) or resumes (`false`) fetching records of every assigned
    /// partition, including ones assigned later, while `next` goes on
    /// polling: rebalance events still arrive and the consumer stays a live
    /// member of its group. A processor whose store is down pauses instead of
    /// no longer polling, which would get it thrown out of the group. After a
    /// resume, reading goes on right after the last record handed out (or at
    /// a position asked for with `seek`).
    async fn pause(&mut self, paused: bool) -> Result<(), BusError>;

    /// The next offset that will be written, per assigned partition (for lag).
    async fn end_offsets(&self) -> Result<Vec<(u32, u64)>, BusError>;
}
