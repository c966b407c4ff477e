//! Status conditions, computed from what a reconcile found (pure), merged
//! with the previous ones so `lastTransitionTime` moves only when a
//! condition's status changes (the Kubernetes API conventions).

use std::time::Duration;

use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use k8s_openapi::jiff::Timestamp;

pub const TOPICS_READY: &str = "TopicsReady";
pub const SCHEMA_READY: &str = "SchemaReady";
pub const GATEWAY_READY: &str = "GatewayReady";
pub const PROCESSOR_READY: &str = "ProcessorReady";
pub const DASHBOARD_READY: &str = "DashboardReady";
pub const READY: &str = "Ready";

/// One condition before it gets its time and generation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Check {
    pub type_: &'static str,
    /// `None`: not known yet (an earlier step failed).
    pub ok: Option<bool>,
    pub reason: String,
    pub message: String,
}

impl Check {
    pub fn ok(type_: &'static str, reason: &str, message: impl Into<String>) -> Check {
        Check {
            type_,
            ok: Some(true),
            reason: reason.into(),
            message: message.into(),
        }
    }

    pub fn failed(type_: &'static str, reason: &str, message: impl Into<String>) -> Check {
        Check {
            type_,
            ok: Some(false),
            reason: reason.into(),
            message: message.into(),
        }
    }

    /// A condition an earlier failing step kept from being checked.
    pub fn unknown(type_: &'static str) -> Check {
        Check {
            type_,
            ok: None,
            reason: "NotChecked".into(),
            message: "an earlier step failed; see the Ready condition".into(),
        }
    }

    fn status(&self) -> &'static str {
        match self.ok {
            Some(true) => "True",
            Some(false) => "False",
            None => "Unknown",
        }
    }
}

/// How often a healthy resource is checked again (owned objects and spec
/// changes wake it sooner).
pub const RESYNC: Duration = Duration::from_secs(300);
/// How soon a resource whose pods are still starting is checked again.
pub const PROGRESSING: Duration = Duration::from_secs(30);

/// Appends the `Ready` condition to `checks` and says when to look again:
/// soon while something is still coming up, rarely once everything is ready.
pub fn conclude(checks: &mut Vec<Check>) -> Duration {
    let ready = ready(checks);
    let again = if ready.ok == Some(true) {
        RESYNC
    } else {
        PROGRESSING
    };
    checks.push(ready);
    again
}

/// The `Ready` condition over `checks`: `True` when all are, else the first
/// that is not, with its reason and message, so `kubectl get` shows what to fix.
pub fn ready(checks: &[Check]) -> Check {
    match checks.iter().find(|c| c.ok != Some(true)) {
        None => Check::ok(READY, "Reconciled", "every part is applied and available"),
        Some(first) => Check {
            type_: READY,
            ok: Some(false),
            reason: first.reason.clone(),
            message: format!("{}: {}", first.type_, first.message),
        },
    }
}

/// Whether a Deployment (as the API server answered the apply) has every
/// asked-for replica available.
pub fn deployment_check(type_: &'static str, deployment: &Deployment) -> Check {
    let wanted = deployment.spec.replicas.unwrap_or(1);
    let available = deployment
        .status
        .as_ref()
        .and_then(|s| s.available_replicas)
        .unwrap_or(0);
    let name = deployment.metadata.name.as_deref().unwrap_or("deployment");
    if available >= wanted {
        Check::ok(
            type_,
            "Available",
            format!("Deployment {name}: {available} of {wanted} replicas available"),
        )
    } else {
        Check::failed(
            type_,
            "Progressing",
            format!(
                "Deployment {name}: {available} of {wanted} replicas available; if this lasts, \
                 `kubectl describe deployment {name}` shows why pods do not start"
            ),
        )
    }
}

/// The conditions to write: `checks` with the generation they describe, each
/// keeping its previous `lastTransitionTime` when its status did not change.
pub fn conditions(
    previous: &[Condition],
    checks: &[Check],
    generation: Option<i64>,
    now: Timestamp,
) -> Vec<Condition> {
    checks
        .iter()
        .map(|check| {
            let status = check.status();
            let since = previous
                .iter()
                .find(|c| c.type_ == check.type_ && c.status == status)
                .map_or(Time(now), |c| c.last_transition_time.clone());
            Condition {
                type_: check.type_.to_string(),
                status: status.to_string(),
                reason: check.reason.clone(),
                message: check.message.clone(),
                observed_generation: generation,
                last_transition_time: since,
            }
        })
        .collect()
}

/// Whether `next` differs from `previous` in anything but times (a change
/// worth an Event).
pub fn changed(previous: &[Condition], next: &[Condition]) -> bool {
    let key = |c: &Condition| {
        (
            c.type_.clone(),
            c.status.clone(),
            c.reason.clone(),
            c.message.clone(),
        )
    };
    previous.len() != next.len() || previous.iter().zip(next).any(|(a, b)| key(a) != key(b))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(seconds: i64) -> Timestamp {
        Timestamp::from_second(seconds).unwrap_or(Timestamp::UNIX_EPOCH)
    }

    #[test]
    fn ready_names_the_first_condition_that_is_not_true() {
        let checks = [
            Check::ok(TOPICS_READY, "Created", "ok"),
            Check::failed(SCHEMA_READY, "DatabaseUnavailable", "no answer"),
            Check::unknown(GATEWAY_READY),
        ];
        let ready = ready(&checks);
        assert_eq!(ready.ok, Some(false));
        assert_eq!(ready.reason, "DatabaseUnavailable");
        assert_eq!(ready.message, "SchemaReady: no answer");
        let all = ready_all();
        assert_eq!(all.ok, Some(true));
    }

    fn ready_all() -> Check {
        ready(&[Check::ok(TOPICS_READY, "Created", "ok")])
    }

    #[test]
    fn transition_time_moves_only_when_the_status_changes() {
        let first = conditions(
            &[],
            &[Check::failed(GATEWAY_READY, "Progressing", "0 of 1")],
            Some(1),
            at(100),
        );
        let same = conditions(
            &first,
            &[Check::failed(GATEWAY_READY, "Progressing", "0 of 2")],
            Some(2),
            at(200),
        );
        assert_eq!(same[0].last_transition_time, Time(at(100)));
        assert_eq!(same[0].observed_generation, Some(2));
        let flipped = conditions(
            &same,
            &[Check::ok(GATEWAY_READY, "Available", "2 of 2")],
            Some(2),
            at(300),
        );
        assert_eq!(flipped[0].last_transition_time, Time(at(300)));
        assert!(changed(&same, &flipped));
        assert!(!changed(&flipped, &flipped.clone()));
    }

    #[test]
    fn a_deployment_is_ready_when_all_replicas_are_available() {
        let mut deployment: Deployment = serde_json::from_value(serde_json::json!({
            "metadata": {"name": "checkout-gateway"},
            "spec": {"replicas": 2, "selector": {}, "template": {}},
            "status": {"availableReplicas": 1}
        }))
        .expect("deployment");
        let check = deployment_check(GATEWAY_READY, &deployment);
        assert_eq!(
            (check.ok, check.reason.as_str()),
            (Some(false), "Progressing")
        );
        if let Some(status) = deployment.status.as_mut() {
            status.available_replicas = Some(2);
        }
        assert_eq!(deployment_check(GATEWAY_READY, &deployment).ok, Some(true));
    }
}
