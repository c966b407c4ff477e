//! The pure builders, field by field, for representative specs: a full
//! pipeline (Redis, tokens, resources) and a minimal one (defaults only), and a
//! dashboard over the full one.

use std::collections::BTreeMap;

use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{Container, EnvVar, PodSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use pulse_core::board::Boards;
use pulse_core::config::Config;
use pulse_operator::build::{Cluster, PipelineObjects, boards, config_hash, pipeline_objects};
use pulse_operator::crd::{Dashboard, MetricPipeline};
use pulse_operator::validate::{
    InvalidSpec, ValidatedPipeline, validate_dashboard, validate_pipeline,
};
use serde_json::{Value, json};

const IMAGE: &str = "ghcr.io/pulse/pulse:0.1.0";
const UID: &str = "6f1c2d3e-0000-4000-8000-000000000001";

fn full_spec() -> Value {
    json!({
        "apiVersion": "pulse.dev/v1alpha1",
        "kind": "MetricPipeline",
        "metadata": {"name": "checkout", "namespace": "shop", "uid": UID, "generation": 3},
        "spec": {
            "kafka": {"brokers": "kafka-0:9092,kafka-1:9092", "partitions": 6},
            "database": {"urlSecretRef": {"name": "db", "key": "url"}, "rawRetention": "3d"},
            "redis": {"urlSecretRef": {"name": "cache", "key": "url"}, "ttl": "2h"},
            "windows": ["1m", "5m", "10m/1m"],
            "allowedLateness": "45s",
            "limits": {"maxTags": 8, "maxBodyBytes": 1048576},
            "auth": {
                "ingestTokensSecretRef": {"name": "tokens", "key": "ingest"},
                "readTokensSecretRef": {"name": "tokens", "key": "read"}
            },
            "gateway": {"replicas": 3, "resources": {"requests": {"cpu": "500m"}, "limits": {"memory": "1Gi"}}},
            "processor": {"replicas": 2}
        }
    })
}

fn minimal_spec() -> Value {
    json!({
        "apiVersion": "pulse.dev/v1alpha1",
        "kind": "MetricPipeline",
        "metadata": {"name": "web", "namespace": "prod", "uid": UID},
        "spec": {
            "kafka": {"brokers": "kafka:9092"},
            "database": {"urlSecretRef": {"name": "db", "key": "url"}}
        }
    })
}

/// The objects of `pipeline` serving no boards, in a cluster without KEDA.
fn build(pipeline: &ValidatedPipeline) -> PipelineObjects {
    pipeline_objects(pipeline, IMAGE, &Boards::default(), Cluster::default())
}

fn pipeline(value: Value) -> ValidatedPipeline {
    let resource: MetricPipeline = serde_json::from_value(value).unwrap();
    validate_pipeline(&resource).unwrap()
}

fn dashboard_spec() -> Value {
    json!({
        "apiVersion": "pulse.dev/v1alpha1",
        "kind": "Dashboard",
        "metadata": {"name": "ops", "namespace": "shop", "uid": "6f1c2d3e-0000-4000-8000-000000000002"},
        "spec": {
            "pipeline": "checkout",
            "title": "Operations",
            "panels": [
                {"metric": "cpu_usage", "window": "60s", "aggs": ["avg", "p95"], "groupBy": ["host"]},
                {"kind": "stat", "metric": "cpu_usage", "window": "10m/1m",
                 "thresholds": [{"value": 80, "color": "orange"}, {"value": 90, "color": "red"}]}
            ]
        }
    })
}

fn dashboard(value: Value) -> Dashboard {
    serde_json::from_value(value).unwrap()
}

fn container(deployment: &Deployment) -> &Container {
    &pod(deployment).containers[0]
}

fn pod(deployment: &Deployment) -> &PodSpec {
    deployment.spec.template.spec.as_ref().unwrap()
}

fn labels(meta: &ObjectMeta) -> BTreeMap<String, String> {
    meta.labels.clone().unwrap_or_default()
}

fn expected_labels(instance: &str, component: Option<&str>) -> BTreeMap<String, String> {
    let mut labels = BTreeMap::from([
        ("app.kubernetes.io/name".to_string(), "pulse".to_string()),
        (
            "app.kubernetes.io/instance".to_string(),
            instance.to_string(),
        ),
        (
            "app.kubernetes.io/managed-by".to_string(),
            "pulse-operator".to_string(),
        ),
    ]);
    if let Some(component) = component {
        labels.insert(
            "app.kubernetes.io/component".to_string(),
            component.to_string(),
        );
    }
    labels
}

/// `name -> (secret, key)` of the container's secret-sourced variables.
fn secret_env(container: &Container) -> BTreeMap<String, (String, String)> {
    container
        .env
        .iter()
        .flatten()
        .map(
            |EnvVar {
                 name,
                 value_from,
                 value,
             }| {
                assert!(value.is_none(), "{name} carries a literal value");
                let selector = value_from
                    .as_ref()
                    .and_then(|v| v.secret_key_ref.as_ref())
                    .unwrap();
                assert_eq!(selector.optional, Some(false));
                (name.clone(), (selector.name.clone(), selector.key.clone()))
            },
        )
        .collect()
}

fn pair(name: &str, key: &str) -> (String, String) {
    (name.to_string(), key.to_string())
}

#[test]
fn pipeline_objects_carry_the_design_names_labels_and_namespace() {
    let objects = build(&pipeline(full_spec()));
    let mut metas: Vec<(&ObjectMeta, &str, Option<&str>)> = vec![
        (&objects.config_map.metadata, "checkout-pulse-config", None),
        (
            &objects.boards_config_map.metadata,
            "checkout-dashboard-boards",
            Some("dashboard"),
        ),
    ];
    for (role, name) in [
        ("gateway", "checkout-gateway"),
        ("processor", "checkout-processor"),
        ("dashboard", "checkout-dashboard"),
    ] {
        let role = Some(role);
        let of_role = |m: &&ObjectMeta| {
            labels(m)
                .get("app.kubernetes.io/component")
                .map(String::as_str)
                == role
        };
        let accounts: Vec<_> = objects
            .service_accounts
            .iter()
            .map(|a| &a.metadata)
            .filter(of_role)
            .collect();
        let pdbs: Vec<_> = objects
            .pdbs
            .iter()
            .map(|p| &p.metadata)
            .filter(of_role)
            .collect();
        assert_eq!((accounts.len(), pdbs.len()), (1, 1), "{name}");
        metas.extend([(accounts[0], name, role), (pdbs[0], name, role)]);
    }
    metas.extend([
        (
            &objects.services[0].metadata,
            "checkout-gateway",
            Some("gateway"),
        ),
        (
            &objects.services[1].metadata,
            "checkout-dashboard",
            Some("dashboard"),
        ),
        (
            &objects.gateway.metadata,
            "checkout-gateway",
            Some("gateway"),
        ),
        (
            &objects.processor.metadata,
            "checkout-processor",
            Some("processor"),
        ),
        (
            &objects.dashboard.metadata,
            "checkout-dashboard",
            Some("dashboard"),
        ),
    ]);
    assert_eq!(metas.len(), 13);
    for (meta, name, component) in metas {
        assert_eq!(meta.name.as_deref(), Some(name));
        assert_eq!(meta.namespace.as_deref(), Some("shop"));
        assert_eq!(
            labels(meta),
            expected_labels("checkout", component),
            "{name}"
        );
        let owners = meta.owner_references.as_ref().unwrap();
        assert_eq!(owners.len(), 1, "{name}");
        let owner = &owners[0];
        assert_eq!(owner.api_version, "pulse.dev/v1alpha1");
        assert_eq!(owner.kind, "MetricPipeline");
        assert_eq!(owner.name, "checkout");
        assert_eq!(owner.uid, UID);
        assert_eq!(owner.controller, Some(true));
    }
}

#[test]
fn deployments_run_the_role_on_the_mounted_config() {
    let objects = build(&pipeline(full_spec()));
    for (deployment, role, port, replicas) in [
        (&objects.gateway, "gateway", 9000, 3),
        (&objects.processor, "processor", 9100, 2),
        (&objects.dashboard, "dashboard", 8080, 2),
    ] {
        let spec = &deployment.spec;
        assert_eq!(spec.replicas, Some(replicas));
        let selector = spec.selector.match_labels.clone().unwrap();
        let pod_labels = spec
            .template
            .metadata
            .as_ref()
            .unwrap()
            .labels
            .clone()
            .unwrap();
        assert!(selector.iter().all(|(k, v)| pod_labels.get(k) == Some(v)));
        assert_eq!(selector.get("app.kubernetes.io/component").unwrap(), role);
        let c = container(deployment);
        assert_eq!(c.image.as_deref(), Some(IMAGE));
        assert_eq!(
            c.command.clone().unwrap(),
            ["pulse", role, "--config", "/etc/pulse/pulse.toml"]
        );
        let ports = c.ports.clone().unwrap();
        assert_eq!(
            (ports[0].name.as_deref(), ports[0].container_port),
            (Some("http"), port)
        );
        let mounts = c.volume_mounts.clone().unwrap();
        let config = mounts.iter().find(|m| m.name == "config").unwrap();
        assert_eq!(
            (config.mount_path.as_str(), config.read_only),
            ("/etc/pulse", Some(true))
        );
        let volumes = pod(deployment).volumes.clone().unwrap();
        let volume = volumes.iter().find(|v| v.name == "config").unwrap();
        assert_eq!(
            volume.config_map.as_ref().unwrap().name,
            "checkout-pulse-config"
        );
        assert_eq!(
            pod(deployment).service_account_name,
            Some(format!("checkout-{role}"))
        );
        assert_eq!(pod(deployment).automount_service_account_token, Some(false));
    }
    // The spec's image wins over the operator's.
    let mut spec = full_spec();
    spec["spec"]["image"] = json!("registry.local/pulse:dev");
    let objects = build(&pipeline(spec));
    assert_eq!(
        container(&objects.processor).image.as_deref(),
        Some("registry.local/pulse:dev")
    );
}

#[test]
fn probes_ask_healthz_for_liveness_and_readyz_for_readiness() {
    let objects = build(&pipeline(full_spec()));
    for deployment in [&objects.gateway, &objects.processor, &objects.dashboard] {
        let c = container(deployment);
        let path = |p: &Option<k8s_openapi::api::core::v1::Probe>| {
            let get = p.as_ref().unwrap().http_get.as_ref().unwrap();
            assert_eq!(get.port, IntOrString::String("http".into()));
            get.path.clone().unwrap()
        };
        assert_eq!(path(&c.liveness_probe), "/healthz");
        assert_eq!(path(&c.readiness_probe), "/readyz");
        assert_eq!(path(&c.startup_probe), "/healthz");
    }
}

#[test]
fn resources_come_from_the_spec_or_modest_defaults() {
    let objects = build(&pipeline(full_spec()));
    let gateway = container(&objects.gateway).resources.clone().unwrap();
    assert_eq!(gateway.requests.unwrap()["cpu"].0, "500m");
    assert_eq!(gateway.limits.unwrap()["memory"].0, "1Gi");
    let processor = container(&objects.processor).resources.clone().unwrap();
    let requests = processor.requests.unwrap();
    assert_eq!(
        (requests["cpu"].0.as_str(), requests["memory"].0.as_str()),
        ("100m", "128Mi")
    );
    let limits = processor.limits.unwrap();
    assert_eq!(limits["memory"].0, "512Mi");
    assert!(
        !limits.contains_key("cpu"),
        "no CPU limit, so no throttling"
    );
}

#[test]
fn pods_run_restricted_with_a_read_only_root() {
    let objects = build(&pipeline(full_spec()));
    for deployment in [&objects.gateway, &objects.processor, &objects.dashboard] {
        let pod_ctx = pod(deployment).security_context.clone().unwrap();
        assert_eq!(pod_ctx.run_as_non_root, Some(true));
        assert_eq!(pod_ctx.seccomp_profile.unwrap().type_, "RuntimeDefault");
        let ctx = container(deployment).security_context.clone().unwrap();
        assert_eq!(ctx.run_as_non_root, Some(true));
        assert_eq!(ctx.read_only_root_filesystem, Some(true));
        assert_eq!(ctx.allow_privilege_escalation, Some(false));
        assert_eq!(ctx.capabilities.unwrap().drop.unwrap(), ["ALL"]);
        assert_eq!(ctx.seccomp_profile.unwrap().type_, "RuntimeDefault");
        // What the process writes goes to emptyDirs.
        let mounts = container(deployment).volume_mounts.clone().unwrap();
        assert!(mounts.iter().any(|m| m.mount_path == "/tmp"));
        assert!(mounts.iter().any(|m| m.mount_path == "/var/lib/pulse"));
    }
}

#[test]
fn secrets_reach_only_the_roles_that_use_them_as_env() {
    let objects = build(&pipeline(full_spec()));
    // The tokens are a mounted file (re-read as it rotates), not a variable.
    assert!(container(&objects.gateway).env.is_none());
    let tokens = pod(&objects.gateway)
        .volumes
        .iter()
        .flatten()
        .find(|v| v.name == "ingest-tokens")
        .and_then(|v| v.secret.clone())
        .unwrap();
    assert_eq!(tokens.secret_name.as_deref(), Some("tokens"));
    let item = &tokens.items.unwrap()[0];
    assert_eq!(
        (item.key.as_str(), item.path.as_str()),
        ("ingest", "tokens")
    );
    let mount = container(&objects.gateway)
        .volume_mounts
        .iter()
        .flatten()
        .find(|m| m.name == "ingest-tokens")
        .unwrap();
    assert_eq!(
        (mount.mount_path.as_str(), mount.read_only),
        ("/etc/pulse/ingest-tokens", Some(true))
    );
    assert_eq!(
        secret_env(container(&objects.processor)),
        BTreeMap::from([
            ("PULSE_STORAGE__DATABASE_URL".into(), pair("db", "url")),
            ("PULSE_CACHE__REDIS_URL".into(), pair("cache", "url")),
        ])
    );
    // Without Redis and auth: the database URL only.
    let objects = build(&pipeline(minimal_spec()));
    assert!(container(&objects.gateway).env.is_none());
    assert_eq!(
        secret_env(container(&objects.processor)),
        BTreeMap::from([("PULSE_STORAGE__DATABASE_URL".into(), pair("db", "url"))])
    );
}

#[test]
fn the_config_map_holds_the_rendered_config_the_pods_read() {
    let validated = pipeline(full_spec());
    let objects = build(&validated);
    let text = &objects.config_map.data.as_ref().unwrap()["pulse.toml"];
    assert_eq!(text, &validated.config_toml);
    let config = Config::from_toml(text).unwrap();
    assert_eq!(config, validated.config);
    assert_eq!(
        (
            config.pipeline.namespace.as_str(),
            config.pipeline.name.as_str()
        ),
        ("shop", "checkout")
    );
    assert_eq!(
        config.bus.kafka_brokers.as_deref(),
        Some("kafka-0:9092,kafka-1:9092")
    );
    assert_eq!(config.bus.partitions, 6);
    assert_eq!(config.points_topic(), "pulse.shop.checkout.points");
    let windows: Vec<_> = config
        .window_specs()
        .unwrap()
        .into_iter()
        .map(|w| w.label)
        .collect();
    assert_eq!(windows, ["1m", "5m", "10m/1m"]);
    assert_eq!(config.processor.allowed_lateness.as_secs(), 45);
    assert_eq!(config.storage.raw_retention.as_secs(), 3 * 86_400);
    assert_eq!(config.cache.ttl.as_secs(), 7200);
    assert_eq!(config.limits.max_tags, 8);
    assert_eq!(config.gateway.max_body_bytes, 1 << 20);
    // No secret is in the file: connections come as env, tokens as mounted files.
    assert_eq!(config.storage.database_url, None);
    assert_eq!(config.cache.redis_url, None);
    assert!(config.gateway.tokens.is_empty() && config.dashboard.read_tokens.is_empty());
    assert_eq!(
        config.gateway.tokens_file.as_deref(),
        Some("/etc/pulse/ingest-tokens/tokens".as_ref())
    );
    assert_eq!(
        config.dashboard.read_tokens_file.as_deref(),
        Some("/etc/pulse/read-tokens/tokens".as_ref())
    );
    // The topics the admin creates.
    assert_eq!(validated.topics.anomalies, "pulse.shop.checkout.anomalies");
    assert_eq!(validated.topics.replication_factor, 3);
    assert_eq!(validated.topics.retention.as_secs(), 7 * 86_400);
}

#[test]
fn minimal_spec_renders_core_defaults_except_partitions() {
    let validated = pipeline(minimal_spec());
    let mut expected = Config::default();
    expected.pipeline.namespace = "prod".into();
    expected.pipeline.name = "web".into();
    expected.bus.kafka_brokers = Some("kafka:9092".into());
    expected.bus.partitions = 6;
    expected.storage.data_dir = "/var/lib/pulse".into();
    expected.dashboard.boards_file = Some("/etc/pulse/boards/boards.toml".into());
    assert_eq!(validated.config, expected);
    assert_eq!(validated.roles.gateway.replicas, 2);
    assert_eq!(validated.roles.processor.replicas, 2);
    assert_eq!(validated.roles.dashboards.replicas, 2);
}

#[test]
fn config_hash_changes_with_the_config_and_only_then() {
    let hash_of = |spec: Value| {
        let objects = build(&pipeline(spec));
        let annotation = |d: &Deployment| {
            d.spec
                .template
                .metadata
                .as_ref()
                .unwrap()
                .annotations
                .as_ref()
                .unwrap()["pulse.dev/config-hash"]
                .clone()
        };
        let hash = annotation(&objects.gateway);
        assert_eq!(hash, annotation(&objects.processor));
        assert_eq!(hash, annotation(&objects.dashboard));
        assert_eq!(
            hash,
            config_hash(&objects.config_map.data.unwrap()["pulse.toml"])
        );
        hash
    };
    let base = hash_of(full_spec());
    assert_eq!(base.len(), 64);
    assert_eq!(base, hash_of(full_spec()), "the hash is deterministic");

    // Not part of pulse.toml: replicas, resources, image, Secret names.
    let mut same = full_spec();
    same["spec"]["gateway"]["replicas"] = json!(5);
    same["spec"]["processor"]["resources"] = json!({"limits": {"memory": "2Gi"}});
    same["spec"]["image"] = json!("other:1");
    same["spec"]["database"]["urlSecretRef"]["name"] = json!("db2");
    assert_eq!(base, hash_of(same));

    for (field, value) in [
        ("windows", json!(["1m", "5m"])),
        ("allowedLateness", json!("1m")),
        ("limits", json!({"maxTags": 4})),
    ] {
        let mut changed = full_spec();
        changed["spec"][field] = value;
        assert_ne!(
            base,
            hash_of(changed),
            "changing {field} must roll the pods"
        );
    }
}

#[test]
fn gateway_service_and_pdbs_select_their_role() {
    let objects = build(&pipeline(full_spec()));
    let service = objects.services[0].spec.clone().unwrap();
    assert_eq!(service.type_.as_deref(), Some("ClusterIP"));
    let port = &service.ports.unwrap()[0];
    assert_eq!(
        (port.port, port.target_port.clone()),
        (9000, Some(IntOrString::String("http".into())))
    );
    assert_eq!(
        service.selector.unwrap(),
        objects.gateway.spec.selector.match_labels.clone().unwrap()
    );
    let dashboard = objects.services[1].spec.clone().unwrap();
    assert_eq!(dashboard.ports.unwrap()[0].port, 8080);
    assert_eq!(
        dashboard.selector,
        objects.dashboard.spec.selector.match_labels
    );
    for (pdb, deployment) in
        objects
            .pdbs
            .iter()
            .zip([&objects.gateway, &objects.processor, &objects.dashboard])
    {
        let spec = pdb.spec.clone().unwrap();
        assert_eq!(spec.max_unavailable, Some(IntOrString::Int(1)));
        assert_eq!(
            spec.selector.unwrap().match_labels,
            deployment.spec.selector.match_labels
        );
    }
}

#[test]
fn the_dashboard_server_serves_every_board_from_its_config_map() {
    let pipeline = pipeline(full_spec());
    let ops = validate_dashboard(&dashboard(dashboard_spec()), &pipeline).unwrap();
    let mut other = dashboard_spec();
    other["metadata"]["name"] = json!("capacity");
    let capacity = validate_dashboard(&dashboard(other), &pipeline).unwrap();
    let boards = boards(&[ops, capacity]).unwrap();
    let objects = pipeline_objects(&pipeline, IMAGE, &boards, Cluster::default());
    let c = container(&objects.dashboard);
    assert_eq!(
        c.command.clone().unwrap(),
        ["pulse", "dashboard", "--config", "/etc/pulse/pulse.toml"]
    );
    assert_eq!(
        secret_env(c),
        BTreeMap::from([
            ("PULSE_STORAGE__DATABASE_URL".into(), pair("db", "url")),
            ("PULSE_CACHE__REDIS_URL".into(), pair("cache", "url")),
        ])
    );
    let read_tokens = pod(&objects.dashboard)
        .volumes
        .iter()
        .flatten()
        .find(|v| v.name == "read-tokens")
        .and_then(|v| v.secret.clone())
        .unwrap();
    assert_eq!(read_tokens.secret_name.as_deref(), Some("tokens"));
    // The boards: a whole ConfigMap volume (no subPath, which the kubelet
    // would never update), at the path pulse.toml names.
    let mount = c
        .volume_mounts
        .as_ref()
        .unwrap()
        .iter()
        .find(|m| m.name == "boards")
        .unwrap();
    assert_eq!(
        (
            mount.mount_path.as_str(),
            mount.read_only,
            mount.sub_path.as_deref()
        ),
        ("/etc/pulse/boards", Some(true), None)
    );
    let volumes = pod(&objects.dashboard).volumes.clone().unwrap();
    let volume = volumes.iter().find(|v| v.name == "boards").unwrap();
    assert_eq!(
        volume.config_map.as_ref().unwrap().name,
        "checkout-dashboard-boards"
    );
    let config =
        Config::from_toml(&objects.config_map.data.as_ref().unwrap()["pulse.toml"]).unwrap();
    assert_eq!(
        config.dashboard.boards_file.as_deref(),
        Some(std::path::Path::new("/etc/pulse/boards/boards.toml"))
    );
    // Both boards, sorted by name, windows named as the processor labels them.
    let file = Boards::from_file(&objects.boards_config_map.data.as_ref().unwrap()["boards.toml"])
        .unwrap();
    let names: Vec<_> = file.as_slice().iter().map(|b| b.name.as_str()).collect();
    assert_eq!(names, ["capacity", "ops"]);
    let board = file.get("ops").unwrap();
    assert_eq!(board.title.as_deref(), Some("Operations"));
    assert_eq!(board.panels[0].window.as_deref(), Some("1m"));
    assert_eq!(board.panels[1].window.as_deref(), Some("10m/1m"));
    // A board change changes the boards file only: the pods do not roll.
    assert_eq!(
        objects.dashboard.spec.template.metadata,
        build(&pipeline).dashboard.spec.template.metadata
    );
}

#[test]
fn invalid_specs_name_the_field_and_what_to_do() {
    let pipeline = pipeline(full_spec());
    let mut spec = dashboard_spec();
    spec["spec"]["panels"][0]["window"] = json!("15m");
    let err = validate_dashboard(&dashboard(spec), &pipeline).unwrap_err();
    assert!(
        matches!(err, InvalidSpec::UnknownWindow { index: 0, .. }),
        "{err}"
    );
    assert!(err.to_string().contains("1m, 5m, 10m/1m"), "{err}");

    let mut spec = dashboard_spec();
    spec["spec"]["pipeline"] = json!("other");
    let err = validate_dashboard(&dashboard(spec), &pipeline).unwrap_err();
    assert!(matches!(err, InvalidSpec::WrongPipeline { .. }), "{err}");

    let mut spec = dashboard_spec();
    spec["spec"]["panels"][0]["aggs"] = json!(["avg", "median"]);
    let err = validate_dashboard(&dashboard(spec), &pipeline).unwrap_err();
    assert!(matches!(err, InvalidSpec::Panel(_)), "{err}");

    let check = |change: &dyn Fn(&mut Value)| {
        let mut spec = full_spec();
        change(&mut spec);
        let resource: MetricPipeline = serde_json::from_value(spec).unwrap();
        validate_pipeline(&resource).unwrap_err()
    };
    let err = check(&|s| {
        s["metadata"]
            .as_object_mut()
            .unwrap()
            .remove("uid")
            .map(drop)
            .unwrap_or(())
    });
    assert_eq!(err, InvalidSpec::MissingMetadata { field: "uid" });
    let err = check(&|s| s["metadata"]["name"] = json!("Checkout"));
    assert!(matches!(err, InvalidSpec::Name { .. }), "{err}");
    // What the schema refuses is refused here too (an object may predate the CRD).
    let err = check(&|s| s["spec"]["processor"]["replicas"] = json!(7));
    assert!(matches!(
        err,
        InvalidSpec::ReplicasOverPartitions {
            replicas: 7,
            partitions: 6
        }
    ));
    let err = check(&|s| s["spec"]["windows"] = json!(["10m/3m"]));
    assert!(matches!(err, InvalidSpec::Window { .. }), "{err}");
    assert!(err.to_string().contains("spec.windows"), "{err}");
    let err = check(&|s| s["spec"]["allowedLateness"] = json!("soon"));
    assert!(err.to_string().contains("spec.allowedLateness"), "{err}");
    let err = check(&|s| s["spec"]["windows"] = json!(["1m", "60s"]));
    assert!(
        matches!(err, InvalidSpec::Config { ref key, .. } if key == "processor.windows"),
        "{err}"
    );
    let err = check(&|s| s["spec"]["kafka"]["brokers"] = json!("a:1,,b:2"));
    assert!(
        matches!(err, InvalidSpec::Config { ref key, .. } if key == "bus.kafka_brokers"),
        "{err}"
    );
}
