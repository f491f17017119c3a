//! Admission webhooks: MutatingWebhookConfiguration and ValidatingWebhookConfiguration
//! objects, called over HTTPS with `admission.k8s.io/v1` AdmissionReview.
//!
//! A webhook is called when one of its rules matches the operation (CREATE, UPDATE,
//! DELETE), the group, version and resource (with `*`, `*/*` and `resource/subresource`
//! forms) and the scope, and its `namespaceSelector` and `objectSelector` match. Mutating
//! webhooks run first, in name order, each seeing the previous one's JSONPatch applied;
//! then validating webhooks. A webhook that cannot be reached or answers nonsense fails
//! the request under `failurePolicy: Fail` (the default) and is skipped under `Ignore`.
//! `clientConfig.url` is called as given; a `service` reference is called at the
//! Service's `spec.clusterIP`. The caller's identity is in `userInfo`.
//!
//! Requests the server makes itself (garbage collection, namespace cleanup) carry no user
//! and are not sent to webhooks.

use std::time::Duration;

use base64::Engine;
use serde_json::{Value, json};
use store::ListRequest;

use crate::{ApiError, AppState, Resource, User, aggregation};

/// What is being admitted.
#[derive(Debug)]
pub struct Attributes<'a> {
    pub resource: &'a Resource,
    pub version: &'a str,
    pub subresource: Option<&'a str>,
    pub operation: &'a str,
    pub namespace: Option<&'a str>,
    pub name: &'a str,
    pub user: &'a User,
    pub dry_run: bool,
}

fn configurations(state: &AppState, plural: &str) -> Result<Vec<Value>, ApiError> {
    let prefix = format!("/admissionregistration.k8s.io/{plural}/");
    let page = state.store.list(&ListRequest {
        prefix,
        ..Default::default()
    })?;
    let mut hooks: Vec<(String, Value)> = Vec::new();
    for kv in &page.items {
        let Ok(config) = serde_json::from_slice::<Value>(&kv.value) else {
            continue;
        };
        let config_name = config["metadata"]["name"]
            .as_str()
            .unwrap_or_default()
            .to_owned();
        for hook in config["webhooks"].as_array().into_iter().flatten() {
            let name = hook["name"].as_str().unwrap_or_default();
            hooks.push((format!("{config_name}/{name}"), hook.clone()));
        }
    }
    hooks.sort_by(|a, b| a.0.cmp(&b.0));
    Ok(hooks.into_iter().map(|(_, h)| h).collect())
}

fn listed(list: &Value, want: &str) -> bool {
    list.as_array()
        .is_some_and(|l| l.iter().any(|v| v == "*" || v == want))
}

fn resource_listed(list: &Value, resource: &str, sub: Option<&str>) -> bool {
    let full = match sub {
        Some(s) => format!("{resource}/{s}"),
        None => resource.to_owned(),
    };
    list.as_array().is_some_and(|l| {
        l.iter().filter_map(Value::as_str).any(|pattern| {
            pattern == full
                || pattern == "*/*"
                || (pattern == "*" && sub.is_none())
                || sub.is_some_and(|s| pattern == format!("*/{s}"))
        })
    })
}

fn rule_matches(rule: &Value, a: &Attributes<'_>) -> bool {
    let scope_ok = match rule["scope"].as_str().unwrap_or("*") {
        "Namespaced" => a.resource.namespaced,
        "Cluster" => !a.resource.namespaced,
        _ => true,
    };
    scope_ok
        && listed(&rule["operations"], a.operation)
        && listed(&rule["apiGroups"], &a.resource.group)
        && listed(&rule["apiVersions"], a.version)
        && resource_listed(&rule["resources"], &a.resource.plural, a.subresource)
}

/// Whether a `metav1.LabelSelector` selects `labels`; an absent selector selects all.
pub fn label_selector_matches(selector: &Value, labels: &Value) -> bool {
    if selector.is_null() {
        return true;
    }
    let label = |k: &str| labels.get(k).and_then(Value::as_str);
    let exact = selector["matchLabels"]
        .as_object()
        .is_none_or(|m| m.iter().all(|(k, v)| label(k) == v.as_str()));
    let exprs = selector["matchExpressions"].as_array().is_none_or(|es| {
        es.iter().all(|e| {
            let key = e["key"].as_str().unwrap_or_default();
            let values: Vec<&str> = e["values"]
                .as_array()
                .map(|v| v.iter().filter_map(Value::as_str).collect())
                .unwrap_or_default();
            match e["operator"].as_str().unwrap_or_default() {
                "In" => label(key).is_some_and(|l| values.contains(&l)),
                "NotIn" => label(key).is_none_or(|l| !values.contains(&l)),
                "Exists" => label(key).is_some(),
                "DoesNotExist" => label(key).is_none(),
                _ => false,
            }
        })
    });
    exact && exprs
}

fn namespace_labels(state: &AppState, a: &Attributes<'_>, object: &Value) -> Value {
    if a.resource.builtin && a.resource.plural == "namespaces" {
        return object["metadata"]["labels"].clone();
    }
    let Some(ns) = a.namespace else {
        return Value::Null;
    };
    state
        .store
        .get(&format!("/core/namespaces/{ns}"))
        .ok()
        .flatten()
        .and_then(|kv| serde_json::from_slice::<Value>(&kv.value).ok())
        .map(|n| n["metadata"]["labels"].clone())
        .unwrap_or(Value::Null)
}

fn applies(
    state: &AppState,
    hook: &Value,
    a: &Attributes<'_>,
    object: &Value,
    old: Option<&Value>,
) -> bool {
    let rules = hook["rules"]
        .as_array()
        .is_some_and(|r| r.iter().any(|r| rule_matches(r, a)));
    if !rules {
        return false;
    }
    let namespaced =
        a.resource.namespaced || (a.resource.builtin && a.resource.plural == "namespaces");
    if namespaced
        && !label_selector_matches(
            &hook["namespaceSelector"],
            &namespace_labels(state, a, object),
        )
    {
        return false;
    }
    let selector = &hook["objectSelector"];
    label_selector_matches(selector, &object["metadata"]["labels"])
        || old.is_some_and(|o| label_selector_matches(selector, &o["metadata"]["labels"]))
}

fn https_client(
    state: &AppState,
    ca_bundle: Option<&str>,
    timeout: Duration,
) -> Result<reqwest::Client, String> {
    let config = aggregation::tls_config(state, ca_bundle, false)?;
    reqwest::Client::builder()
        .tls_backend_preconfigured(config)
        .timeout(timeout)
        .build()
        .map_err(|e| e.to_string())
}

fn url_of(state: &AppState, hook: &Value) -> Result<String, String> {
    let cc = &hook["clientConfig"];
    if let Some(url) = cc["url"].as_str() {
        return Ok(url.to_owned());
    }
    let svc = &cc["service"];
    let ip = aggregation::service_ip(
        state,
        svc["namespace"].as_str().unwrap_or_default(),
        svc["name"].as_str().unwrap_or_default(),
    )?;
    let port = svc["port"].as_u64().unwrap_or(443);
    let path = svc["path"].as_str().unwrap_or("/");
    Ok(format!("https://{ip}:{port}{path}"))
}

/// POSTs a review (admission or conversion) to the webhook a `clientConfig` names; the
/// answer.
pub(crate) async fn post_review(
    state: &AppState,
    hook: &Value,
    timeout: Duration,
    review: &Value,
) -> Result<Value, String> {
    let url = url_of(state, hook)?;
    let client = https_client(state, hook["clientConfig"]["caBundle"].as_str(), timeout)?;
    let resp = client
        .post(&url)
        .header("content-type", "application/json")
        .body(review.to_string())
        .send()
        .await
        .map_err(|e| format!("failed calling webhook: {e}"))?;
    if !resp.status().is_success() {
        return Err(format!("webhook answered HTTP {}", resp.status()));
    }
    let bytes = resp
        .bytes()
        .await
        .map_err(|e| format!("failed reading the webhook's answer: {e}"))?;
    serde_json::from_slice(&bytes).map_err(|e| format!("the webhook's answer is not a review: {e}"))
}

/// Calls one webhook; its AdmissionReview `response`.
async fn call(state: &AppState, hook: &Value, review: &Value) -> Result<Value, String> {
    let timeout = Duration::from_secs(hook["timeoutSeconds"].as_u64().unwrap_or(10).clamp(1, 30));
    let answer = post_review(state, hook, timeout, review).await?;
    let response = answer["response"].clone();
    if response["uid"] != review["request"]["uid"] {
        return Err("webhook answered with the wrong uid".to_owned());
    }
    Ok(response)
}

fn review(a: &Attributes<'_>, object: Option<&Value>, old: Option<&Value>) -> Value {
    let gvk = json!({"group": a.resource.group, "version": a.version, "kind": a.resource.kind});
    let gvr =
        json!({"group": a.resource.group, "version": a.version, "resource": a.resource.plural});
    let mut request = json!({
        "uid": uuid::Uuid::new_v4().to_string(),
        "kind": gvk, "resource": gvr, "requestKind": gvk, "requestResource": gvr,
        "name": a.name,
        "operation": a.operation,
        "userInfo": {"username": a.user.name, "groups": a.user.groups},
        "object": object, "oldObject": old,
        "dryRun": a.dry_run,
    });
    if let Some(ns) = a.namespace {
        request["namespace"] = json!(ns);
    }
    if let Some(sub) = a.subresource {
        request["subResource"] = json!(sub);
    }
    json!({"apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview", "request": request})
}

fn hook_name(hook: &Value) -> &str {
    hook["name"].as_str().unwrap_or_default()
}

fn denied(hook: &Value, response: &Value) -> ApiError {
    let status = &response["status"];
    let message = status["message"].as_str().unwrap_or_default();
    let code = status["code"]
        .as_u64()
        .and_then(|c| u16::try_from(c).ok())
        .filter(|c| (400..600).contains(c))
        .unwrap_or(400);
    let mut e = ApiError::denied(
        code,
        &format!(
            "admission webhook \"{}\" denied the request: {message}",
            hook_name(hook)
        ),
    );
    if let Some(reason) = status["reason"].as_str() {
        e = e.with_reason(reason);
    }
    if status["details"].is_object() {
        e.details = Some(status["details"].clone());
    }
    e
}

fn unreachable(hook: &Value, why: &str) -> ApiError {
    ApiError::internal(format!(
        "Internal error occurred: failed calling webhook \"{}\": {why}",
        hook_name(hook)
    ))
}

/// Runs the mutating webhooks on `object`; returns it as they left it.
pub async fn mutate(
    state: &AppState,
    a: &Attributes<'_>,
    mut object: Value,
    old: Option<&Value>,
) -> Result<Value, ApiError> {
    for hook in configurations(state, "mutatingwebhookconfigurations")? {
        if !applies(state, &hook, a, &object, old) {
            continue;
        }
        let response = match call(state, &hook, &review(a, Some(&object), old)).await {
            Ok(r) => r,
            Err(_) if hook["failurePolicy"] == "Ignore" => continue,
            Err(why) => return Err(unreachable(&hook, &why)),
        };
        if response["allowed"] != json!(true) {
            return Err(denied(&hook, &response));
        }
        if let Some(patch) = response["patch"].as_str() {
            let bytes = base64::engine::general_purpose::STANDARD
                .decode(patch)
                .map_err(|e| unreachable(&hook, &format!("the patch is not base64: {e}")))?;
            let ops: json_patch::Patch = serde_json::from_slice(&bytes)
                .map_err(|e| unreachable(&hook, &format!("the patch is not a JSON patch: {e}")))?;
            json_patch::patch(&mut object, &ops)
                .map_err(|e| unreachable(&hook, &format!("the patch does not apply: {e}")))?;
        }
    }
    Ok(object)
}

/// Runs the validating webhooks; the first denial is the request's answer.
pub async fn validate(
    state: &AppState,
    a: &Attributes<'_>,
    object: Option<&Value>,
    old: Option<&Value>,
) -> Result<(), ApiError> {
    let subject = object.or(old).cloned().unwrap_or(Value::Null);
    for hook in configurations(state, "validatingwebhookconfigurations")? {
        if !applies(state, &hook, a, &subject, old) {
            continue;
        }
        let response = match call(state, &hook, &review(a, object, old)).await {
            Ok(r) => r,
            Err(_) if hook["failurePolicy"] == "Ignore" => continue,
            Err(why) => return Err(unreachable(&hook, &why)),
        };
        if response["allowed"] != json!(true) {
            return Err(denied(&hook, &response));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn label_selectors_as_webhooks_use_them() {
        let labels = json!({"app": "web", "tier": "front"});
        assert!(label_selector_matches(&Value::Null, &labels));
        assert!(label_selector_matches(
            &json!({"matchLabels": {"app": "web"}}),
            &labels
        ));
        assert!(!label_selector_matches(
            &json!({"matchLabels": {"app": "db"}}),
            &labels
        ));
        let expr = |op: &str, values: Value| json!({"matchExpressions": [{"key": "tier", "operator": op, "values": values}]});
        assert!(label_selector_matches(
            &expr("In", json!(["front", "back"])),
            &labels
        ));
        assert!(!label_selector_matches(
            &expr("NotIn", json!(["front"])),
            &labels
        ));
        assert!(label_selector_matches(
            &expr("Exists", Value::Null),
            &labels
        ));
        assert!(!label_selector_matches(
            &expr("DoesNotExist", Value::Null),
            &labels
        ));
    }

    #[test]
    fn resources_match_with_wildcards_and_subresources() {
        let list = |l: &[&str]| json!(l);
        assert!(resource_listed(
            &list(&["virtualmachines"]),
            "virtualmachines",
            None
        ));
        assert!(!resource_listed(
            &list(&["virtualmachines"]),
            "virtualmachines",
            Some("status")
        ));
        assert!(resource_listed(
            &list(&["virtualmachines/status"]),
            "virtualmachines",
            Some("status")
        ));
        assert!(resource_listed(&list(&["*"]), "pods", None));
        assert!(!resource_listed(&list(&["*"]), "pods", Some("status")));
        assert!(resource_listed(&list(&["*/*"]), "pods", Some("status")));
        assert!(resource_listed(
            &list(&["*/status"]),
            "pods",
            Some("status")
        ));
        assert!(!resource_listed(&list(&["pods"]), "virtualmachines", None));
    }
}
