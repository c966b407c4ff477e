//! The Pulse operator: `MetricPipeline` and `Dashboard` custom resources, the
//! pure builders that turn a validated spec into Kubernetes objects, the
//! reconcilers that apply them, and the sidecar injection webhook.
//!
//! Shape (after kube-rs controller-rs and the Stackable operators): pure code
//! (`names`, `crd`, `build`, `webhook::patch`) never touches the network; I/O
//! (Kubernetes, Kafka admin, database) sits behind small traits at the edge.

pub mod admin;
pub mod build;
pub mod connections;
pub mod controller;
pub mod crd;
/// Test fixtures: only in tests and behind the `fixtures` feature (tower-test is no
/// dependency of the product).
#[cfg(any(test, feature = "fixtures"))]
pub mod fixtures;
pub mod health;
pub mod kafka_access;
pub mod leader;
pub mod metrics;
pub mod names;
pub mod run;
pub mod validate;
pub mod webhook;
