//! The ClusterIP Service in front of a role's pods.

use k8s_openapi::api::core::v1::{Service, ServicePort, ServiceSpec};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;

use super::Owner;
use super::deployment::{HTTP_PORT_NAME, port};
use crate::names::{self, Component};

/// `<owner>-<component>` on the role's port, to the pods' named `http` port.
pub(super) fn service(owner: &Owner<'_>, component: Component) -> Service {
    let port = port(component);
    Service {
        metadata: owner.meta(
            &names::object_name(owner.instance, component),
            Some(component),
        ),
        spec: Some(ServiceSpec {
            type_: Some("ClusterIP".into()),
            selector: Some(owner.selector(Some(component))),
            ports: Some(vec![ServicePort {
                name: Some(HTTP_PORT_NAME.into()),
                port: i32::from(port),
                target_port: Some(IntOrString::String(HTTP_PORT_NAME.into())),
                protocol: Some("TCP".into()),
                app_protocol: Some("http".into()),
                ..ServicePort::default()
            }]),
            ..ServiceSpec::default()
        }),
        ..Service::default()
    }
}
