//! Pure: an AdmissionReview's bytes -> the answer, in two steps around the one
//! piece of I/O (finding the pod's pipeline): [`admit`] reads the request and
//! answers whatever needs no pipeline; a [`Candidate`] is an opted-in pod
//! waiting for its [`InjectTarget`].
//!
//! Every answer allows the pod. The webhook is registered with
//! `failurePolicy: Ignore`, and a request it cannot read gets the same
//! treatment: admitted unchanged, with a warning that `kubectl` shows, never a
//! denied pod because of the sidecar.

use base64::Engine;
use base64::prelude::BASE64_STANDARD;
use k8s_openapi::api::core::v1::Pod;
use kube::core::DynamicObject;
use kube::core::admission::{AdmissionRequest, AdmissionResponse, AdmissionReview, Operation};

use super::patch::{self, Injection};
use super::sidecar::InjectTarget;

/// Prefix of every warning, so a user sees which webhook said it.
const WARNING_PREFIX: &str = "pulse.dev sidecar injection";

/// What to do with one AdmissionReview.
#[derive(Debug)]
pub enum Admission {
    /// Answer now: not a pod for the webhook, already injected, or unreadable.
    Answer(Box<AdmissionReview<DynamicObject>>),
    /// An opted-in pod: resolve its pipeline, then call [`Candidate::inject`]
    /// or [`Candidate::skip`].
    Candidate(Box<Candidate>),
}

/// An opted-in pod that is not injected yet.
#[derive(Debug)]
pub struct Candidate {
    response: AdmissionResponse,
    pod: Pod,
    namespace: String,
    pipeline: String,
}

/// Reads an AdmissionReview (the body the API server posts).
pub fn admit(body: &[u8]) -> Admission {
    let review: AdmissionReview<DynamicObject> = match serde_json::from_slice(body) {
        Ok(review) => review,
        Err(error) => {
            return answer(unreadable(
                uid_of(body),
                &format!("cannot read the AdmissionReview: {error}"),
            ));
        }
    };
    let request: AdmissionRequest<DynamicObject> = match review.try_into() {
        Ok(request) => request,
        Err(_) => {
            return answer(unreadable(
                String::new(),
                "the AdmissionReview has no request",
            ));
        }
    };
    let response = AdmissionResponse::from(&request);
    if !request.kind.group.is_empty() || request.kind.kind != "Pod" {
        let warning = format!(
            "expected a Pod, got {}/{} {}; check the webhook's rules",
            request.kind.group, request.kind.version, request.kind.kind
        );
        return answer(warn(response, &warning));
    }
    // Only a new pod gets a sidecar: containers of an existing pod cannot be added.
    if request.operation != Operation::Create {
        return answer(response.into_review());
    }
    let Some(object) = request.object else {
        return answer(warn(response, "the request holds no pod"));
    };
    let pod: Pod = match serde_json::to_value(object).and_then(serde_json::from_value) {
        Ok(pod) => pod,
        Err(error) => {
            return answer(warn(response, &format!("cannot read the pod: {error}")));
        }
    };
    let Some(pipeline) = patch::requested_pipeline(&pod).map(str::to_string) else {
        return answer(response.into_review());
    };
    if patch::already_injected(&pod) {
        return answer(response.into_review());
    }
    let namespace = request
        .namespace
        .or_else(|| pod.metadata.namespace.clone())
        .filter(|ns| !ns.is_empty());
    let Some(namespace) = namespace else {
        return answer(warn(response, "the request names no namespace"));
    };
    Admission::Candidate(Box::new(Candidate {
        response,
        pod,
        namespace,
        pipeline,
    }))
}

impl Candidate {
    /// The pipeline the pod's `pulse.dev/inject` label names.
    pub fn pipeline(&self) -> &str {
        &self.pipeline
    }

    /// The pod's namespace, where its pipeline lives.
    pub fn namespace(&self) -> &str {
        &self.namespace
    }

    /// Answers with the sidecar patch, or unchanged with a warning when the
    /// sidecar would not fit the pod.
    pub fn inject(
        self,
        target: &InjectTarget,
        native_sidecars: bool,
    ) -> AdmissionReview<DynamicObject> {
        match patch::inject(&self.pod, &self.namespace, native_sidecars, target) {
            Ok(Injection::Patch(patch)) => match self.response.clone().with_patch(patch) {
                Ok(response) => response.into_review(),
                Err(error) => warn(self.response, &error.to_string()),
            },
            Ok(Injection::NotOptedIn | Injection::AlreadyInjected) => self.response.into_review(),
            Err(error) => warn(self.response, &format!("not injected: {error}")),
        }
    }

    /// Answers unchanged with `reason` (no such pipeline, lookup failed) as a warning.
    pub fn skip(self, reason: &str) -> AdmissionReview<DynamicObject> {
        warn(self.response, &format!("not injected: {reason}"))
    }
}

fn answer(review: AdmissionReview<DynamicObject>) -> Admission {
    Admission::Answer(Box::new(review))
}

/// Allowed, unchanged, with a warning for the user.
fn warn(mut response: AdmissionResponse, warning: &str) -> AdmissionReview<DynamicObject> {
    response
        .warnings
        .get_or_insert_with(Vec::new)
        .push(format!("{WARNING_PREFIX}: {warning}"));
    response.into_review()
}

/// An answer to a request that could not be read: kube's "invalid" answer,
/// turned into an allowed one, echoing the request's uid when it was found.
fn unreadable(uid: String, warning: &str) -> AdmissionReview<DynamicObject> {
    let mut response = AdmissionResponse::invalid(warning);
    response.allowed = true;
    response.uid = uid;
    warn(response, warning)
}

/// The `request.uid` of a body that is JSON but not a readable review.
fn uid_of(body: &[u8]) -> String {
    serde_json::from_slice::<serde_json::Value>(body)
        .ok()
        .and_then(|v| v.pointer("/request/uid")?.as_str().map(str::to_string))
        .unwrap_or_default()
}

/// The review as the API server must receive it. Kubernetes reads the
/// response's `patch` (a Go `[]byte`) as base64 text, as its API reference
/// says; kube's type serialises it as an array of numbers (kube-rs#1781),
/// which relies on a decoder quirk. So the patch goes out as base64.
pub fn to_wire(review: &AdmissionReview<DynamicObject>) -> serde_json::Value {
    let uid = review.response.as_ref().map(|r| r.uid.clone());
    let patch = review.response.as_ref().and_then(|r| r.patch.as_deref());
    let encoded = patch.map(|bytes| BASE64_STANDARD.encode(bytes));
    match serde_json::to_value(review) {
        Ok(mut wire) => {
            if let (Some(encoded), Some(slot)) = (encoded, wire.pointer_mut("/response/patch")) {
                *slot = serde_json::Value::String(encoded);
            }
            wire
        }
        // Only maps with non-text keys fail to serialise; a review has none.
        // Should it ever happen, the pod is still admitted, unchanged.
        Err(error) => serde_json::json!({
            "apiVersion": "admission.k8s.io/v1",
            "kind": "AdmissionReview",
            "response": {
                "uid": uid.unwrap_or_default(),
                "allowed": true,
                "warnings": [format!("{WARNING_PREFIX}: cannot encode the answer: {error}")],
            },
        }),
    }
}
