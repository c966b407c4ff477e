//! An Ingress (networking.k8s.io/v1) in front of a role's Service: the
//! gateway for writers outside the cluster, the dashboard server for people.

use k8s_openapi::api::networking::v1::{
    HTTPIngressPath, HTTPIngressRuleValue, Ingress, IngressBackend, IngressRule,
    IngressServiceBackend, IngressSpec as Spec, IngressTLS, ServiceBackendPort,
};

use super::Owner;
use super::deployment::HTTP_PORT_NAME;
use crate::crd::IngressSpec;
use crate::names::{self, Component};

/// `<owner>-<component>`: every path of `ingress.host` to the role's Service,
/// over TLS from `tlsSecretName` when set.
pub(super) fn ingress(owner: &Owner<'_>, component: Component, ingress: &IngressSpec) -> Ingress {
    let name = names::object_name(owner.instance, component);
    let mut metadata = owner.meta(&name, Some(component));
    metadata.annotations = (!ingress.annotations.is_empty()).then(|| ingress.annotations.clone());
    Ingress {
        metadata,
        spec: Some(Spec {
            ingress_class_name: ingress.class_name.clone(),
            tls: ingress.tls_secret_name.as_ref().map(|secret| {
                vec![IngressTLS {
                    hosts: Some(vec![ingress.host.clone()]),
                    secret_name: Some(secret.clone()),
                }]
            }),
            rules: Some(vec![IngressRule {
                host: Some(ingress.host.clone()),
                http: Some(HTTPIngressRuleValue {
                    paths: vec![HTTPIngressPath {
                        path: Some("/".into()),
                        path_type: "Prefix".into(),
                        backend: IngressBackend {
                            service: Some(IngressServiceBackend {
                                name,
                                port: Some(ServiceBackendPort {
                                    name: Some(HTTP_PORT_NAME.into()),
                                    ..ServiceBackendPort::default()
                                }),
                            }),
                            ..IngressBackend::default()
                        },
                    }],
                }),
            }]),
            ..Spec::default()
        }),
        ..Ingress::default()
    }
}

/// The base URL clients reach through `ingress`: `https://` when it has TLS.
pub fn ingress_url(ingress: &IngressSpec) -> String {
    let scheme = if ingress.tls_secret_name.is_some() {
        "https"
    } else {
        "http"
    };
    format!("{scheme}://{}", ingress.host)
}
