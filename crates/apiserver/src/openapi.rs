//! OpenAPI v3: the root (`/openapi/v3`) lists one document per group-version, each with
//! the paths and operations of its resources and the schemas of its kinds.
//!
//! kubectl needs this to validate without `--validate=false`: it looks for the PATCH
//! operation of the kind (found through `x-kubernetes-group-version-kind`) and, when it
//! takes a `fieldValidation` parameter, leaves strict validation to the server. `kubectl
//! explain` reads the schemas. Built-in kinds' schemas come from k8s-openapi; custom
//! resources' from their CRD's `openAPIV3Schema`.

use std::sync::Arc;

use axum::Json;
use axum::extract::{Path, State};
use axum::http::Uri;
use axum::response::{IntoResponse, Response};
use schemars::generate::{SchemaGenerator, SchemaSettings};
use serde_json::{Map, Value, json};
use sha2::{Digest, Sha256};

use crate::{ApiError, AppState, Resource};

/// `group/version` as the document's path suffix: `api/v1` or `apis/{group}/{version}`.
fn gv_path(group: &str, version: &str) -> String {
    if group.is_empty() {
        format!("api/{version}")
    } else {
        format!("apis/{group}/{version}")
    }
}

/// The schema name Kubernetes uses: `io.k8s.api.core.v1.Pod`, `io.kubevirt.v1.VirtualMachine`.
fn schema_name(r: &Resource, version: &str) -> String {
    let group = match r.group.as_str() {
        "" => "io.k8s.api.core".to_owned(),
        "coordination.k8s.io" => "io.k8s.api.coordination".to_owned(),
        "rbac.authorization.k8s.io" => "io.k8s.api.rbac".to_owned(),
        "admissionregistration.k8s.io" => "io.k8s.api.admissionregistration".to_owned(),
        "apiextensions.k8s.io" => {
            "io.k8s.apiextensions-apiserver.pkg.apis.apiextensions".to_owned()
        }
        "apiregistration.k8s.io" => "io.k8s.kube-aggregator.pkg.apis.apiregistration".to_owned(),
        g => g.split('.').rev().collect::<Vec<_>>().join("."),
    };
    format!("{group}.{version}.{}", r.kind)
}

/// The built-in kinds' schemas, from k8s-openapi, into `defs`.
fn builtin_schema(r: &Resource, generator: &mut SchemaGenerator) -> bool {
    use k8s_openapi::api::admissionregistration;
    use k8s_openapi::api::{coordination, core, rbac};
    use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions;
    match (r.group.as_str(), r.kind.as_str()) {
        ("", "Namespace") => generator.subschema_for::<core::v1::Namespace>(),
        ("", "Pod") => generator.subschema_for::<core::v1::Pod>(),
        ("", "Node") => generator.subschema_for::<core::v1::Node>(),
        ("", "Event") => generator.subschema_for::<core::v1::Event>(),
        ("", "ConfigMap") => generator.subschema_for::<core::v1::ConfigMap>(),
        ("", "Secret") => generator.subschema_for::<core::v1::Secret>(),
        ("", "Service") => generator.subschema_for::<core::v1::Service>(),
        ("", "ServiceAccount") => generator.subschema_for::<core::v1::ServiceAccount>(),
        ("coordination.k8s.io", "Lease") => generator.subschema_for::<coordination::v1::Lease>(),
        ("rbac.authorization.k8s.io", "ClusterRole") => {
            generator.subschema_for::<rbac::v1::ClusterRole>()
        }
        ("rbac.authorization.k8s.io", "Role") => generator.subschema_for::<rbac::v1::Role>(),
        ("rbac.authorization.k8s.io", "ClusterRoleBinding") => {
            generator.subschema_for::<rbac::v1::ClusterRoleBinding>()
        }
        ("rbac.authorization.k8s.io", "RoleBinding") => {
            generator.subschema_for::<rbac::v1::RoleBinding>()
        }
        ("apiextensions.k8s.io", "CustomResourceDefinition") => {
            generator.subschema_for::<apiextensions::v1::CustomResourceDefinition>()
        }
        ("admissionregistration.k8s.io", "MutatingWebhookConfiguration") => {
            generator.subschema_for::<admissionregistration::v1::MutatingWebhookConfiguration>()
        }
        ("admissionregistration.k8s.io", "ValidatingWebhookConfiguration") => {
            generator.subschema_for::<admissionregistration::v1::ValidatingWebhookConfiguration>()
        }
        ("apiregistration.k8s.io", "APIService") => generator.subschema_for::<
            k8s_openapi::kube_aggregator::pkg::apis::apiregistration::v1::APIService,
        >(),
        _ => return false,
    };
    true
}

/// A CRD's schema for `version`, read from the stored CRD (the registry does not keep
/// the kubevirt schemas in memory).
fn stored_schema(state: &AppState, r: &Resource, version: &str) -> Option<Value> {
    let kv = state
        .store
        .get(&format!(
            "/apiextensions.k8s.io/customresourcedefinitions/{}.{}",
            r.plural, r.group
        ))
        .ok()??;
    let mut crd: Value = serde_json::from_slice(&kv.value).ok()?;
    let versions = crd["spec"]["versions"].as_array_mut()?;
    let found = versions.iter_mut().find(|v| v["name"] == version)?;
    Some(found["schema"]["openAPIV3Schema"].take()).filter(|s| s.is_object())
}

/// The document of one group-version.
fn document(state: &AppState, group: &str, version: &str) -> Option<Value> {
    let resources: Vec<Arc<Resource>> = state
        .registry
        .resources()
        .iter()
        .filter(|r| r.group == group && r.versions.iter().any(|v| v == version))
        .cloned()
        .collect();
    if resources.is_empty() {
        return None;
    }
    let mut generator = SchemaGenerator::new(SchemaSettings::openapi3());
    let mut custom = Map::new();
    for r in &resources {
        if !builtin_schema(r, &mut generator) {
            let mut schema = r
                .schema
                .as_deref()
                .cloned()
                .or_else(|| stored_schema(state, r, version))
                .unwrap_or_else(
                    || json!({"type": "object", "x-kubernetes-preserve-unknown-fields": true}),
                );
            if let Some(props) = schema["properties"].as_object_mut() {
                props.entry("apiVersion").or_insert(json!({"type": "string", "description": "APIVersion defines the versioned schema of this representation of an object."}));
                props.entry("kind").or_insert(json!({"type": "string", "description": "Kind is a string value representing the REST resource this object represents."}));
                props.insert(
                    "metadata".into(),
                    json!({"allOf": [{"$ref": "#/components/schemas/io.k8s.apimachinery.pkg.apis.meta.v1.ObjectMeta"}], "description": "Standard object's metadata."}),
                );
            }
            custom.insert(schema_name(r, version), schema);
        }
    }
    generator.subschema_for::<k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta>();
    let mut schemas = generator.take_definitions(true);
    schemas.extend(custom);
    let mut paths = Map::new();
    for r in &resources {
        let name = schema_name(r, version);
        if let Some(s) = schemas.get_mut(&name).and_then(Value::as_object_mut) {
            s.insert(
                "x-kubernetes-group-version-kind".into(),
                json!([{"group": r.group, "version": version, "kind": r.kind}]),
            );
        }
        add_paths(&mut paths, r, version, &name);
    }
    Some(json!({
        "openapi": "3.0.0",
        "info": {"title": "Kubernetes", "version": "v1.33.0"},
        "paths": paths,
        "components": {"schemas": schemas},
    }))
}

fn add_paths(paths: &mut Map<String, Value>, r: &Resource, version: &str, schema: &str) {
    let gvk = json!({"group": r.group, "version": version, "kind": r.kind});
    let body = json!({"content": {"application/json": {"schema": {"$ref": format!("#/components/schemas/{schema}")}}}});
    let ok = json!({"200": {"description": "OK", "content": {"application/json": {"schema": {"$ref": format!("#/components/schemas/{schema}")}}}}});
    let param = |name: &str, place: &str| json!({"name": name, "in": place, "schema": {"type": "string"}, "required": place == "path"});
    let writes = || {
        vec![
            param("dryRun", "query"),
            param("fieldManager", "query"),
            param("fieldValidation", "query"),
        ]
    };
    let op = |action: &str, params: Vec<Value>, with_body: bool| {
        let mut o = json!({
            "operationId": format!("{action}{}", r.kind),
            "parameters": params,
            "responses": ok,
            "x-kubernetes-action": action,
            "x-kubernetes-group-version-kind": gvk,
        });
        if with_body {
            o["requestBody"] = body.clone();
        }
        o
    };
    let base = format!("/{}", gv_path(&r.group, version));
    let collection = if r.namespaced {
        format!("{base}/namespaces/{{namespace}}/{}", r.plural)
    } else {
        format!("{base}/{}", r.plural)
    };
    let mut scope = vec![];
    if r.namespaced {
        scope.push(param("namespace", "path"));
    }
    let mut named = scope.clone();
    named.push(param("name", "path"));
    paths.insert(
        collection.clone(),
        json!({
            "get": op("list", scope.clone(), false),
            "post": op("post", [scope.clone(), writes()].concat(), true),
            "delete": op("deletecollection", scope, false),
        }),
    );
    let mut patch = op(
        "patch",
        [named.clone(), writes(), vec![param("force", "query")]].concat(),
        false,
    );
    patch["requestBody"] = json!({"content": {
        "application/json-patch+json": {"schema": {"type": "object"}},
        "application/merge-patch+json": {"schema": {"type": "object"}},
        "application/apply-patch+yaml": {"schema": {"type": "object"}},
    }});
    paths.insert(
        format!("{collection}/{{name}}"),
        json!({
            "get": op("get", named.clone(), false),
            "put": op("put", [named.clone(), writes()].concat(), true),
            "patch": patch,
            "delete": op("delete", named, false),
        }),
    );
}

fn hash(doc: &Value) -> String {
    let digest = Sha256::digest(doc.to_string().as_bytes());
    digest.iter().take(16).map(|b| format!("{b:02X}")).collect()
}

/// `/openapi/v3`: one entry per group-version.
pub async fn root(State(state): State<AppState>) -> Json<Value> {
    let mut paths = Map::new();
    for (group, versions) in state.registry.groups() {
        for version in versions {
            let Some(doc) = document(&state, &group, &version) else {
                continue;
            };
            let path = gv_path(&group, &version);
            paths.insert(
                path.clone(),
                json!({"serverRelativeURL": format!("/openapi/v3/{path}?hash={}", hash(&doc))}),
            );
        }
    }
    Json(json!({"paths": paths}))
}

/// `/openapi/v3/api/v1`, `/openapi/v3/apis/{group}/{version}`.
pub async fn group_version(
    State(state): State<AppState>,
    Path(rest): Path<String>,
    uri: Uri,
) -> Response {
    let parts: Vec<&str> = rest.split('/').collect();
    let (group, version) = match parts.as_slice() {
        ["api", v] => ("", *v),
        ["apis", g, v] => (*g, *v),
        _ => return ApiError::not_found_path(uri.path()).into_response(),
    };
    match document(&state, group, version) {
        Some(doc) => Json(doc).into_response(),
        None => ApiError::not_found_path(uri.path()).into_response(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn every_kind_has_a_schema_and_a_patch_operation_kubectl_can_find() {
        let state = AppState::start(Arc::new(store::MemStore::new()))
            .await
            .expect("a server");
        for (group, versions) in state.registry.groups() {
            for version in versions {
                let doc = document(&state, &group, &version).expect("a document");
                let schemas = doc["components"]["schemas"].as_object().expect("schemas");
                for r in state
                    .registry
                    .resources()
                    .iter()
                    .filter(|r| r.group == group && r.versions.contains(&version))
                {
                    let gvk = json!([{"group": r.group, "version": version, "kind": r.kind}]);
                    assert!(
                        schemas
                            .values()
                            .any(|s| s["x-kubernetes-group-version-kind"] == gvk),
                        "no schema for {gvk}"
                    );
                    let patch = doc["paths"]
                        .as_object()
                        .expect("paths")
                        .values()
                        .find(|p| p["patch"]["x-kubernetes-group-version-kind"] == gvk[0])
                        .unwrap_or_else(|| panic!("no PATCH for {}", r.kind));
                    assert!(
                        patch["patch"]["parameters"]
                            .as_array()
                            .expect("parameters")
                            .iter()
                            .any(|p| p["name"] == "fieldValidation")
                    );
                }
            }
        }
        let vm = document(&state, "kubevirt.io", "v1").expect("kubevirt.io/v1");
        let schema = &vm["components"]["schemas"]["io.kubevirt.v1.VirtualMachine"];
        assert!(schema["properties"]["spec"]["properties"]["runStrategy"].is_object());
        let core = document(&state, "", "v1").expect("v1");
        assert!(
            core["components"]["schemas"]["io.k8s.api.core.v1.Pod"]["properties"]["spec"]
                .is_object()
        );
    }
}
