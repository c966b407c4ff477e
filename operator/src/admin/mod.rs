//! The pipeline's external systems the operator administers, each behind a
//! small trait so the reconciler is tested with fakes: Kafka topics
//! ([`topics`]) and the database schema ([`schema`]).

pub mod schema;
pub mod topics;

pub use schema::{PostgresSchemaAdmin, SchemaAdmin, SchemaAdminError};
pub use topics::{
    KafkaTopicAdmin, TopicAdmin, TopicAdminError, TopicSpec, TopicState, TopicsOutcome,
};
