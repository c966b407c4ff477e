//! The mutating admission webhook that injects `pulse-sidecar` into pods
//! labelled `pulse.dev/inject: <pipeline>`.
//!
//! After linkerd2's policy controller, the decision is pure and the server
//! thin: [`review`] reads the AdmissionReview, [`patch`] turns an opted-in pod
//! and its [`InjectTarget`] into a JSON patch (with what the pod's own
//! annotations and metadata add, [`per_pod`]), [`sidecar`] builds the
//! container and volumes; [`server`] only serves HTTPS and reads the pod's
//! `MetricPipeline`. Every answer allows the pod: a sidecar that cannot be
//! injected is a warning, never a pod that cannot start.

pub mod patch;
pub mod per_pod;
pub mod review;
pub mod server;
pub mod sidecar;
pub mod tls;

pub use patch::{CannotInject, Injection};
pub use review::{Admission, Candidate, admit, to_wire};
pub use server::{Webhook, WebhookConfig, WebhookError, native_sidecars_supported, serve};
pub use sidecar::{
    GatewayLimits, InjectTarget, InvalidSidecarSettings, SidecarSettings, TokenSecret,
};
