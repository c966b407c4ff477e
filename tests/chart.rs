//! The Helm chart (charts/pulse) as a cluster would get it: rendered by a real
//! `helm` (pinned in tools/helm) with the default values and with the values
//! files under charts/pulse/ci/, every object checked against the Kubernetes
//! OpenAPI schemas by `kubernetes-validate` (offline, strict: unknown fields
//! fail), `helm lint --strict`, and the parts other code relies on checked
//! field by field: the RBAC of the operator contract, the `pulse operator`
//! flags and environment, the restricted pod security, the webhook TLS mount.
//!
//! Without helm or kubernetes-validate these tests skip with a note, unless
//! the env var CI is set: then they fail, as .ci/run installs both.

use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use serde::Deserialize;
use serde_json::Value;

mod common;

/// The oldest Kubernetes the chart supports (Chart.yaml `kubeVersion`) and
/// the newest whose schemas kubernetes-validate ships.
const KUBE_VERSIONS: [&str; 2] = ["1.29.0", "1.37.0"];
/// The pinned kubernetes-validate, as .ci/run installs it.
const KUBERNETES_VALIDATE_PIN: &str = "kubernetes-validate==1.37.0";
const RELEASE: &str = "pulse";
const NAMESPACE: &str = "pulse-system";
/// `pulse.fullname` of the release above with the default values.
const FULLNAME: &str = "pulse";

fn repo() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

fn chart_dir() -> PathBuf {
    repo().join("charts/pulse")
}

/// A values set the chart is rendered with.
#[derive(Debug, Clone, Copy)]
enum Values {
    /// values.yaml alone.
    Default,
    /// charts/pulse/ci/all-values.yaml: every optional part on.
    All,
    /// charts/pulse/ci/minimal-values.yaml: every optional part off.
    Minimal,
    /// charts/pulse/ci/cert-manager-values.yaml: the webhook's TLS from cert-manager.
    CertManager,
}

impl Values {
    const EVERY: [Values; 4] = [
        Values::Default,
        Values::All,
        Values::Minimal,
        Values::CertManager,
    ];

    fn file(self) -> Option<PathBuf> {
        let name = match self {
            Values::Default => return None,
            Values::All => "all-values.yaml",
            Values::Minimal => "minimal-values.yaml",
            Values::CertManager => "cert-manager-values.yaml",
        };
        Some(chart_dir().join("ci").join(name))
    }

    fn args(self) -> Vec<String> {
        match self.file() {
            Some(file) => vec!["--values".into(), file.display().to_string()],
            None => Vec::new(),
        }
    }
}

/// The two external tools, found or reported missing.
struct Tools {
    helm: PathBuf,
    /// The program and its first arguments.
    validate: Vec<String>,
}

/// Finds helm (env HELM, else tools/helm/node_modules/.bin/helm, else PATH)
/// and kubernetes-validate (env KUBERNETES_VALIDATE, else the module of
/// python3, which needs no script on PATH). `None` means skip; under CI a
/// missing tool is a failure.
fn tools() -> Option<Tools> {
    let helm = common::tools::helm_program();
    let validate = match std::env::var("KUBERNETES_VALIDATE") {
        Ok(program) => vec![program],
        Err(_) => ["python3", "-m", "kubernetes_validate"]
            .map(String::from)
            .into(),
    };
    let mut missing: Vec<String> = common::tools::helm_missing(&helm).into_iter().collect();
    if !common::tools::runs(&[validate.clone(), vec!["--version".into()]].concat()) {
        missing.push(format!(
            "kubernetes-validate (`{}`): install it with `python3 -m pip install {KUBERNETES_VALIDATE_PIN}`",
            validate.join(" ")
        ));
    }
    common::tools::present_or_skip("the chart tests", &missing).then_some(Tools { helm, validate })
}

impl Tools {
    /// Runs helm with its cache, config and data in a fresh directory, so no
    /// repository or plugin of the user's changes what the tests see.
    fn helm(&self, args: &[String]) -> Output {
        common::tools::helm(&self.helm, args)
    }

    fn template_args(values: Values, kube: &str, extra: &[&str]) -> Vec<String> {
        let mut args: Vec<String> = [
            "template",
            RELEASE,
            &chart_dir().display().to_string(),
            "--namespace",
            NAMESPACE,
            "--kube-version",
            kube,
            "--include-crds",
        ]
        .map(String::from)
        .into();
        args.extend(values.args());
        args.extend(extra.iter().map(|s| s.to_string()));
        args
    }

    /// `helm template` of the chart: the manifests, or a failed test with
    /// helm's own error.
    fn render(&self, values: Values, kube: &str) -> String {
        let out = self.helm(&Self::template_args(values, kube, &[]));
        assert!(
            out.status.success(),
            "helm template with {values:?} values for Kubernetes {kube} failed:\n{}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).expect("helm prints UTF-8")
    }

    /// The rendered objects, for the newest Kubernetes.
    fn objects(&self, values: Values) -> Vec<Value> {
        parse(&self.render(values, KUBE_VERSIONS[1]))
    }
}

/// Every document of a multi-document YAML stream, empty ones left out.
fn parse(manifests: &str) -> Vec<Value> {
    serde_norway::Deserializer::from_str(manifests)
        .map(|doc| Value::deserialize(doc).expect("helm renders valid YAML"))
        .filter(|doc: &Value| !doc.is_null())
        .collect()
}

fn kind(object: &Value) -> &str {
    object["kind"].as_str().unwrap_or_default()
}

fn find<'a>(objects: &'a [Value], kind_: &str) -> Vec<&'a Value> {
    objects.iter().filter(|o| kind(o) == kind_).collect()
}

fn only<'a>(objects: &'a [Value], kind_: &str) -> &'a Value {
    let found = find(objects, kind_);
    assert_eq!(found.len(), 1, "expected exactly one {kind_}");
    found[0]
}

fn named<'a>(objects: &'a [Value], kind_: &str, name: &str) -> &'a Value {
    find(objects, kind_)
        .into_iter()
        .find(|o| o["metadata"]["name"] == name)
        .unwrap_or_else(|| panic!("no {kind_} named {name}"))
}

/// The objects of cert-manager (`webhook.certManager.enabled`) and of the
/// Prometheus Operator (`metrics.serviceMonitor`, `metrics.prometheusRule`):
/// custom resources whose schemas kubernetes-validate does not ship (the
/// Prometheus Operator's are checked by tests/monitoring.rs instead).
fn is_custom_kind(object: &Value) -> bool {
    object["apiVersion"].as_str().is_some_and(|v| {
        CUSTOM_GROUPS
            .iter()
            .any(|group| v.starts_with(&format!("{group}/")))
    })
}

const CUSTOM_GROUPS: [&str; 2] = ["cert-manager.io", "monitoring.coreos.com"];

fn strings(value: &Value) -> Vec<&str> {
    value
        .as_array()
        .map(|a| a.iter().filter_map(Value::as_str).collect())
        .unwrap_or_default()
}

/// A rule as (apiGroup, resource, verb) triples, so rules that are split or
/// merged differently still compare equal when they grant the same.
fn grants(rules: &Value) -> BTreeSet<(String, String, String)> {
    let mut out = BTreeSet::new();
    for rule in rules.as_array().expect("rules is a list") {
        assert!(
            rule.get("resourceNames").is_none() && rule.get("nonResourceURLs").is_none(),
            "the contract has no resourceNames nor nonResourceURLs: {rule}"
        );
        for group in strings(&rule["apiGroups"]) {
            for resource in strings(&rule["resources"]) {
                for verb in strings(&rule["verbs"]) {
                    out.insert((group.into(), resource.into(), verb.into()));
                }
            }
        }
    }
    out
}

fn expand(table: &[(&str, &[&str], &[&str])]) -> BTreeSet<(String, String, String)> {
    let mut out = BTreeSet::new();
    for (group, resources, verbs) in table {
        for resource in *resources {
            for verb in *verbs {
                out.insert((group.to_string(), resource.to_string(), verb.to_string()));
            }
        }
    }
    out
}

/// The RBAC of the operator contract ("RBAC the operator may use").
fn contract_cluster_rbac() -> BTreeSet<(String, String, String)> {
    const OWNED: &[&str] = &[
        "get", "list", "watch", "create", "patch", "update", "delete",
    ];
    expand(&[
        (
            "pulse.dev",
            &["metricpipelines", "dashboards"],
            &["get", "list", "watch", "patch", "update"],
        ),
        (
            "pulse.dev",
            &["metricpipelines/status", "dashboards/status"],
            &["get", "patch", "update"],
        ),
        (
            "pulse.dev",
            &["metricpipelines/finalizers", "dashboards/finalizers"],
            &["update"],
        ),
        ("", &["configmaps", "services", "serviceaccounts"], OWNED),
        // The health watch reads the processors' /metrics pod by pod.
        ("", &["pods"], &["get", "list"]),
        // A PodMonitor per pipeline when the Prometheus Operator is installed.
        ("monitoring.coreos.com", &["podmonitors"], OWNED),
        ("apps", &["deployments"], OWNED),
        ("policy", &["poddisruptionbudgets"], OWNED),
        ("autoscaling", &["horizontalpodautoscalers"], OWNED),
        ("networking.k8s.io", &["ingresses"], OWNED),
        ("keda.sh", &["scaledobjects"], OWNED),
        ("batch", &["cronjobs"], OWNED),
        ("", &["secrets"], &["get"]),
        ("", &["events"], &["create", "patch"]),
        ("events.k8s.io", &["events"], &["create", "patch"]),
    ])
}

/// Every pod spec the chart renders, with where it came from.
fn pod_specs(objects: &[Value]) -> Vec<(String, &Value)> {
    objects
        .iter()
        .filter_map(|o| {
            let spec = match kind(o) {
                "Pod" => &o["spec"],
                "Deployment" | "StatefulSet" | "DaemonSet" | "Job" => {
                    &o["spec"]["template"]["spec"]
                }
                _ => return None,
            };
            Some((format!("{} {}", kind(o), o["metadata"]["name"]), spec))
        })
        .collect()
}

fn operator_container(objects: &[Value]) -> &Value {
    let deployment = only(objects, "Deployment");
    &deployment["spec"]["template"]["spec"]["containers"][0]
}

fn env(container: &Value) -> BTreeMap<&str, &Value> {
    container["env"]
        .as_array()
        .expect("the operator has env")
        .iter()
        .filter_map(|e| Some((e["name"].as_str()?, e)))
        .collect()
}

#[test]
fn helm_lint_strict_passes_with_every_values_file() {
    let Some(tools) = tools() else { return };
    for values in Values::EVERY {
        let mut args = vec![
            "lint".to_string(),
            "--strict".into(),
            chart_dir().display().to_string(),
        ];
        args.extend(values.args());
        let out = tools.helm(&args);
        assert!(
            out.status.success(),
            "helm lint --strict with {values:?} values failed:\n{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
}

#[test]
fn every_rendered_object_validates_against_the_kubernetes_schemas() {
    let Some(tools) = tools() else { return };
    let dir = tempfile::tempdir().expect("a temporary directory");
    for values in Values::EVERY {
        for kube in KUBE_VERSIONS {
            let manifests = tools.render(values, kube);
            let objects = parse(&manifests);
            assert!(objects.len() >= 3, "{values:?} renders only {objects:?}");
            let file = dir.path().join(format!("{values:?}-{kube}.yaml"));
            fs::write(&file, &manifests).expect("the manifests are written");
            let out = Command::new(&tools.validate[0])
                .args(&tools.validate[1..])
                .args(["--strict", "--kubernetes-version", kube])
                .arg(&file)
                .output()
                .expect("kubernetes-validate runs");
            let report = format!(
                "{}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            );
            // The one thing allowed to go unchecked here: custom kinds.
            let unexpected: Vec<&str> = report
                .lines()
                .filter(|l| l.contains("ERROR") || l.contains("WARN"))
                .filter(|l| {
                    !(l.contains("Couldn't find schema")
                        && CUSTOM_GROUPS
                            .iter()
                            .any(|group| l.contains(&format!("api version {group}/"))))
                })
                .collect();
            assert!(
                out.status.success() && unexpected.is_empty(),
                "{values:?} values for Kubernetes {kube} do not validate:\n{report}"
            );
            // Every other object had a schema and passed: none was skipped.
            let passed = report.matches(" passed for resource ").count();
            let expected = objects.iter().filter(|o| !is_custom_kind(o)).count();
            assert_eq!(
                passed, expected,
                "{values:?}/{kube}: {passed} of {expected} objects validated:\n{report}"
            );
        }
    }
}

#[test]
fn every_optional_object_appears_only_when_turned_on() {
    let Some(tools) = tools() else { return };
    let kinds = |values| -> BTreeSet<String> {
        tools
            .objects(values)
            .iter()
            .map(|o| kind(o).to_string())
            .collect()
    };
    let everything = kinds(Values::All);
    for expected in [
        "ServiceAccount",
        "ClusterRole",
        "ClusterRoleBinding",
        "Role",
        "RoleBinding",
        "Service",
        "Deployment",
        "Pod",
    ] {
        assert!(
            everything.contains(expected),
            "no {expected} in {everything:?}"
        );
    }
    let minimal = kinds(Values::Minimal);
    for absent in [
        "ServiceAccount",
        "ClusterRole",
        "ClusterRoleBinding",
        "Role",
        "RoleBinding",
        "MutatingWebhookConfiguration",
        "Secret",
        "ServiceMonitor",
        "PrometheusRule",
    ] {
        assert!(
            !minimal.contains(absent),
            "{absent} rendered although off: {minimal:?}"
        );
    }
}

#[test]
fn cluster_role_grants_exactly_the_contract_rbac() {
    let Some(tools) = tools() else { return };
    let objects = tools.objects(Values::Default);
    let role = only(&objects, "ClusterRole");
    let granted = grants(&role["rules"]);
    let contract = contract_cluster_rbac();
    let extra: Vec<_> = granted.difference(&contract).collect();
    let missing: Vec<_> = contract.difference(&granted).collect();
    assert!(
        extra.is_empty() && missing.is_empty(),
        "the ClusterRole differs from the contract: more {extra:?}, less {missing:?}"
    );

    let binding = only(&objects, "ClusterRoleBinding");
    assert_eq!(binding["roleRef"]["name"], role["metadata"]["name"]);
    assert_eq!(
        binding["subjects"],
        serde_json::json!([{"kind": "ServiceAccount", "name": FULLNAME, "namespace": NAMESPACE}])
    );
    let account = only(&objects, "ServiceAccount");
    assert_eq!(account["metadata"]["name"], FULLNAME);
    assert_eq!(account["metadata"]["namespace"], NAMESPACE);
}

#[test]
fn leader_election_role_grants_only_leases_in_the_release_namespace() {
    let Some(tools) = tools() else { return };
    let objects = tools.objects(Values::Default);
    let role = only(&objects, "Role");
    assert_eq!(role["metadata"]["namespace"], NAMESPACE);
    assert_eq!(
        grants(&role["rules"]),
        expand(&[(
            "coordination.k8s.io",
            &["leases"],
            &["get", "create", "update", "patch"]
        )])
    );
    let binding = only(&objects, "RoleBinding");
    assert_eq!(binding["metadata"]["namespace"], NAMESPACE);
    assert_eq!(binding["roleRef"]["kind"], "Role");
    assert_eq!(binding["roleRef"]["name"], role["metadata"]["name"]);
    assert_eq!(binding["subjects"][0]["name"], FULLNAME);
}

#[test]
fn operator_runs_pulse_operator_with_the_contract_flags_and_env() {
    let Some(tools) = tools() else { return };
    let objects = tools.objects(Values::Default);
    let deployment = only(&objects, "Deployment");
    assert_eq!(deployment["metadata"]["name"], FULLNAME);
    let pod = &deployment["spec"]["template"]["spec"];
    assert_eq!(pod["serviceAccountName"], FULLNAME);
    let container = operator_container(&objects);
    assert_eq!(container["image"], "pulse:0.1.0");
    assert_eq!(
        strings(&container["args"]),
        [
            "operator",
            "--listen=0.0.0.0:8080",
            "--webhook-listen=0.0.0.0:8443",
            "--webhook-tls-dir=/etc/pulse/webhook-tls"
        ]
    );

    let env = env(container);
    assert_eq!(
        env["POD_NAMESPACE"]["valueFrom"]["fieldRef"]["fieldPath"],
        "metadata.namespace"
    );
    assert_eq!(
        env["POD_NAME"]["valueFrom"]["fieldRef"]["fieldPath"],
        "metadata.name"
    );
    assert_eq!(env["PULSE_IMAGE"]["value"], "pulse:0.1.0");
    assert_eq!(env["PULSE_SIDECAR_IMAGE"]["value"], "pulse-sidecar:0.1.0");
    assert_eq!(env["PULSE_SIDECAR_BUFFER_SIZE_LIMIT"]["value"], "256Mi");
    assert!(
        !env.contains_key("PULSE_SIDECAR_RESOURCES"),
        "no sidecar resources set: the operator's default applies"
    );

    let ports: BTreeMap<&str, &Value> = container["ports"]
        .as_array()
        .expect("ports")
        .iter()
        .filter_map(|p| Some((p["name"].as_str()?, &p["containerPort"])))
        .collect();
    assert_eq!(ports["http"], 8080);
    assert_eq!(ports["webhook"], 8443);
    assert_eq!(container["livenessProbe"]["httpGet"]["path"], "/healthz");
    assert_eq!(container["livenessProbe"]["httpGet"]["port"], "http");
    assert_eq!(container["readinessProbe"]["httpGet"]["path"], "/readyz");
    assert_eq!(container["readinessProbe"]["httpGet"]["port"], "http");

    // The webhook engineer's Secret, optional so the pod starts before it exists.
    let volume = pod["volumes"]
        .as_array()
        .expect("volumes")
        .iter()
        .find(|v| v["name"] == "webhook-tls")
        .expect("the webhook TLS volume");
    assert_eq!(
        volume["secret"]["secretName"],
        format!("{FULLNAME}-webhook-tls")
    );
    assert_eq!(volume["secret"]["optional"], true);
    let mount = container["volumeMounts"]
        .as_array()
        .expect("volume mounts")
        .iter()
        .find(|m| m["name"] == "webhook-tls")
        .expect("the webhook TLS mount");
    assert_eq!(mount["mountPath"], "/etc/pulse/webhook-tls");
    assert_eq!(mount["readOnly"], true);

    let service = named(&objects, "Service", &format!("{FULLNAME}-metrics"));
    assert_eq!(service["spec"]["ports"][0]["targetPort"], "http");
    assert_eq!(
        service["spec"]["selector"],
        deployment["spec"]["selector"]["matchLabels"]
    );
}

#[test]
fn every_values_file_setting_reaches_the_operator() {
    let Some(tools) = tools() else { return };
    let objects = tools.objects(Values::All);
    let container = operator_container(&objects);
    let pulse = "registry.example.com/pulse@sha256:0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";
    assert_eq!(container["image"], pulse, "the digest wins over the tag");
    let env = env(container);
    assert_eq!(env["PULSE_IMAGE"]["value"], pulse);
    assert_eq!(
        env["PULSE_SIDECAR_IMAGE"]["value"],
        "registry.example.com/pulse-sidecar@sha256:fedcba9876543210fedcba9876543210fedcba9876543210fedcba9876543210"
    );
    assert_eq!(env["RUST_LOG"]["value"], "info,pulse_operator=debug");
    assert_eq!(env["PULSE_LOG_FORMAT"]["value"], "text");
    assert_eq!(env["RUST_BACKTRACE"]["value"], "1");
    let resources: Value = serde_json::from_str(
        env["PULSE_SIDECAR_RESOURCES"]["value"]
            .as_str()
            .expect("the sidecar resources as a string"),
    )
    .expect("the sidecar resources are JSON");
    assert_eq!(
        resources,
        serde_json::json!({"requests": {"cpu": "20m", "memory": "48Mi"}, "limits": {"memory": "192Mi"}})
    );
    assert_eq!(env["PULSE_SIDECAR_BUFFER_SIZE_LIMIT"]["value"], "512Mi");
    let args = strings(&container["args"]);
    assert!(args.contains(&"--no-leader-election"), "{args:?}");
    assert_eq!(
        args.last(),
        Some(&"--image=registry.example.com/pulse:0.1.0")
    );

    let deployment = only(&objects, "Deployment");
    let template = &deployment["spec"]["template"];
    assert_eq!(template["metadata"]["labels"]["team"], "observability");
    assert_eq!(
        template["metadata"]["labels"]["app.kubernetes.io/component"],
        "operator"
    );
    assert_eq!(template["spec"]["serviceAccountName"], "pulse-operator");
    assert_eq!(
        template["spec"]["priorityClassName"],
        "system-cluster-critical"
    );
    assert_eq!(
        template["spec"]["imagePullSecrets"][0]["name"],
        "registry-credentials"
    );
    let service = named(&objects, "Service", "pulse-metrics-metrics");
    assert_eq!(service["spec"]["type"], "NodePort");
    assert_eq!(service["spec"]["ports"][0]["port"], 9090);
}

#[test]
fn without_the_webhook_the_operator_sees_no_tls_dir() {
    let Some(tools) = tools() else { return };
    let objects = tools.objects(Values::Minimal);
    let container = operator_container(&objects);
    let deployment = only(&objects, "Deployment");
    assert_eq!(
        deployment["spec"]["template"]["spec"]["serviceAccountName"],
        "pulse-operator"
    );
    let mounted: Vec<&Value> = container["volumeMounts"]
        .as_array()
        .expect("volume mounts")
        .iter()
        .map(|m| &m["mountPath"])
        .collect();
    assert_eq!(mounted, ["/tmp"]);
    let ports: Vec<&Value> = container["ports"]
        .as_array()
        .expect("ports")
        .iter()
        .map(|p| &p["containerPort"])
        .collect();
    assert_eq!(ports, [8080]);
}

#[test]
fn every_pod_runs_with_the_restricted_security_profile() {
    let Some(tools) = tools() else { return };
    for values in Values::EVERY {
        let objects = tools.objects(values);
        let pods = pod_specs(&objects);
        assert!(pods.len() >= 2, "{values:?}: the operator and the test pod");
        for (source, spec) in pods {
            let pod = &spec["securityContext"];
            assert_eq!(pod["runAsNonRoot"], true, "{source}");
            assert_eq!(pod["seccompProfile"]["type"], "RuntimeDefault", "{source}");
            let containers = [&spec["containers"], &spec["initContainers"]];
            for container in containers.iter().filter_map(|c| c.as_array()).flatten() {
                let at = format!("{source} container {}", container["name"]);
                let security = &container["securityContext"];
                assert_eq!(security["runAsNonRoot"], true, "{at}");
                assert_eq!(security["readOnlyRootFilesystem"], true, "{at}");
                assert_eq!(security["allowPrivilegeEscalation"], false, "{at}");
                assert_eq!(
                    security["capabilities"]["drop"],
                    serde_json::json!(["ALL"]),
                    "{at}"
                );
                assert!(security["capabilities"]["add"].is_null(), "{at}");
                assert_eq!(security["seccompProfile"]["type"], "RuntimeDefault", "{at}");
                assert!(
                    container["resources"]["requests"]["memory"].is_string(),
                    "{at} requests no memory"
                );
                assert!(
                    container["resources"]["limits"]["memory"].is_string(),
                    "{at} has no memory limit"
                );
            }
        }
    }
}

#[test]
fn helm_test_asks_readyz_through_the_metrics_service() {
    let Some(tools) = tools() else { return };
    let objects = tools.objects(Values::Default);
    let hook = find(&objects, "Pod")
        .into_iter()
        .find(|p| p["metadata"]["annotations"]["helm.sh/hook"] == "test")
        .expect("a helm test Pod");
    assert_eq!(hook["spec"]["restartPolicy"], "Never");
    let service = named(&objects, "Service", &format!("{FULLNAME}-metrics"));
    let url = format!(
        "http://{}.{NAMESPACE}.svc:{}/readyz",
        service["metadata"]["name"].as_str().expect("a name"),
        service["spec"]["ports"][0]["port"]
    );
    let command = strings(&hook["spec"]["containers"][0]["command"]);
    assert_eq!(command.first(), Some(&"curl"));
    assert!(command.contains(&"--fail"), "{command:?}");
    assert_eq!(command.last(), Some(&url.as_str()));
}

#[test]
fn values_schema_rejects_a_misspelt_key() {
    let Some(tools) = tools() else { return };
    let args = Tools::template_args(
        Values::Default,
        KUBE_VERSIONS[1],
        &["--set", "operator.replicass=2"],
    );
    let out = tools.helm(&args);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "a misspelt key was accepted");
    assert!(stderr.contains("replicass"), "{stderr}");
    let args = Tools::template_args(
        Values::Default,
        KUBE_VERSIONS[1],
        &["--set", "image.pullPolicy=Sometimes"],
    );
    assert!(
        !tools.helm(&args).status.success(),
        "a bad enum was accepted"
    );
}

/// The `.yaml` files of a directory, by name.
fn yaml_files(dir: &Path) -> BTreeMap<String, Vec<u8>> {
    let Ok(entries) = fs::read_dir(dir) else {
        return BTreeMap::new();
    };
    entries
        .filter_map(Result::ok)
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|e| e == "yaml"))
        .filter_map(|p| {
            let name = p.file_name()?.to_str()?.to_string();
            Some((name, fs::read(&p).ok()?))
        })
        .collect()
}

#[test]
fn chart_crds_are_copies_of_the_generated_crds() {
    let generated = yaml_files(&repo().join("crds"));
    let copied = yaml_files(&chart_dir().join("crds"));
    assert!(
        !generated.is_empty(),
        "crds/ holds no CRD: generate them with `cargo run -- crds --out-dir crds`"
    );
    let fix = "run `cp crds/*.yaml charts/pulse/crds/` after `cargo run -- crds --out-dir crds`";
    assert_eq!(
        generated.keys().collect::<Vec<_>>(),
        copied.keys().collect::<Vec<_>>(),
        "charts/pulse/crds/ holds other files than crds/: {fix}"
    );
    for (name, content) in &generated {
        assert!(
            copied.get(name) == Some(content),
            "charts/pulse/crds/{name} differs from crds/{name}: {fix}"
        );
    }
}

/// The webhook engineer's objects (templates/webhook.yaml) and the operator
/// Deployment meet: the Service reaches the `webhook` port, and the Secret
/// Helm or cert-manager writes is the one the Deployment mounts.
#[test]
fn webhook_objects_meet_the_operator_deployment() {
    let Some(tools) = tools() else { return };
    for values in [Values::Default, Values::CertManager] {
        let objects = tools.objects(values);
        let deployment = only(&objects, "Deployment");
        let pod = &deployment["spec"]["template"]["spec"];
        let mounted = pod["volumes"]
            .as_array()
            .expect("volumes")
            .iter()
            .find_map(|v| v["secret"]["secretName"].as_str())
            .expect("a Secret volume");
        let written = match values {
            Values::CertManager => only(&objects, "Certificate")["spec"]["secretName"].clone(),
            _ => only(&objects, "Secret")["metadata"]["name"].clone(),
        };
        assert_eq!(written, mounted, "{values:?}");

        let service = named(&objects, "Service", &format!("{FULLNAME}-webhook"));
        assert_eq!(
            service["spec"]["selector"],
            deployment["spec"]["selector"]["matchLabels"]
        );
        assert_eq!(service["spec"]["ports"][0]["targetPort"], "webhook");
        let webhook = only(&objects, "MutatingWebhookConfiguration");
        let client = &webhook["webhooks"][0]["clientConfig"]["service"];
        assert_eq!(client["name"], service["metadata"]["name"]);
        assert_eq!(client["namespace"], NAMESPACE);
        assert_eq!(client["path"], "/mutate-pods");
    }
}

/// How `pulse operator` ends when started with `args` and `env` outside a
/// cluster: `Some(exit code, stderr)`, or `None` while it still runs after a
/// few seconds (it is then killed).
fn start_operator(args: &[String], env: &[(String, String)]) -> Option<(i32, String)> {
    let home = tempfile::tempdir().expect("a temporary home");
    let mut child = Command::new(env!("CARGO_BIN_EXE_pulse"))
        .args(args)
        .env_clear()
        .envs(env.iter().map(|(k, v)| (k, v)))
        .env("HOME", home.path())
        // No cluster: the client fails at once instead of finding one.
        .env("KUBECONFIG", home.path().join("no-kubeconfig"))
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("the pulse binary starts");
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    while std::time::Instant::now() < deadline {
        if let Some(status) = child.try_wait().expect("the operator's status") {
            let mut stderr = String::new();
            if let Some(mut pipe) = child.stderr.take() {
                std::io::Read::read_to_string(&mut pipe, &mut stderr).expect("its stderr");
            }
            return Some((status.code().unwrap_or(-1), stderr));
        }
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    child.kill().expect("the operator is stopped");
    child.wait().expect("the operator is reaped");
    None
}

/// The flags and env the chart gives the operator are the ones the `pulse`
/// binary takes: started with them outside a cluster, it gets past argument
/// parsing (clap exits 2 with a usage text on any unknown flag or bad value)
/// and stops only for want of a Kubernetes API.
#[test]
fn the_pulse_binary_takes_the_operator_args_and_env_the_chart_renders() {
    let Some(tools) = tools() else { return };
    for values in [Values::Default, Values::All, Values::Minimal] {
        let objects = tools.objects(values);
        let container = operator_container(&objects);
        // The listeners' flags as rendered, on ports of this machine's loopback.
        let args: Vec<String> = strings(&container["args"])
            .into_iter()
            .map(|arg| match arg.split_once('=') {
                Some((flag @ ("--listen" | "--webhook-listen"), _)) => {
                    format!("{flag}=127.0.0.1:0")
                }
                _ => arg.to_string(),
            })
            .collect();
        let env: Vec<(String, String)> = env(container)
            .into_iter()
            .map(|(name, var)| {
                let value = match var["value"].as_str() {
                    Some(value) => value.to_string(),
                    None => format!("downward-api-{name}"),
                };
                (name.to_string(), value)
            })
            .collect();

        let parse_error = start_operator(
            &[args.clone(), vec!["--no-such-flag".into()]].concat(),
            &env,
        );
        assert!(
            matches!(&parse_error, Some((2, stderr)) if stderr.contains("Usage:")),
            "an unknown flag must be told apart: {parse_error:?}"
        );
        if let Some((code, stderr)) = start_operator(&args, &env) {
            assert!(
                code != 2 && !stderr.contains("Usage:"),
                "{values:?}: `pulse {}` rejects its arguments:\n{stderr}",
                args.join(" ")
            );
            assert!(
                stderr.contains("Kubernetes API"),
                "{values:?}: the operator stopped before looking for a cluster:\n{stderr}"
            );
        }
    }
}
