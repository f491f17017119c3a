//! The admission webhooks (`admission.k8s.io/v1` AdmissionReview).
//!
//! - `/mutate-virtualmachineinstances`: on CREATE, the namespace's presets
//!   ([`api::preset::apply_presets`], conflicts become warnings), upstream's defaults
//!   ([`api::defaults::set_vmi_defaults`]), the controller's finalizer, phase `Pending`
//!   with its transition time. On UPDATE by anyone but the KubeVirt components
//!   ([`crate::KUBEVIRT_USERS`]), the old status is put back: the VMI has no status
//!   subresource, so this is what keeps users from writing it.
//! - `/mutate-virtualmachines`: the instancetype and preference kinds default to the
//!   cluster-wide kinds, as upstream's VM mutator does.
//! - `/validate-{plural}` ([`VALIDATED`]): strict parsing and [`api::validate::validate`];
//!   a refusal is a 422 `Invalid` whose details carry every cause with its field path.

use api::v1::{VirtualMachineInstance, VirtualMachineInstancePreset};
use axum::Json;
use axum::extract::State;
use base64::Engine;
use kube::Api;
use kube::api::ListParams;
use serde_json::{Value, json};

use crate::{AppState, KUBEVIRT_USERS};

/// The plurals with a validating webhook at `/validate-{plural}`.
pub const VALIDATED: [&str; 9] = [
    "virtualmachineinstances",
    "virtualmachines",
    "virtualmachineinstancereplicasets",
    "virtualmachineinstancepresets",
    "virtualmachineinstancemigrations",
    "virtualmachineinstancetypes",
    "virtualmachineclusterinstancetypes",
    "virtualmachinepreferences",
    "virtualmachineclusterpreferences",
];

/// An AdmissionReview answering `request` with `response` (its uid filled in).
fn review(request: &Value, mut response: Value) -> Json<Value> {
    response["uid"] = request["uid"].clone();
    Json(
        json!({"apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview", "response": response}),
    )
}

fn allowed() -> Value {
    json!({"allowed": true})
}

fn denied(code: u16, reason: &str, message: &str, details: Option<Value>) -> Value {
    let mut status =
        json!({"status": "Failure", "code": code, "reason": reason, "message": message});
    if let Some(d) = details {
        status["details"] = d;
    }
    json!({"allowed": false, "status": status})
}

/// Allowed, with a JSON patch (if it has operations) and warnings.
fn patched(ops: Vec<Value>, warnings: Vec<String>) -> Value {
    let mut response = allowed();
    if !ops.is_empty() {
        response["patchType"] = json!("JSONPatch");
        response["patch"] =
            json!(base64::engine::general_purpose::STANDARD.encode(Value::Array(ops).to_string()));
    }
    if !warnings.is_empty() {
        response["warnings"] = json!(warnings);
    }
    response
}

/// The object of a review, parsed strictly; a denial when it does not parse.
fn parse(request: &Value) -> Result<api::Object, Value> {
    api::parse_object(request["object"].clone()).map_err(|e| {
        let field = e.field().unwrap_or_default().to_owned();
        let message = e.to_string();
        let details = json!({"causes": [{"reason": "FieldValueInvalid", "field": field, "message": message}]});
        denied(422, "Invalid", &message, Some(details))
    })
}

/// `POST /mutate-virtualmachineinstances`.
pub async fn mutate_vmi(State(state): State<AppState>, Json(body): Json<Value>) -> Json<Value> {
    let request = &body["request"];
    let response = match request["operation"].as_str() {
        Some("CREATE") => match vmi_on_create(&state, request).await {
            Ok(r) | Err(r) => r,
        },
        Some("UPDATE") => status_put_back(request),
        _ => allowed(),
    };
    review(request, response)
}

async fn vmi_on_create(state: &AppState, request: &Value) -> Result<Value, Value> {
    let api::Object::VirtualMachineInstance(mut vmi) = parse(request)? else {
        return Err(denied(
            400,
            "BadRequest",
            "expected a VirtualMachineInstance",
            None,
        ));
    };
    let namespace = request["namespace"]
        .as_str()
        .or(vmi.metadata.namespace.as_deref())
        .unwrap_or("default")
        .to_owned();
    let presets: Api<VirtualMachineInstancePreset> =
        Api::namespaced(state.client.clone(), &namespace);
    let presets = presets
        .list(&ListParams::default())
        .await
        .map_err(|e| denied(500, "InternalError", &format!("listing presets: {e}"), None))?;
    let mut warnings: Vec<String> = api::preset::apply_presets(&mut vmi, &presets.items)
        .into_iter()
        .map(|c| {
            format!(
                "preset {} not applied: it conflicts at {}",
                c.preset, c.field
            )
        })
        .collect();
    // A VMI starts with no status but Pending: what a user wrote there (a node, a
    // migration, interfaces) is dropped, as upstream's mutator does.
    let user = request["userInfo"]["username"].as_str().unwrap_or_default();
    if !KUBEVIRT_USERS.contains(&user) {
        vmi.status = None;
    }
    let uid = vmi.metadata.uid.clone();
    api::defaults::set_vmi_defaults(&mut vmi.spec, uid.as_deref(), &state.config.defaults);
    let finalizers = vmi.metadata.finalizers.get_or_insert_with(Vec::new);
    if !finalizers.iter().any(|f| f == reconcile::vmi::FINALIZER) {
        finalizers.push(reconcile::vmi::FINALIZER.to_owned());
    }
    set_pending(&mut vmi);
    let has_presets = vmi
        .metadata
        .annotations
        .iter()
        .flatten()
        .any(|(k, _)| k.starts_with(api::preset::PRESET_ANNOTATION_PREFIX));
    if has_presets {
        warnings.push(
            "VirtualMachineInstancePresets are deprecated; use instancetypes and preferences"
                .into(),
        );
    }
    let value = |v: Result<Value, serde_json::Error>| {
        v.map_err(|e| denied(500, "InternalError", &e.to_string(), None))
    };
    let ops = vec![
        json!({"op": "add", "path": "/spec", "value": value(serde_json::to_value(&vmi.spec))?}),
        json!({"op": "add", "path": "/metadata", "value": value(serde_json::to_value(&vmi.metadata))?}),
        json!({"op": "add", "path": "/status", "value": value(serde_json::to_value(&vmi.status))?}),
    ];
    Ok(patched(ops, warnings))
}

fn set_pending(vmi: &mut VirtualMachineInstance) {
    use api::v1::{PhaseTransition, VmiPhase};
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
    let status = vmi.status.get_or_insert_with(Default::default);
    status.phase = Some(VmiPhase::Pending);
    status.phase_transition_timestamps.push(PhaseTransition {
        phase: VmiPhase::Pending,
        phase_transition_timestamp: Some(Time(k8s_openapi::jiff::Timestamp::now())),
    });
}

/// On a VMI update: the old status again, unless a KubeVirt component wrote it.
pub fn status_put_back(request: &Value) -> Value {
    let user = request["userInfo"]["username"].as_str().unwrap_or_default();
    let (new, old) = (
        &request["object"]["status"],
        &request["oldObject"]["status"],
    );
    if new == old || KUBEVIRT_USERS.contains(&user) {
        return allowed();
    }
    let op = if old.is_null() {
        json!({"op": "remove", "path": "/status"})
    } else {
        json!({"op": "add", "path": "/status", "value": old})
    };
    patched(vec![op], Vec::new())
}

/// `POST /mutate-virtualmachines`.
pub async fn mutate_vm(Json(body): Json<Value>) -> Json<Value> {
    let request = &body["request"];
    let object = &request["object"];
    let mut ops = Vec::new();
    for (field, kind) in [
        ("instancetype", "VirtualMachineClusterInstancetype"),
        ("preference", "VirtualMachineClusterPreference"),
    ] {
        let matcher = &object["spec"][field];
        let named = matcher["name"].as_str().is_some_and(|n| !n.is_empty());
        let kind_set = matcher["kind"].as_str().is_some_and(|k| !k.is_empty());
        if named && !kind_set {
            ops.push(json!({"op": "add", "path": format!("/spec/{field}/kind"), "value": kind}));
        }
    }
    review(request, patched(ops, Vec::new()))
}

/// `POST /validate-{plural}`.
pub async fn validate(State(state): State<AppState>, Json(body): Json<Value>) -> Json<Value> {
    let request = &body["request"];
    if request["object"].is_null() {
        return review(request, allowed());
    }
    let response = match parse(request) {
        Err(denial) => denial,
        Ok(object) => {
            let mut causes = api::validate::validate(&object);
            let namespace = request["namespace"].as_str().unwrap_or("default");
            causes.extend(host_disks(&state, &object, namespace).await);
            if causes.is_empty() {
                allowed()
            } else {
                let message = causes
                    .iter()
                    .map(ToString::to_string)
                    .collect::<Vec<_>>()
                    .join(", ");
                let details = json!({
                    "name": object.name(), "group": request["kind"]["group"], "kind": request["resource"]["resource"],
                    "causes": causes,
                });
                denied(422, "Invalid", &message, Some(details))
            }
        }
    };
    review(request, response)
}

/// The feature gate `hostDisk` volumes need, as upstream names it.
pub const HOST_DISK_GATE: &str = "HostDisk";

/// The VMI spec of `object` and its field path: a VMI's own, or the template of a VM or
/// a ReplicaSet.
fn vmi_spec(object: &api::Object) -> Option<(&api::v1::VirtualMachineInstanceSpec, &str)> {
    match object {
        api::Object::VirtualMachineInstance(vmi) => Some((&vmi.spec, "spec")),
        api::Object::VirtualMachine(vm) => vm
            .spec
            .template
            .spec
            .as_ref()
            .map(|s| (s, "spec.template.spec")),
        api::Object::VirtualMachineInstanceReplicaSet(rs) => rs
            .spec
            .template
            .spec
            .as_ref()
            .map(|s| (s, "spec.template.spec")),
        _ => None,
    }
}

/// `hostDisk` volumes are refused unless the KubeVirt CR turns the `HostDisk` gate on
/// (off by default, as upstream's), and then only inside the directories the server
/// allows: a namespace user must not reach the node's files.
async fn host_disks(
    state: &AppState,
    object: &api::Object,
    namespace: &str,
) -> Vec<api::validate::Cause> {
    let Some((spec, at)) = vmi_spec(object) else {
        return Vec::new();
    };
    let volumes: Vec<(usize, &api::v1::HostDiskSource)> = spec
        .volumes
        .iter()
        .enumerate()
        .filter_map(|(i, v)| v.host_disk.as_ref().map(|h| (i, h)))
        .collect();
    if volumes.is_empty() {
        return Vec::new();
    }
    let invalid = |i: usize, leaf: &str, message: String| api::validate::Cause {
        reason: api::validate::CauseReason::FieldValueInvalid,
        field: format!("{at}.volumes[{i}].hostDisk{leaf}"),
        message,
    };
    if !host_disk_gate(state).await {
        return volumes
            .iter()
            .map(|(i, _)| {
                invalid(
                    *i,
                    "",
                    format!(
                        "the {HOST_DISK_GATE} feature gate is not enabled: add it to spec.configuration.developerConfiguration.featureGates of the KubeVirt CR"
                    ),
                )
            })
            .collect();
    }
    // Each namespace has its own directory under each allowed one.
    let dirs: Vec<std::path::PathBuf> = state
        .config
        .host_disk_dirs
        .iter()
        .map(|d| d.join(namespace))
        .collect();
    volumes
        .iter()
        .filter(|(_, h)| {
            let p = std::path::Path::new(&h.path);
            !dirs.iter().any(|d| p.starts_with(d) && p != d)
        })
        .map(|(i, h)| {
            let allowed: Vec<String> = dirs.iter().map(|d| d.display().to_string()).collect();
            invalid(
                *i,
                ".path",
                format!(
                    "{:?} is not in a directory this cluster allows host disks in ({})",
                    h.path,
                    if allowed.is_empty() {
                        "none".to_owned()
                    } else {
                        allowed.join(", ")
                    }
                ),
            )
        })
        .collect()
}

/// Whether a KubeVirt CR lists the `HostDisk` gate.
async fn host_disk_gate(state: &AppState) -> bool {
    let api: Api<api::kubevirt::KubeVirt> = Api::all(state.client.clone());
    let Ok(list) = api.list(&ListParams::default()).await else {
        return false;
    };
    list.items.iter().any(|kv| {
        kv.spec
            .configuration
            .as_ref()
            .and_then(|c| c.developer_configuration.as_ref())
            .and_then(|d| d.0.get("featureGates"))
            .and_then(Value::as_array)
            .is_some_and(|gates| gates.iter().any(|g| g == HOST_DISK_GATE))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn update(user: &str, old: Value, new: Value) -> Value {
        json!({"uid": "u", "operation": "UPDATE", "userInfo": {"username": user},
               "object": {"status": new}, "oldObject": {"status": old}})
    }

    fn decoded_patch(response: &Value) -> Value {
        let bytes = base64::engine::general_purpose::STANDARD
            .decode(response["patch"].as_str().unwrap_or_default())
            .unwrap_or_default();
        serde_json::from_slice(&bytes).unwrap_or(Value::Null)
    }

    #[test]
    fn users_get_the_old_status_back_components_do_not() {
        let old = json!({"phase": "Running"});
        let forged = json!({"phase": "Succeeded"});
        let r = status_put_back(&update("alice", old.clone(), forged.clone()));
        assert_eq!(
            decoded_patch(&r),
            json!([{"op": "add", "path": "/status", "value": old}])
        );
        let r = status_put_back(&update(KUBEVIRT_USERS[1], old.clone(), forged));
        assert_eq!(r, allowed());
        let r = status_put_back(&update("alice", old.clone(), old));
        assert_eq!(r, allowed());
        let r = status_put_back(&update("alice", Value::Null, json!({"phase": "Running"})));
        assert_eq!(
            decoded_patch(&r),
            json!([{"op": "remove", "path": "/status"}])
        );
    }
}
