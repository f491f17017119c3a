//! Registration: the objects that route the API server's calls to virt-api.
//!
//! All are written with server-side apply (field manager `virt-api`, forced), so a
//! second registration updates in place: Service `{namespace}/virt-api` at the given
//! cluster IP and port; APIService `v1.subresources.kubevirt.io` with upstream's
//! priorities; MutatingWebhookConfiguration `virt-api-mutator` and
//! ValidatingWebhookConfiguration `virt-api-validator`, `failurePolicy: Fail`,
//! `sideEffects: None`, AdmissionReview v1, trusting `ca_bundle_pem`.

use base64::Engine;
use kube::api::{
    Api, ApiResource, DynamicObject, GroupVersionKind, Patch, PatchParams, PostParams,
};
use serde_json::{Value, json};

use crate::admission::VALIDATED;
use crate::{GROUP, VERSION};

/// The Service (and the name in its certificate: `virt-api.{namespace}.svc`).
pub const SERVICE_NAME: &str = "virt-api";
pub const MUTATOR: &str = "virt-api-mutator";
pub const VALIDATOR: &str = "virt-api-validator";
const FIELD_MANAGER: &str = "virt-api";

/// Where virt-api listens and what verifies it.
#[derive(Debug, Clone)]
pub struct Registration {
    /// The namespace of the Service, `kubevirt`.
    pub namespace: String,
    /// The Service's cluster IP: where the API server connects.
    pub service_ip: String,
    pub port: u16,
    /// The CA (PEM) that signed virt-api's serving certificate.
    pub ca_bundle_pem: String,
}

#[derive(Debug, thiserror::Error)]
pub enum RegisterError {
    #[error("writing {what}")]
    Write {
        what: String,
        #[source]
        source: kube::Error,
    },
}

fn resource(group: &str, version: &str, kind: &str, plural: &str) -> ApiResource {
    ApiResource::from_gvk_with_plural(&GroupVersionKind::gvk(group, version, kind), plural)
}

async fn apply(
    client: &kube::Client,
    ar: &ApiResource,
    namespace: Option<&str>,
    body: Value,
) -> Result<(), RegisterError> {
    let name = body["metadata"]["name"]
        .as_str()
        .unwrap_or_default()
        .to_owned();
    let api: Api<DynamicObject> = match namespace {
        Some(ns) => Api::namespaced_with(client.clone(), ns, ar),
        None => Api::all_with(client.clone(), ar),
    };
    api.patch(
        &name,
        &PatchParams::apply(FIELD_MANAGER).force(),
        &Patch::Apply(body),
    )
    .await
    .map(|_| ())
    .map_err(|source| RegisterError::Write {
        what: format!("{} {name}", ar.kind),
        source,
    })
}

/// Creates or updates the Service, the APIService, the webhook configurations and the
/// users' ClusterRoles ([`crate::roles`]).
pub async fn register(client: kube::Client, reg: Registration) -> Result<(), RegisterError> {
    for obj in crate::roles::objects() {
        let (kind, plural) = match obj["kind"].as_str() {
            Some("ClusterRoleBinding") => ("ClusterRoleBinding", "clusterrolebindings"),
            _ => ("ClusterRole", "clusterroles"),
        };
        apply(
            &client,
            &resource("rbac.authorization.k8s.io", "v1", kind, plural),
            None,
            obj,
        )
        .await?;
    }
    let ns_resource = resource("", "v1", "Namespace", "namespaces");
    let namespaces: Api<DynamicObject> = Api::all_with(client.clone(), &ns_resource);
    let namespace: DynamicObject = serde_json::from_value(
        json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": reg.namespace}}),
    )
    .map_err(|e| RegisterError::Write {
        what: "Namespace".into(),
        source: kube::Error::SerdeError(e),
    })?;
    match namespaces.create(&PostParams::default(), &namespace).await {
        Ok(_) => {}
        Err(kube::Error::Api(s)) if s.code == 409 => {}
        Err(source) => {
            return Err(RegisterError::Write {
                what: format!("Namespace {}", reg.namespace),
                source,
            });
        }
    }
    let ca_bundle = base64::engine::general_purpose::STANDARD.encode(&reg.ca_bundle_pem);
    let labels = json!({"kubevirt.io": "virt-api"});
    apply(
        &client,
        &resource("", "v1", "Service", "services"),
        Some(&reg.namespace),
        json!({
            "apiVersion": "v1", "kind": "Service",
            "metadata": {"name": SERVICE_NAME, "namespace": reg.namespace, "labels": labels},
            "spec": {"clusterIP": reg.service_ip, "type": "ClusterIP", "selector": labels,
                     "ports": [{"name": "https", "port": reg.port, "targetPort": reg.port, "protocol": "TCP"}]},
        }),
    )
    .await?;
    apply(
        &client,
        &resource("apiregistration.k8s.io", "v1", "APIService", "apiservices"),
        None,
        json!({
            "apiVersion": "apiregistration.k8s.io/v1", "kind": "APIService",
            "metadata": {"name": format!("{VERSION}.{GROUP}"), "labels": labels},
            "spec": {"group": GROUP, "version": VERSION, "groupPriorityMinimum": 1000, "versionPriority": 15,
                     "service": {"namespace": reg.namespace, "name": SERVICE_NAME, "port": reg.port},
                     "caBundle": ca_bundle},
        }),
    )
    .await?;
    let hook = |name: &str, path: &str, group: &str, plural: &str, operations: &[&str]| {
        json!({
            "name": name,
            "clientConfig": {"service": {"namespace": reg.namespace, "name": SERVICE_NAME, "path": path, "port": reg.port},
                             "caBundle": ca_bundle},
            "rules": [{"operations": operations, "apiGroups": [group], "apiVersions": ["*"],
                       "resources": [plural], "scope": "*"}],
            "failurePolicy": "Fail", "sideEffects": "None", "admissionReviewVersions": ["v1"],
            "matchPolicy": "Equivalent", "timeoutSeconds": 10,
        })
    };
    let write = ["CREATE", "UPDATE"];
    let mutating = vec![
        hook(
            "virtualmachineinstances-mutator.kubevirt.io",
            "/mutate-virtualmachineinstances",
            api::GROUP,
            "virtualmachineinstances",
            &write,
        ),
        hook(
            "virtualmachines-mutator.kubevirt.io",
            "/mutate-virtualmachines",
            api::GROUP,
            "virtualmachines",
            &write,
        ),
    ];
    let mut validating: Vec<Value> = VALIDATED
        .iter()
        .map(|plural| {
            let group = if plural.contains("instancetype") || plural.contains("preference") {
                api::INSTANCETYPE_GROUP
            } else {
                api::GROUP
            };
            hook(
                &format!("{plural}-validator.{group}"),
                &format!("/validate-{plural}"),
                group,
                plural,
                &write,
            )
        })
        .collect();
    // Launcher pods' evictions (a node drain) become migrations.
    let mut interceptor = hook(
        "virt-launcher-eviction-interceptor.kubevirt.io",
        "/launcher-eviction-interceptor",
        "",
        "pods/eviction",
        &["CREATE"],
    );
    interceptor["rules"][0]["apiVersions"] = json!(["v1"]);
    interceptor["sideEffects"] = json!("NoneOnDryRun");
    validating.push(interceptor);
    apply(
        &client,
        &resource(
            "admissionregistration.k8s.io",
            "v1",
            "MutatingWebhookConfiguration",
            "mutatingwebhookconfigurations",
        ),
        None,
        json!({"apiVersion": "admissionregistration.k8s.io/v1", "kind": "MutatingWebhookConfiguration",
               "metadata": {"name": MUTATOR, "labels": labels}, "webhooks": mutating}),
    )
    .await?;
    apply(
        &client,
        &resource(
            "admissionregistration.k8s.io",
            "v1",
            "ValidatingWebhookConfiguration",
            "validatingwebhookconfigurations",
        ),
        None,
        json!({"apiVersion": "admissionregistration.k8s.io/v1", "kind": "ValidatingWebhookConfiguration",
               "metadata": {"name": VALIDATOR, "labels": labels}, "webhooks": validating}),
    )
    .await
}
