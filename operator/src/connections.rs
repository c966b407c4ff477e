//! What a pipeline's pods read from Secrets besides Kafka's (see
//! [`crate::kafka_access`]): the database CA and read-replica URL, Redis's CA
//! and client certificate, and the bearer token files. Each Secret goes to the
//! roles that use it; the file paths the config names and the paths the
//! volumes are mounted at are both written here, so they cannot drift.
//!
//! Tokens are mounted as files, not passed as variables: a variable is fixed
//! when the pod starts, while the kubelet updates a mounted Secret in place,
//! and the gateway and the dashboard re-read the files every second, so a
//! rotated token is honoured without a restart.

use k8s_openapi::api::core::v1::{EnvVar, KeyToPath, SecretVolumeSource, Volume, VolumeMount};
use pulse_core::config::Config;

use crate::build::deployment::secret_env;
use crate::crd::{MetricPipelineSpec, SecretKeyRef};
use crate::names;

const DB_CA_DIR: &str = "/etc/pulse/db-ca";
const REDIS_CA_DIR: &str = "/etc/pulse/redis-ca";
const REDIS_CLIENT_DIR: &str = "/etc/pulse/redis-client";
const INGEST_TOKENS_DIR: &str = "/etc/pulse/ingest-tokens";
const READ_TOKENS_DIR: &str = "/etc/pulse/read-tokens";
/// The one file a CA or token Secret key is mounted as.
const CA_FILE: &str = "ca.crt";
const TOKENS_FILE: &str = "tokens";

/// The Secret references of one pipeline's connections and tokens.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Connections {
    database_ca: Option<SecretKeyRef>,
    database_read_url: Option<SecretKeyRef>,
    redis_ca: Option<SecretKeyRef>,
    redis_client_certificate: Option<String>,
    ingest_tokens: Option<SecretKeyRef>,
    read_tokens: Option<SecretKeyRef>,
}

/// Variables and Secret volumes (with their read-only mounts) for one role.
#[derive(Debug, Default)]
pub struct Mounts {
    pub env: Vec<EnvVar>,
    pub volumes: Vec<(Volume, VolumeMount)>,
}

impl Connections {
    pub fn of(spec: &MetricPipelineSpec) -> Connections {
        let auth = spec.auth.clone().unwrap_or_default();
        Connections {
            database_ca: spec.database.ca_secret_ref.clone(),
            database_read_url: spec.database.read_url_secret_ref.clone(),
            redis_ca: spec.redis.as_ref().and_then(|r| r.ca_secret_ref.clone()),
            redis_client_certificate: spec
                .redis
                .as_ref()
                .and_then(|r| r.client_certificate_secret.clone()),
            ingest_tokens: auth.ingest_tokens_secret_ref,
            read_tokens: auth.read_tokens_secret_ref,
        }
    }

    /// Sets the config keys naming the mounted files.
    pub fn render(&self, config: &mut Config) {
        if self.redis_ca.is_some() {
            config.cache.tls_ca_file = Some(format!("{REDIS_CA_DIR}/{CA_FILE}").into());
        }
        if self.redis_client_certificate.is_some() {
            config.cache.tls_cert_file = Some(format!("{REDIS_CLIENT_DIR}/tls.crt").into());
            config.cache.tls_key_file = Some(format!("{REDIS_CLIENT_DIR}/tls.key").into());
        }
        if self.ingest_tokens.is_some() {
            config.gateway.tokens_file = Some(format!("{INGEST_TOKENS_DIR}/{TOKENS_FILE}").into());
        }
        if self.read_tokens.is_some() {
            config.dashboard.read_tokens_file =
                Some(format!("{READ_TOKENS_DIR}/{TOKENS_FILE}").into());
        }
    }

    /// The gateway: its token file.
    pub fn gateway(&self) -> Mounts {
        let mut mounts = Mounts::default();
        if let Some(tokens) = &self.ingest_tokens {
            mounts.volumes.push(one_key(
                "ingest-tokens",
                tokens,
                TOKENS_FILE,
                INGEST_TOKENS_DIR,
            ));
        }
        mounts
    }

    /// The processor: the database's CA and Redis's TLS files.
    pub fn processor(&self) -> Mounts {
        let mut mounts = Mounts::default();
        self.database_ca(&mut mounts);
        self.redis_tls(&mut mounts);
        mounts
    }

    /// A dashboard: as the processor, plus the read URL and its token file.
    pub fn dashboard(&self) -> Mounts {
        let mut mounts = self.processor();
        mounts.env.extend(secret_env([(
            names::ENV_DATABASE_READ_URL,
            self.database_read_url.as_ref(),
        )]));
        if let Some(tokens) = &self.read_tokens {
            mounts
                .volumes
                .push(one_key("read-tokens", tokens, TOKENS_FILE, READ_TOKENS_DIR));
        }
        mounts
    }

    /// `sslrootcert` and `sslmode=verify-full` for every URL that does not say
    /// otherwise, through the variables libpq (and Pulse) read.
    fn database_ca(&self, mounts: &mut Mounts) {
        if let Some(ca) = &self.database_ca {
            mounts
                .volumes
                .push(one_key("db-ca", ca, CA_FILE, DB_CA_DIR));
            mounts.env.push(plain_env(
                "PGSSLROOTCERT",
                &format!("{DB_CA_DIR}/{CA_FILE}"),
            ));
            mounts.env.push(plain_env("PGSSLMODE", "verify-full"));
        }
    }

    fn redis_tls(&self, mounts: &mut Mounts) {
        if let Some(ca) = &self.redis_ca {
            mounts
                .volumes
                .push(one_key("redis-ca", ca, CA_FILE, REDIS_CA_DIR));
        }
        if let Some(secret) = &self.redis_client_certificate {
            mounts
                .volumes
                .push(tls_pair("redis-client", secret, REDIS_CLIENT_DIR));
        }
    }
}

fn plain_env(name: &str, value: &str) -> EnvVar {
    EnvVar {
        name: name.into(),
        value: Some(value.into()),
        ..EnvVar::default()
    }
}

/// One Secret key mounted as `dir/file`.
pub(crate) fn one_key(
    volume: &str,
    secret: &SecretKeyRef,
    file: &str,
    dir: &str,
) -> (Volume, VolumeMount) {
    secret_volume(volume, &secret.name, vec![item(&secret.key, file)], dir)
}

/// A `kubernetes.io/tls` Secret's `tls.crt` and `tls.key` mounted in `dir`.
pub(crate) fn tls_pair(volume: &str, secret: &str, dir: &str) -> (Volume, VolumeMount) {
    let items = vec![item("tls.crt", "tls.crt"), item("tls.key", "tls.key")];
    secret_volume(volume, secret, items, dir)
}

/// A Secret mounted read-only at `dir`, its files readable by their owner and
/// the pod's group only (the pods run with `fsGroup`); required, so a missing
/// Secret holds the pod in `ContainerCreating` naming it.
fn secret_volume(
    name: &str,
    secret: &str,
    items: Vec<KeyToPath>,
    dir: &str,
) -> (Volume, VolumeMount) {
    let volume = Volume {
        name: name.into(),
        secret: Some(SecretVolumeSource {
            secret_name: Some(secret.into()),
            items: Some(items),
            default_mode: Some(0o440),
            optional: Some(false),
            ..SecretVolumeSource::default()
        }),
        ..Volume::default()
    };
    let mount = VolumeMount {
        name: name.into(),
        mount_path: dir.into(),
        read_only: Some(true),
        ..VolumeMount::default()
    };
    (volume, mount)
}

fn item(key: &str, path: &str) -> KeyToPath {
    KeyToPath {
        key: key.into(),
        path: path.into(),
        ..KeyToPath::default()
    }
}
