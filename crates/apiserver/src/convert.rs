//! Versions of custom resources. A CRD with conversion `None` (the default) stores every
//! version alike and only relabels `apiVersion`. With conversion `Webhook`, objects are
//! sent to the CRD's webhook in a `apiextensions.k8s.io/v1` ConversionReview: written
//! objects into the storage version before they are checked and stored, read objects
//! into the version the client asked for (a list in one review).

use std::time::Duration;

use serde_json::{Value, json};

use crate::{ApiError, AppState, Resource, admission};

fn failed(r: &Resource, why: &str) -> ApiError {
    ApiError::internal(format!(
        "conversion webhook for {}.{} failed: {why}",
        r.plural, r.group
    ))
}

/// `objects` (as stored) in `version`.
pub async fn to_version(
    state: &AppState,
    r: &Resource,
    version: &str,
    mut objects: Vec<Value>,
) -> Result<Vec<Value>, ApiError> {
    let desired = r.api_version(version);
    let Some(webhook) = r.conversion.as_deref() else {
        for o in &mut objects {
            o["apiVersion"] = json!(desired);
        }
        return Ok(objects);
    };
    let pending: Vec<usize> = (0..objects.len())
        .filter(|i| objects[*i]["apiVersion"] != desired.as_str())
        .collect();
    if pending.is_empty() {
        return Ok(objects);
    }
    let sent: Vec<Value> = pending.iter().map(|i| objects[*i].clone()).collect();
    let converted = call(state, r, webhook, &desired, sent).await?;
    for (i, obj) in pending.into_iter().zip(converted) {
        objects[i] = obj;
    }
    Ok(objects)
}

/// One object (as stored) in `version`.
pub async fn one(
    state: &AppState,
    r: &Resource,
    version: &str,
    obj: Value,
) -> Result<Value, ApiError> {
    let mut out = to_version(state, r, version, vec![obj]).await?;
    out.pop().ok_or_else(|| failed(r, "it returned no object"))
}

/// A written body (in the URL's `version`) ready for the storage checks: with a
/// conversion webhook it is converted to the storage version, which is returned with it.
pub async fn incoming(
    state: &AppState,
    r: &Resource,
    version: &str,
    body: Value,
) -> Result<(Value, String), ApiError> {
    let Some(webhook) = r.conversion.as_deref() else {
        return Ok((body, version.to_owned()));
    };
    let storage = r.storage_version().to_owned();
    if version == storage || body["apiVersion"] != r.api_version(version).as_str() {
        // Already stored's version, or a mismatch the admission check reports.
        return Ok((body, version.to_owned()));
    }
    let mut converted = call(state, r, webhook, &r.api_version(&storage), vec![body]).await?;
    let obj = converted
        .pop()
        .ok_or_else(|| failed(r, "it returned no object"))?;
    Ok((obj, storage))
}

async fn call(
    state: &AppState,
    r: &Resource,
    webhook: &Value,
    desired: &str,
    objects: Vec<Value>,
) -> Result<Vec<Value>, ApiError> {
    let count = objects.len();
    let uid = uuid::Uuid::new_v4().to_string();
    let review = json!({
        "apiVersion": "apiextensions.k8s.io/v1",
        "kind": "ConversionReview",
        "request": {"uid": uid, "desiredAPIVersion": desired, "objects": objects},
    });
    let answer = admission::post_review(state, webhook, Duration::from_secs(10), &review)
        .await
        .map_err(|why| failed(r, &why))?;
    let response = &answer["response"];
    if response["uid"] != uid.as_str() {
        return Err(failed(r, "it answered with the wrong uid"));
    }
    if response["result"]["status"] != "Success" {
        let message = response["result"]["message"]
            .as_str()
            .unwrap_or("no reason given");
        return Err(failed(r, message));
    }
    let converted = response["convertedObjects"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    if converted.len() != count || converted.iter().any(|o| o["apiVersion"] != desired) {
        return Err(failed(r, "it returned other objects than it was sent"));
    }
    Ok(converted)
}
