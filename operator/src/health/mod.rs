//! The health watch: about once a minute, every `MetricPipeline`'s processor
//! pods are asked for their `/metrics` (directly, pod by pod: the lag is per
//! partition and each pod owns some) and `status.health` is written from the
//! figures, so `kubectl get mp` shows points/s, consumer lag and the last
//! window closed. It writes with a field manager of its own, so the
//! reconciler's status writes and these never remove each other's fields.
//!
//! Each health write is a change of the resource and so wakes one (idempotent)
//! reconcile of the pipeline: the interval is also the pipeline's resync.

pub mod read;

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Duration;

use k8s_openapi::api::core::v1::Pod;
use k8s_openapi::jiff::Timestamp;
use kube::api::{ListParams, Patch, PatchParams};
use kube::{Api, Client, Resource, ResourceExt};

use crate::build::HTTP_PORT_NAME;
use crate::controller::Error;
use crate::crd::{MetricPipeline, PipelineHealth};
use crate::names::{self, Component};
use read::{Reading, health, pod_figures};

/// How often every pipeline's health is read.
pub const INTERVAL: Duration = Duration::from_secs(60);
/// Field manager of `status.health` (the reconciler's is `pulse-operator`).
pub const FIELD_MANAGER: &str = "pulse-operator-health";
/// Longest one pod may take to answer `/metrics`.
const SCRAPE_TIMEOUT: Duration = Duration::from_secs(5);
/// Largest `/metrics` answer read; a processor's is a few kB per partition.
const MAX_METRICS_BYTES: usize = 4 << 20;

/// Reads the pipelines' processors and keeps the previous reading of each
/// pipeline, for the rate of points.
pub struct HealthWatch {
    http: reqwest::Client,
    previous: Mutex<HashMap<String, (Timestamp, Reading)>>,
}

impl Default for HealthWatch {
    fn default() -> Self {
        HealthWatch::new()
    }
}

impl HealthWatch {
    pub fn new() -> HealthWatch {
        HealthWatch {
            http: reqwest::Client::builder()
                .timeout(SCRAPE_TIMEOUT)
                .build()
                .unwrap_or_default(),
            previous: Mutex::new(HashMap::new()),
        }
    }

    /// Refreshes every pipeline's health every [`INTERVAL`], until dropped. A
    /// pipeline that cannot be read is logged and tried again next round.
    pub async fn run(self, client: Client) {
        let pipelines: Api<MetricPipeline> = Api::all(client.clone());
        let mut ticks = tokio::time::interval(INTERVAL);
        ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            ticks.tick().await;
            let listed = match pipelines.list(&ListParams::default()).await {
                Ok(listed) => listed.items,
                Err(error) => {
                    tracing::warn!(message = "Cannot list MetricPipelines for their health.", %error);
                    continue;
                }
            };
            self.forget_all_but(&listed);
            for pipeline in listed
                .iter()
                .filter(|p| p.meta().deletion_timestamp.is_none())
            {
                if let Err(error) = self.refresh(&client, pipeline).await {
                    tracing::warn!(
                        message = "Cannot refresh a pipeline's health.",
                        namespace = pipeline.namespace().unwrap_or_default(),
                        name = pipeline.name_any(),
                        %error
                    );
                }
            }
        }
    }

    /// Reads `pipeline`'s processors now and writes its `status.health`.
    pub async fn refresh(
        &self,
        client: &Client,
        pipeline: &MetricPipeline,
    ) -> Result<PipelineHealth, Error> {
        let namespace = pipeline.namespace().unwrap_or_default();
        let name = pipeline.name_any();
        let reading = self.read(client, &namespace, &name).await?;
        let now = Timestamp::now();
        let key = format!("{namespace}/{name}");
        let health = {
            let mut previous = self
                .previous
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            let health = health(
                previous.get(&key).map(|(at, reading)| (*at, reading)),
                now,
                &reading,
            );
            previous.insert(key, (now, reading));
            health
        };
        let body = serde_json::json!({
            "apiVersion": MetricPipeline::api_version(&()),
            "kind": MetricPipeline::kind(&()),
            "status": {"health": &health},
        });
        Api::<MetricPipeline>::namespaced(client.clone(), &namespace)
            .patch_status(
                &name,
                &PatchParams::apply(FIELD_MANAGER).force(),
                &Patch::Apply(&body),
            )
            .await
            .map_err(Error::kube(format!(
                "writing the health of MetricPipeline {namespace}/{name}"
            )))?;
        Ok(health)
    }

    /// Asks every running processor pod of the pipeline for its metrics.
    async fn read(&self, client: &Client, namespace: &str, name: &str) -> Result<Reading, Error> {
        let selector = format!(
            "{}={},{}={name},{}={}",
            names::LABEL_NAME,
            names::APP_NAME,
            names::LABEL_INSTANCE,
            names::LABEL_COMPONENT,
            Component::Processor.as_str()
        );
        let pods = Api::<Pod>::namespaced(client.clone(), namespace)
            .list(&ListParams::default().labels(&selector))
            .await
            .map_err(Error::kube(format!(
                "listing the processor pods of MetricPipeline {namespace}/{name}"
            )))?;
        let mut reading = Reading::default();
        for pod in pods.items.iter().filter(|p| running(p)) {
            let Some(url) = metrics_url(pod) else {
                continue;
            };
            reading.asked += 1;
            let pod_name = pod.name_any();
            match self.scrape(&url).await.and_then(|text| pod_figures(&text)) {
                Ok(figures) => {
                    reading.pods.insert(pod_name, figures);
                }
                Err(problem) => reading
                    .failures
                    .push(format!("pod {pod_name} ({url}): {problem}")),
            }
        }
        Ok(reading)
    }

    /// The text of `url`, at most [`MAX_METRICS_BYTES`] of it.
    async fn scrape(&self, url: &str) -> Result<String, String> {
        let mut response = self
            .http
            .get(url)
            .send()
            .await
            .map_err(|e| format!("no answer: {e}"))?;
        if !response.status().is_success() {
            return Err(format!("answered {}", response.status()));
        }
        let mut body = Vec::new();
        while let Some(chunk) = response
            .chunk()
            .await
            .map_err(|e| format!("answer cut short: {e}"))?
        {
            if body.len() + chunk.len() > MAX_METRICS_BYTES {
                return Err(format!("answer over {MAX_METRICS_BYTES} bytes"));
            }
            body.extend_from_slice(&chunk);
        }
        String::from_utf8(body).map_err(|_| "answer is not UTF-8 text".to_string())
    }

    /// Drops the readings of pipelines no longer listed.
    fn forget_all_but(&self, listed: &[MetricPipeline]) {
        let keep: Vec<String> = listed
            .iter()
            .map(|p| format!("{}/{}", p.namespace().unwrap_or_default(), p.name_any()))
            .collect();
        self.previous
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .retain(|key, _| keep.contains(key));
    }
}

/// A pod that runs and is not going away.
fn running(pod: &Pod) -> bool {
    pod.meta().deletion_timestamp.is_none()
        && pod
            .status
            .as_ref()
            .and_then(|s| s.phase.as_deref())
            .is_some_and(|phase| phase == "Running")
}

/// `http://<pod IP>:<http port>/metrics`, from the pod's own spec and status.
fn metrics_url(pod: &Pod) -> Option<String> {
    let ip = pod.status.as_ref()?.pod_ip.as_deref()?;
    let port = pod
        .spec
        .as_ref()?
        .containers
        .iter()
        .flat_map(|c| c.ports.iter().flatten())
        .find(|p| p.name.as_deref() == Some(HTTP_PORT_NAME))
        .map_or(i32::from(names::PROCESSOR_PORT), |p| p.container_port);
    let host = if ip.contains(':') {
        format!("[{ip}]")
    } else {
        ip.to_string()
    };
    Some(format!("http://{host}:{port}/metrics"))
}
