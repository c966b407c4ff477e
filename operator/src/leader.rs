//! Leader election: of the operator's replicas only the holder of the
//! `coordination.k8s.io` Lease `pulse-operator` reconciles, so two replicas
//! never apply the same objects at once. The Lease protocol (server-side
//! apply, renewals before expiry, clock-skew grace) is kube-lease-manager's.

use std::future::Future;

use kube::Client;
use kube_lease_manager::{LeaseManagerBuilder, LeaseManagerError};

/// Name of the Lease the replicas compete for (the chart's RBAC names it too).
pub const LEASE_NAME: &str = "pulse-operator";
/// How long a held Lease stays valid without renewal: a replica that dies
/// is replaced after at most this long.
pub const LEASE_SECONDS: u64 = 15;
/// How long before expiry the holder renews.
pub const RENEW_GRACE_SECONDS: u64 = 5;

/// Why leading stopped.
#[derive(Debug, thiserror::Error)]
pub enum LeaderError {
    #[error(
        "cannot use the Lease {namespace}/{LEASE_NAME}: {source}; check the operator's RBAC for \
         coordination.k8s.io leases (get, create, update, patch) in its namespace"
    )]
    Lease {
        namespace: String,
        #[source]
        source: LeaseManagerError,
    },
    #[error(
        "lost the Lease {namespace}/{LEASE_NAME} to another replica (or could not renew it in time); \
         exiting so that this replica restarts as a follower"
    )]
    Lost { namespace: String },
}

/// Who competes for the Lease and where.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Candidate {
    /// The operator's namespace (env `POD_NAMESPACE`).
    pub namespace: String,
    /// This replica's identity (env `POD_NAME`).
    pub identity: String,
}

/// Waits until this replica holds the Lease, then runs `work` for as long as
/// it does. Returns `work`'s result, or [`LeaderError::Lost`] when the Lease
/// is lost first (`work` is dropped then, so nothing more is applied).
pub async fn lead<F, T>(client: Client, candidate: &Candidate, work: F) -> Result<T, LeaderError>
where
    F: Future<Output = T>,
{
    let lease_error = |source| LeaderError::Lease {
        namespace: candidate.namespace.clone(),
        source,
    };
    let manager = LeaseManagerBuilder::new(client, LEASE_NAME)
        .with_namespace(candidate.namespace.clone())
        .with_identity(candidate.identity.clone())
        .with_duration(LEASE_SECONDS)
        .with_grace(RENEW_GRACE_SECONDS)
        .with_field_manager(crate::names::FIELD_MANAGER)
        .build()
        .await
        .map_err(lease_error)?;
    let (mut leading, task) = manager.watch().await;
    tracing::info!(
        message = "Waiting for the leader Lease.",
        namespace = %candidate.namespace,
        lease = LEASE_NAME,
        identity = %candidate.identity
    );
    let lost = |namespace: &str| LeaderError::Lost {
        namespace: namespace.to_string(),
    };
    if leading.wait_for(|is_leader| *is_leader).await.is_err() {
        return Err(lost(&candidate.namespace));
    }
    tracing::info!(message = "Leading.", lease = LEASE_NAME, identity = %candidate.identity);
    let outcome = tokio::select! {
        result = work => Ok(result),
        _ = leading.wait_for(|is_leader| !*is_leader) => Err(lost(&candidate.namespace)),
    };
    // Dropping the receiver makes the manager release the Lease, so a
    // follower takes over at once instead of after expiry.
    drop(leading);
    if let Ok(Err(error)) = task.await {
        tracing::warn!(message = "Could not release the leader Lease.", %error);
    }
    outcome
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fixtures::FakeApi;

    #[tokio::test]
    async fn the_only_candidate_takes_the_lease_runs_its_work_and_releases() {
        let (api, client) = FakeApi::start();
        let candidate = Candidate {
            namespace: "pulse-system".into(),
            identity: "pulse-operator-0".into(),
        };
        let outcome = tokio::time::timeout(
            std::time::Duration::from_secs(20),
            lead(client, &candidate, async { 42 }),
        )
        .await
        .unwrap_or_else(|_| panic!("not leading within 20 s: {:#?}", api.recorded()));
        assert_eq!(outcome.expect("lead"), 42);
        let lease = "/apis/coordination.k8s.io/v1/namespaces/pulse-system/leases";
        let recorded = api.recorded();
        let created = recorded
            .iter()
            .find(|r| r.method == "POST" && r.path == lease)
            .expect("the missing Lease is created");
        assert_eq!(created.body["metadata"]["name"], LEASE_NAME);
        let taken = recorded.iter().any(|r| {
            r.method == "PATCH"
                && r.path == format!("{lease}/{LEASE_NAME}")
                && r.body["spec"]["holderIdentity"] == "pulse-operator-0"
        });
        assert!(taken, "{:#?}", api.lines());
    }
}
