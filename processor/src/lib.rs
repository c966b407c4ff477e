//! The stream processor: reads points from the bus, aggregates them into
//! event-time windows, and commits closed windows, raw points, open window state
//! and offsets to the store in one transaction (exactly-once), then publishes
//! closed windows to the cache.

mod checkpoint;
pub mod deliver;
pub mod judge;
pub mod metrics;
mod partial;
mod post;
pub mod run;
mod status;
pub mod watermark;
pub mod window;

pub use run::{Processor, ProcessorError};
