//! The one error type of a reconcile. Each variant has a short reason (the
//! word in the status condition, the Event and the error metric) and a
//! message saying what failed, where, and what to do.

use crate::admin::{SchemaAdminError, TopicAdminError};

#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A Kubernetes API call failed (retried with backoff).
    #[error("Kubernetes API call failed while {action}: {source}")]
    Kube {
        action: String,
        #[source]
        source: kube::Error,
    },
    #[error(transparent)]
    Topics(#[from] TopicAdminError),
    #[error(transparent)]
    Schema(#[from] SchemaAdminError),
    /// The database URL Secret (or its key) is missing or not UTF-8.
    #[error(
        "the database URL is not readable from Secret {namespace}/{name} key {key}: {problem}; create the \
         Secret or fix spec.database.urlSecretRef"
    )]
    DatabaseSecret {
        namespace: String,
        name: String,
        key: String,
        problem: String,
    },
    /// A Secret `spec.kafka.tls` or `spec.kafka.sasl` names (or its key) is
    /// missing or not UTF-8.
    #[error(
        "the Kafka credentials are not readable from Secret {namespace}/{name} key {key}: {problem}; create \
         the Secret or fix spec.kafka.tls / spec.kafka.sasl"
    )]
    KafkaSecret {
        namespace: String,
        name: String,
        key: String,
        problem: String,
    },
    /// The finalizer helper failed around apply or cleanup.
    #[error("{0}")]
    Finalizer(#[source] Box<kube::runtime::finalizer::Error<Error>>),
}

impl Error {
    /// A short CamelCase reason for conditions, events and metrics.
    pub fn reason(&self) -> &'static str {
        use kube::runtime::finalizer::Error as F;
        match self {
            Error::Kube { .. } => "KubernetesApiError",
            Error::Topics(e) => e.reason(),
            Error::Schema(e) => e.reason(),
            Error::DatabaseSecret { .. } => "DatabaseSecretMissing",
            Error::KafkaSecret { .. } => "KafkaSecretMissing",
            Error::Finalizer(inner) => match inner.as_ref() {
                F::ApplyFailed(e) | F::CleanupFailed(e) => e.reason(),
                F::AddFinalizer(_) | F::RemoveFinalizer(_) => "FinalizerPatchFailed",
                F::UnnamedObject | F::InvalidFinalizer => "InvalidObject",
            },
        }
    }

    pub(crate) fn kube(action: impl Into<String>) -> impl FnOnce(kube::Error) -> Error {
        let action = action.into();
        move |source| Error::Kube { action, source }
    }
}
