//! The sidecar injection webhook, from AdmissionReview fixtures (as the API
//! server sends them, in `fixtures/admission/`) to the pod the API server would
//! store after applying the answer's patch; and one HTTPS round trip of the
//! server with a certificate made here.

use std::path::Path;

use json_patch::Patch;
use k8s_openapi::api::core::v1::{Container, Pod, ResourceRequirements};
use kube::core::DynamicObject;
use kube::core::admission::{AdmissionResponse, AdmissionReview};
use pulse_operator::names;
use pulse_operator::webhook::{
    Admission, GatewayLimits, InjectTarget, SidecarSettings, TokenSecret, admit, sidecar, to_wire,
};
use serde_json::{Value, json};

const SIDECAR_IMAGE: &str = "ghcr.io/example/pulse-sidecar:0.1.0";

fn fixture(name: &str) -> Vec<u8> {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/admission")
        .join(name);
    std::fs::read(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

fn fixture_json(name: &str) -> Value {
    serde_json::from_slice(&fixture(name)).expect("fixture is JSON")
}

/// Compares `patch` with the expected patch fixture `name`; with
/// `PULSE_BLESS=1` writes it instead (then review the diff before keeping it).
fn assert_patch_is(name: &str, patch: &Patch) {
    let actual = serde_json::to_value(patch).expect("encodes");
    if std::env::var_os("PULSE_BLESS").is_some() {
        let path = Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("tests/fixtures/admission")
            .join(name);
        let text = serde_json::to_string_pretty(&actual).expect("encodes") + "\n";
        std::fs::write(&path, text).expect("writes the fixture");
    }
    assert_eq!(
        actual,
        fixture_json(name),
        "the patch, as the API server receives it"
    );
}

fn target(token: bool) -> InjectTarget {
    InjectTarget {
        pipeline: "checkout".into(),
        gateway_url: names::gateway_url("shop", "checkout"),
        token: token.then(|| TokenSecret {
            name: "checkout-tokens".into(),
            key: "ingest".into(),
        }),
        limits: GatewayLimits {
            max_points_per_request: 100,
            max_decompressed_bytes: 1 << 20,
        },
        sidecar: SidecarSettings::new(SIDECAR_IMAGE, SidecarSettings::default_resources(), "256Mi")
            .expect("valid settings"),
    }
}

/// The answer for an opted-in fixture, resolved with `target`.
fn answer(name: &str, native: bool, target: &InjectTarget) -> AdmissionResponse {
    match admit(&fixture(name)) {
        Admission::Candidate(candidate) => {
            assert_eq!(candidate.pipeline(), "checkout");
            assert_eq!(candidate.namespace(), "shop");
            response(candidate.inject(target, native))
        }
        Admission::Answer(review) => panic!("{name} should be a candidate, got {review:?}"),
    }
}

/// The answer for a fixture the webhook answers without a pipeline.
fn immediate(body: &[u8]) -> AdmissionResponse {
    match admit(body) {
        Admission::Answer(review) => response(*review),
        Admission::Candidate(candidate) => panic!("should answer at once, got {candidate:?}"),
    }
}

/// The response as the API server reads it: through the webhook's JSON.
fn response(review: AdmissionReview<DynamicObject>) -> AdmissionResponse {
    let wire = serde_json::to_vec(&to_wire(&review)).expect("encodes");
    from_wire(&wire).response.expect("a response")
}

/// Reads a webhook answer the way the API server does: an AdmissionReview
/// whose `patch`, when present, is base64 text (a Go `[]byte`), never an
/// array of numbers.
fn from_wire(bytes: &[u8]) -> AdmissionReview<DynamicObject> {
    use base64::Engine;

    let mut wire: Value = serde_json::from_slice(bytes).expect("the answer is JSON");
    if let Some(patch) = wire.pointer_mut("/response/patch") {
        let text = patch.as_str().expect("the patch is base64 text");
        let decoded = base64::engine::general_purpose::STANDARD
            .decode(text)
            .expect("the patch is standard base64");
        *patch = json!(decoded);
    }
    let review: AdmissionReview<DynamicObject> =
        serde_json::from_value(wire).expect("an AdmissionReview");
    assert_eq!(review.types.kind, "AdmissionReview");
    assert_eq!(review.types.api_version, "admission.k8s.io/v1");
    review
}

fn patch_of(response: &AdmissionResponse) -> Patch {
    let bytes = response.patch.as_ref().expect("a patch");
    serde_json::from_slice(bytes).expect("the patch is a JSON patch")
}

/// The fixture's pod after the API server applied the answer.
fn patched_pod(name: &str, response: &AdmissionResponse) -> (Value, Pod) {
    let mut pod = fixture_json(name)["request"]["object"].clone();
    json_patch::patch(&mut pod, &patch_of(response)).expect("the patch applies");
    let typed: Pod = serde_json::from_value(pod.clone()).expect("still a pod");
    (pod, typed)
}

fn env_of(container: &Container, name: &str) -> Option<String> {
    container
        .env
        .iter()
        .flatten()
        .find(|e| e.name == name)
        .and_then(|e| e.value.clone())
}

fn assert_sidecar_wired(sidecar: &Container, token: bool) {
    assert_eq!(sidecar.name, names::SIDECAR_CONTAINER);
    assert_eq!(sidecar.image.as_deref(), Some(SIDECAR_IMAGE));
    assert_eq!(
        env_of(sidecar, "PULSE_SIDECAR_GATEWAY").as_deref(),
        Some("http://checkout-gateway.shop.svc:9000")
    );
    assert_eq!(
        env_of(sidecar, "PULSE_SIDECAR_BUFFER__DIR").as_deref(),
        Some(sidecar::BUFFER_DIR)
    );
    assert_eq!(
        env_of(sidecar, "PULSE_SIDECAR_BUFFER__MAX_BYTES").as_deref(),
        Some("234881024"),
        "7/8 of the 256Mi emptyDir"
    );
    assert_eq!(
        env_of(sidecar, "PULSE_SIDECAR_TOKEN_FILE").is_some(),
        token,
        "token file only with a token Secret"
    );
    let mounts = sidecar.volume_mounts.clone().unwrap_or_default();
    assert!(
        mounts
            .iter()
            .any(|m| m.name == sidecar::BUFFER_VOLUME && m.mount_path == sidecar::BUFFER_DIR)
    );
    assert_eq!(
        mounts.iter().any(|m| m.name == sidecar::TOKEN_VOLUME
            && m.mount_path == sidecar::TOKEN_DIR
            && m.read_only == Some(true)),
        token
    );
    let security = sidecar.security_context.clone().expect("security context");
    assert_eq!(security.run_as_non_root, Some(true));
    assert_eq!(security.allow_privilege_escalation, Some(false));
    assert_eq!(security.read_only_root_filesystem, Some(true));
    assert_eq!(
        security.capabilities.and_then(|c| c.drop),
        Some(vec!["ALL".to_string()])
    );
    assert_eq!(
        security.seccomp_profile.map(|p| p.type_).as_deref(),
        Some("RuntimeDefault")
    );
    let resources: ResourceRequirements = sidecar.resources.clone().expect("resources");
    assert_eq!(resources, SidecarSettings::default_resources());
}

#[test]
fn opted_in_pod_gets_a_native_sidecar_as_its_first_init_container() {
    let response = answer("opted-in.json", true, &target(true));
    assert!(response.allowed);
    assert_eq!(response.uid, "7f0b2c4e-1d1a-4b8e-9c3f-000000000001");
    assert_eq!(response.warnings, None);
    assert_patch_is("opted-in.native.patch.json", &patch_of(&response));

    let (raw, pod) = patched_pod("opted-in.json", &response);
    let spec = pod.spec.expect("spec");
    let init = spec.init_containers.expect("init containers");
    assert_eq!(init.len(), 1);
    assert_eq!(init[0].restart_policy.as_deref(), Some("Always"));
    assert_sidecar_wired(&init[0], true);
    assert_eq!(spec.containers.len(), 1, "the app container stays alone");
    assert_eq!(
        raw["spec"]["containers"],
        fixture_json("opted-in.json")["request"]["object"]["spec"]["containers"],
        "the app container is untouched"
    );

    let annotations = pod.metadata.annotations.expect("annotations");
    assert_eq!(annotations[names::INJECTED_ANNOTATION], "checkout");
    assert_eq!(
        annotations["prometheus.io/scrape"], "false",
        "existing annotations stay"
    );
    assert!(
        !annotations.contains_key("kubectl.kubernetes.io/default-container"),
        "a native sidecar is no container kubectl could pick"
    );

    let volumes = spec.volumes.expect("volumes");
    let names: Vec<&str> = volumes.iter().map(|v| v.name.as_str()).collect();
    assert_eq!(
        names,
        [
            "kube-api-access-x7k2p",
            sidecar::BUFFER_VOLUME,
            sidecar::TOKEN_VOLUME
        ]
    );
    let buffer = volumes[1].empty_dir.clone().expect("an emptyDir");
    assert_eq!(buffer.size_limit.map(|q| q.0).as_deref(), Some("256Mi"));
    let token = volumes[2].secret.clone().expect("a Secret volume");
    assert_eq!(token.secret_name.as_deref(), Some("checkout-tokens"));
    let items = token.items.expect("one key");
    assert_eq!(
        (items[0].key.as_str(), items[0].path.as_str()),
        ("ingest", "token")
    );
}

#[test]
fn opted_in_pod_gets_a_classic_sidecar_last_on_clusters_before_1_29() {
    let response = answer("opted-in.json", false, &target(true));
    assert!(response.allowed);
    assert_patch_is("opted-in.classic.patch.json", &patch_of(&response));
    let (_, pod) = patched_pod("opted-in.json", &response);
    let spec = pod.spec.expect("spec");
    assert_eq!(spec.init_containers, None);
    let names: Vec<&str> = spec.containers.iter().map(|c| c.name.as_str()).collect();
    assert_eq!(names, ["web", names::SIDECAR_CONTAINER]);
    assert_eq!(spec.containers[1].restart_policy, None);
    assert_sidecar_wired(&spec.containers[1], true);
    let annotations = pod.metadata.annotations.expect("annotations");
    assert_eq!(
        annotations["kubectl.kubernetes.io/default-container"], "web",
        "kubectl logs and exec keep picking the app"
    );
}

#[test]
fn native_sidecar_goes_before_the_pods_own_init_containers() {
    let response = answer("opted-in-with-init-container.json", true, &target(true));
    let (_, pod) = patched_pod("opted-in-with-init-container.json", &response);
    let spec = pod.spec.expect("spec");
    let init: Vec<&str> = spec
        .init_containers
        .iter()
        .flatten()
        .map(|c| c.name.as_str())
        .collect();
    assert_eq!(init, [names::SIDECAR_CONTAINER, "migrate"]);
    // The fixture has neither volumes nor annotations: the patch makes both.
    let volumes: Vec<String> = spec
        .volumes
        .iter()
        .flatten()
        .map(|v| v.name.clone())
        .collect();
    assert_eq!(volumes, [sidecar::BUFFER_VOLUME, sidecar::TOKEN_VOLUME]);
    assert_eq!(
        pod.metadata.annotations.expect("annotations")[names::INJECTED_ANNOTATION],
        "checkout"
    );

    let classic = answer("opted-in-with-init-container.json", false, &target(true));
    let (_, pod) = patched_pod("opted-in-with-init-container.json", &classic);
    let spec = pod.spec.expect("spec");
    let init: Vec<&str> = spec
        .init_containers
        .iter()
        .flatten()
        .map(|c| c.name.as_str())
        .collect();
    assert_eq!(
        init,
        ["migrate"],
        "a classic sidecar leaves init containers alone"
    );
    assert_eq!(
        spec.containers.last().map(|c| c.name.as_str()),
        Some(names::SIDECAR_CONTAINER)
    );
}

#[test]
fn pipeline_without_ingest_tokens_gets_no_token_volume() {
    let response = answer("opted-in.json", true, &target(false));
    let (_, pod) = patched_pod("opted-in.json", &response);
    let spec = pod.spec.expect("spec");
    assert_sidecar_wired(&spec.init_containers.expect("init")[0], false);
    assert!(
        !spec
            .volumes
            .iter()
            .flatten()
            .any(|v| v.name == sidecar::TOKEN_VOLUME)
    );
}

#[test]
fn a_pod_that_comes_back_after_injection_is_left_unchanged() {
    for native in [true, false] {
        let response = answer("opted-in.json", native, &target(true));
        let (patched, _) = patched_pod("opted-in.json", &response);
        let mut again = fixture_json("opted-in.json");
        again["request"]["object"] = patched;
        let body = serde_json::to_vec(&again).expect("encodes");
        let response = immediate(&body);
        assert!(response.allowed);
        assert_eq!(response.patch, None, "one sidecar, never two");
        assert_eq!(response.warnings, None);
    }
}

#[test]
fn already_injected_pod_is_unchanged() {
    let response = immediate(&fixture("already-injected.json"));
    assert!(response.allowed);
    assert_eq!(response.patch, None);
    assert_eq!(response.warnings, None);

    // The container alone (a sidecar added by hand) is enough to recognise it.
    let mut review = fixture_json("already-injected.json");
    review["request"]["object"]["metadata"]
        .as_object_mut()
        .expect("metadata")
        .remove("annotations");
    let response = immediate(&serde_json::to_vec(&review).expect("encodes"));
    assert_eq!(response.patch, None);
}

#[test]
fn pod_without_the_inject_label_is_unchanged_and_not_warned_about() {
    let response = immediate(&fixture("not-opted-in.json"));
    assert!(response.allowed);
    assert_eq!(response.uid, "7f0b2c4e-1d1a-4b8e-9c3f-000000000003");
    assert_eq!(response.patch, None);
    assert_eq!(response.warnings, None);
}

#[test]
fn malformed_requests_are_allowed_with_a_warning() {
    for (name, uid, says) in [
        (
            "not-a-pod.json",
            "7f0b2c4e-1d1a-4b8e-9c3f-000000000005",
            "expected a Pod",
        ),
        (
            "undecodable-pod.json",
            "7f0b2c4e-1d1a-4b8e-9c3f-000000000006",
            "cannot read the pod",
        ),
        (
            "wrong-shape.json",
            "7f0b2c4e-1d1a-4b8e-9c3f-000000000008",
            "cannot read the AdmissionReview",
        ),
        ("truncated.json", "", "cannot read the AdmissionReview"),
        ("no-request.json", "", "no request"),
    ] {
        let response = immediate(&fixture(name));
        assert!(response.allowed, "{name}: never a denied pod");
        assert_eq!(
            response.uid, uid,
            "{name}: the uid is echoed when it can be read"
        );
        assert_eq!(response.patch, None, "{name}");
        let warnings = response.warnings.unwrap_or_default();
        assert!(
            warnings.iter().any(|w| w.contains(says)),
            "{name}: {warnings:?} should say {says:?}"
        );
    }
    let response = immediate(b"\xff\xfe not even text");
    assert!(response.allowed);
}

#[test]
fn pod_update_is_not_injected() {
    let mut review = fixture_json("opted-in.json");
    review["request"]["operation"] = json!("UPDATE");
    let response = immediate(&serde_json::to_vec(&review).expect("encodes"));
    assert!(response.allowed);
    assert_eq!(response.patch, None);
}

#[test]
fn a_pipeline_that_cannot_be_resolved_is_a_warning_not_a_denial() {
    let Admission::Candidate(candidate) = admit(&fixture("opted-in.json")) else {
        panic!("opted in");
    };
    let response = response(candidate.skip("no MetricPipeline `checkout`"));
    assert!(response.allowed);
    assert_eq!(response.patch, None);
    assert_eq!(
        response.warnings,
        Some(vec![
            "pulse.dev sidecar injection: not injected: no MetricPipeline `checkout`".into()
        ])
    );
}

#[test]
fn a_pod_the_sidecar_would_break_is_admitted_unchanged_with_the_reason() {
    let cases = [
        (
            "/spec/containers/0/ports/0/containerPort",
            json!(9092),
            "declares port 9092",
        ),
        ("/spec/hostNetwork", json!(true), "host's network"),
        (
            "/spec/volumes/0/name",
            json!(sidecar::BUFFER_VOLUME),
            "already has a volume named `pulse-sidecar-buffer`",
        ),
    ];
    for (pointer, value, says) in cases {
        let mut review = fixture_json("opted-in.json");
        let object = &mut review["request"]["object"];
        match object.pointer_mut(pointer) {
            Some(slot) => *slot = value,
            None => object["spec"]["hostNetwork"] = value,
        }
        let Admission::Candidate(candidate) = admit(&serde_json::to_vec(&review).expect("encodes"))
        else {
            panic!("{pointer}: opted in");
        };
        let response = response(candidate.inject(&target(true), true));
        assert!(response.allowed, "{pointer}");
        assert_eq!(response.patch, None, "{pointer}");
        let warnings = response.warnings.unwrap_or_default();
        assert!(
            warnings.iter().any(|w| w.contains(says)),
            "{pointer}: {warnings:?} should say {says:?}"
        );
    }
}

/// The server as the API server meets it: HTTPS with a certificate signed by
/// a CA the client trusts (the chart's `caBundle`), a pipeline read from the
/// API for its token Secret, and a warning when the pipeline does not exist.
#[tokio::test]
async fn the_server_answers_over_tls_and_resolves_the_pipeline() {
    use axum::http::{Request, Response, StatusCode};
    use kube::client::Body;
    use pulse_operator::webhook::{Webhook, WebhookConfig};
    use rcgen::{BasicConstraints, CertificateParams, CertifiedIssuer, IsCa, KeyPair};
    use tokio_util::sync::CancellationToken;

    const HOST: &str = "pulse-webhook.pulse.svc";
    let mut ca_params = CertificateParams::new(Vec::<String>::new()).expect("CA params");
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    let ca =
        CertifiedIssuer::self_signed(ca_params, KeyPair::generate().expect("CA key")).expect("CA");
    let leaf_key = KeyPair::generate().expect("key");
    let leaf = CertificateParams::new(vec![HOST.to_string()])
        .expect("params")
        .signed_by(&leaf_key, &ca)
        .expect("certificate");
    let tls_dir = tempfile::tempdir().expect("temp dir");
    std::fs::write(tls_dir.path().join("tls.crt"), leaf.pem()).expect("write cert");
    std::fs::write(tls_dir.path().join("tls.key"), leaf_key.serialize_pem()).expect("write key");

    // The API server behind the kube client: one pipeline, `checkout`.
    let (service, mut api) = tower_test::mock::pair::<Request<Body>, Response<Body>>();
    let api_server = tokio::spawn(async move {
        let mut paths = Vec::new();
        while let Some((request, reply)) = api.next_request().await {
            let path = request.uri().path().to_string();
            let (status, body) = if path
                == "/apis/pulse.dev/v1alpha1/namespaces/shop/metricpipelines/checkout"
            {
                let pipeline = json!({
                    "apiVersion": "pulse.dev/v1alpha1",
                    "kind": "MetricPipeline",
                    "metadata": {"name": "checkout", "namespace": "shop"},
                    "spec": {
                        "kafka": {"brokers": "kafka:9092"},
                        "database": {"urlSecretRef": {"name": "checkout-db", "key": "url"}},
                        "auth": {"ingestTokensSecretRef": {"name": "checkout-tokens", "key": "ingest"}}
                    }
                });
                (StatusCode::OK, pipeline)
            } else {
                let status = json!({
                    "apiVersion": "v1", "kind": "Status", "status": "Failure",
                    "reason": "NotFound", "code": 404, "message": "not found"
                });
                (StatusCode::NOT_FOUND, status)
            };
            paths.push(path);
            let response = Response::builder()
                .status(status)
                .header("content-type", "application/json")
                .body(Body::from(serde_json::to_vec(&body).expect("encodes")))
                .expect("response");
            reply.send_response(response);
        }
        paths
    });
    let client = kube::Client::new(service, "default");

    let config = WebhookConfig {
        listen: "127.0.0.1:0".parse().expect("address"),
        tls_dir: tls_dir.path().to_path_buf(),
        native_sidecars: true,
        sidecar: target(true).sidecar,
    };
    let metrics = pulse_operator::metrics::Metrics::new();
    let webhook = Webhook::bind(config, client)
        .expect("binds")
        .with_metrics(metrics.clone());
    let addr = webhook.local_addr();
    let shutdown = CancellationToken::new();
    let server = tokio::spawn(webhook.run(shutdown.clone()));

    let ca = ca.der().clone();
    let post = |body: Vec<u8>| {
        let ca = ca.clone();
        async move {
            let (status, review) = post_https(&ca, HOST, addr, body).await;
            assert_eq!(status, 200);
            review.response.expect("a response")
        }
    };

    let injected = post(fixture("opted-in.json")).await;
    assert!(injected.allowed);
    assert_eq!(injected.warnings, None);
    let (_, pod) = patched_pod("opted-in.json", &injected);
    let sidecar = &pod.spec.expect("spec").init_containers.expect("init")[0];
    assert_sidecar_wired(sidecar, true);

    let mut elsewhere = fixture_json("opted-in.json");
    elsewhere["request"]["object"]["metadata"]["labels"][names::INJECT_LABEL] = json!("payments");
    let missing = post(serde_json::to_vec(&elsewhere).expect("encodes")).await;
    assert!(missing.allowed, "a missing pipeline never blocks the pod");
    assert_eq!(missing.patch, None);
    let warnings = missing.warnings.unwrap_or_default();
    assert!(
        warnings
            .iter()
            .any(|w| w.contains("no MetricPipeline `payments`")),
        "{warnings:?}"
    );

    let not_opted_in = post(fixture("not-opted-in.json")).await;
    assert_eq!(not_opted_in.patch, None);

    // Each request counted by what became of it, for the chart's alert.
    let text = metrics.render();
    for outcome in ["injected", "failed", "ignored"] {
        let line = format!("pulse_operator_webhook_requests_total{{outcome=\"{outcome}\"}} 1");
        assert!(text.contains(&line), "no `{line}` in\n{text}");
    }

    shutdown.cancel();
    server.await.expect("joins").expect("stops cleanly");
    let paths = api_server.await.expect("joins");
    assert_eq!(
        paths,
        [
            "/apis/pulse.dev/v1alpha1/namespaces/shop/metricpipelines/checkout",
            "/apis/pulse.dev/v1alpha1/namespaces/shop/metricpipelines/payments",
        ],
        "one lookup per opted-in pod, none for the others"
    );
}

#[test]
fn bind_names_the_missing_certificate() {
    use pulse_operator::webhook::{Webhook, WebhookConfig, WebhookError};
    let dir = tempfile::tempdir().expect("temp dir");
    let (service, _api) = tower_test::mock::pair::<
        axum::http::Request<kube::client::Body>,
        axum::http::Response<kube::client::Body>,
    >();
    let runtime = tokio::runtime::Builder::new_current_thread()
        .build()
        .expect("runtime");
    let _guard = runtime.enter();
    let config = WebhookConfig {
        listen: "127.0.0.1:0".parse().expect("address"),
        tls_dir: dir.path().to_path_buf(),
        native_sidecars: true,
        sidecar: target(true).sidecar,
    };
    let error = Webhook::bind(config, kube::Client::new(service, "default"))
        .err()
        .expect("no certificate, no server");
    assert!(matches!(error, WebhookError::Tls(_)), "{error}");
    let message = error.to_string();
    assert!(
        message.contains("tls.crt") && message.contains("--webhook-tls-dir"),
        "{message}"
    );
}

/// POSTs `body` to the webhook over HTTPS, trusting only `ca` and checking
/// the certificate against `host`, as the API server reaches the webhook
/// Service with the caBundle; answers the status and the review.
///
/// hyper and tokio-rustls rather than reqwest: reqwest's TLS features would be
/// unified into the workspace's other reqwest clients by `cargo test
/// --workspace`, which then refuse to build without a crypto provider.
async fn post_https(
    ca: &rustls::pki_types::CertificateDer<'static>,
    host: &str,
    addr: std::net::SocketAddr,
    body: Vec<u8>,
) -> (u16, AdmissionReview<DynamicObject>) {
    use http_body_util::BodyExt;

    let mut roots = rustls::RootCertStore::empty();
    roots.add(ca.clone()).expect("CA trusted");
    let tls = rustls::ClientConfig::builder_with_provider(std::sync::Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .expect("TLS versions")
    .with_root_certificates(roots)
    .with_no_client_auth();
    let connector = tokio_rustls::TlsConnector::from(std::sync::Arc::new(tls));
    let tcp = tokio::net::TcpStream::connect(addr)
        .await
        .expect("the webhook listens");
    let name = rustls::pki_types::ServerName::try_from(host.to_string()).expect("a DNS name");
    let stream = connector
        .connect(name, tcp)
        .await
        .expect("a TLS handshake the API server would accept");
    let (mut sender, connection) =
        hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream))
            .await
            .expect("HTTP/1.1 over TLS");
    tokio::spawn(connection);
    let request = http::Request::post(names::WEBHOOK_PATH)
        .header("host", host)
        .header("content-type", "application/json")
        .body(http_body_util::Full::new(bytes::Bytes::from(body)))
        .expect("a request");
    let answer = sender
        .send_request(request)
        .await
        .expect("the webhook answers over TLS");
    let status = answer.status().as_u16();
    let bytes = answer
        .into_body()
        .collect()
        .await
        .expect("the whole answer")
        .to_bytes();
    (status, from_wire(&bytes))
}

/// The certificate the chart makes (templates/webhook.yaml: genCA,
/// genSignedCert) is one the webhook serves and the API server trusts through
/// the rendered caBundle, for the Service's name. Needs helm (pinned in
/// tools/helm); skips without it unless CI is set.
#[tokio::test]
async fn the_charts_certificate_is_served_and_trusted_through_its_ca_bundle() {
    use base64::Engine;
    use pulse_operator::webhook::{Webhook, WebhookConfig};
    use rustls::pki_types::CertificateDer;
    use rustls::pki_types::pem::PemObject;

    let repo = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let pinned = repo.join("tools/helm/node_modules/.bin/helm");
    let helm = std::env::var_os("HELM")
        .map(std::path::PathBuf::from)
        .unwrap_or(if pinned.exists() {
            pinned
        } else {
            "helm".into()
        });
    let rendered = std::process::Command::new(&helm)
        .args([
            "template",
            "pulse",
            "charts/pulse",
            "--namespace",
            "pulse-system",
        ])
        .args([
            "--kube-version",
            "1.30.0",
            "--show-only",
            "templates/webhook.yaml",
        ])
        .current_dir(&repo)
        .output();
    let rendered = match rendered {
        Ok(out) if out.status.success() => String::from_utf8(out.stdout).expect("UTF-8"),
        other => {
            let why = format!("cannot run {}: {other:?}", helm.display());
            pulse_core::test_policy::skip_or_fail(&why, "npm ci --prefix tools/helm");
            return;
        }
    };
    // Each is one line of base64 in the Secret and the webhook configuration.
    let field = |key: &str| -> Vec<u8> {
        let line = rendered
            .lines()
            .map(str::trim)
            .find_map(|l| l.strip_prefix(key))
            .unwrap_or_else(|| panic!("no {key} in\n{rendered}"));
        base64::engine::general_purpose::STANDARD
            .decode(line.trim())
            .expect("base64")
    };
    let tls_dir = tempfile::tempdir().expect("temp dir");
    std::fs::write(tls_dir.path().join("tls.crt"), field("tls.crt:")).expect("write");
    std::fs::write(tls_dir.path().join("tls.key"), field("tls.key:")).expect("write");
    let ca = CertificateDer::from_pem_slice(&field("caBundle:")).expect("a PEM CA");
    assert_eq!(
        field("ca.crt:"),
        field("caBundle:"),
        "the caBundle is the Secret's CA"
    );

    let (service, _api) = tower_test::mock::pair::<
        axum::http::Request<kube::client::Body>,
        axum::http::Response<kube::client::Body>,
    >();
    let config = WebhookConfig {
        listen: "127.0.0.1:0".parse().expect("address"),
        tls_dir: tls_dir.path().to_path_buf(),
        native_sidecars: true,
        sidecar: target(true).sidecar,
    };
    let webhook = Webhook::bind(config, kube::Client::new(service, "default"))
        .expect("serves the chart's certificate");
    let addr = webhook.local_addr();
    let shutdown = tokio_util::sync::CancellationToken::new();
    let server = tokio::spawn(webhook.run(shutdown.clone()));

    let (status, review) = post_https(
        &ca,
        "pulse-webhook.pulse-system.svc",
        addr,
        fixture("not-opted-in.json"),
    )
    .await;
    assert_eq!(status, 200);
    assert!(review.response.expect("a response").allowed);
    shutdown.cancel();
    server.await.expect("joins").expect("stops cleanly");
}
