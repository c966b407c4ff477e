//! The `pulse` command: every role of the platform in one binary.
//!
//! `pulse up` runs the gateway, processor and dashboard in one process, on the
//! embedded engines unless the config names Kafka, PostgreSQL or Redis; the same
//! [`up::start`] is what the end-to-end tests run. `pulse gateway|processor|dashboard`
//! run one role alone ([`up::start_role`]) on the production engines.
//! [`engines`] turns a config into the engines; [`openapi`] gathers every
//! listener's OpenAPI document. [`backup`] is `pulse backup` and `pulse restore`.

pub mod backup;
pub mod engines;
pub mod openapi;
pub mod up;
