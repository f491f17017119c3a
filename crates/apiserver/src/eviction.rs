//! `POST pods/{name}/eviction` (`policy/v1` Eviction), the way `kubectl drain` removes a
//! pod: the validating webhooks registered for `pods/eviction` are asked first (KubeVirt's
//! eviction interceptor denies a live-migratable VMI's launcher with 429 and starts its
//! evacuation instead; kubectl then retries), then the pod is deleted with the
//! Eviction's `deleteOptions`. PodDisruptionBudgets are not served, so none is checked.

use serde_json::{Value, json};

use crate::admission::{self, Attributes};
use crate::ops::{self, DeleteOptions};
use crate::{ApiError, AppState, Resource, User};

/// Evicts the pod at `key`; answers with a success Status (201), as Kubernetes does.
pub async fn evict(
    state: &AppState,
    r: &Resource,
    version: &str,
    key: &str,
    eviction: &Value,
    user: std::sync::Arc<User>,
    params: &std::collections::HashMap<String, String>,
) -> Result<Value, ApiError> {
    let name = key.rsplit('/').next().unwrap_or_default();
    if let Some(named) = eviction["metadata"]["name"].as_str()
        && named != name
    {
        return Err(ApiError::bad_request(format!(
            "name in URL does not match name in Eviction object: {name} != {named}"
        )));
    }
    let (pod, _) = ops::get(state, r, version, key).await?;
    let namespace = pod["metadata"]["namespace"].as_str().map(str::to_owned);
    let options = &eviction["deleteOptions"];
    let dry_run = options["dryRun"]
        .as_array()
        .is_some_and(|d| d.iter().any(|v| v == "All"))
        || params.get("dryRun").is_some_and(|d| d == "All");
    let a = Attributes {
        resource: r,
        version,
        subresource: Some("eviction"),
        operation: "CREATE",
        namespace: namespace.as_deref(),
        name,
        user: &user,
        dry_run,
    };
    admission::validate(state, &a, Some(eviction), None).await?;
    let mut opts = DeleteOptions::parse(options, params)?;
    opts.dry_run = dry_run;
    opts.user = Some(user.clone());
    ops::delete(state, r, version, key, &opts).await?;
    Ok(
        json!({"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Success", "code": 201}),
    )
}
