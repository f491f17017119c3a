//! Writes with Kubernetes' rules, shared by the HTTP handlers and the server's own
//! controllers (garbage collector, namespace cleanup).
//!
//! Updates are compare-and-swap on the revision and retried on a lost race unless the
//! caller's body names a `resourceVersion`, which is then a precondition (409 when stale).
//! Deletion honours finalizers: an object that still has some gets `deletionTimestamp`
//! and stays until an update removes the last one. `Foreground` and `Orphan` propagation
//! add the `foregroundDeletion` and `orphan` finalizers the garbage collector acts on.
//! Namespaces are never deleted directly: they turn `Terminating` and the collector
//! empties them first.

use serde_json::{Value, json};
use store::{KeyValue, Rev, StoreError};

use std::sync::Arc;

use crate::admission::{self, Attributes};
use crate::convert;
use crate::objects::{self, Part};
use crate::{ApiError, AppState, Resource, User};

pub const FOREGROUND: &str = "foregroundDeletion";
pub const ORPHAN: &str = "orphan";

pub fn write_error(e: StoreError, r: &Resource, name: &str) -> ApiError {
    match e {
        StoreError::AlreadyExists { .. } => ApiError::already_exists(&r.plural, name),
        StoreError::NotFound { .. } => ApiError::not_found(&r.plural, name),
        StoreError::Conflict { .. } => ApiError::conflict(&r.plural, name),
        other => other.into(),
    }
}

/// The stored row of `key`, or 404.
fn current(state: &AppState, r: &Resource, key: &str) -> Result<KeyValue, ApiError> {
    let name = key.rsplit('/').next().unwrap_or_default();
    state
        .store
        .get(key)?
        .ok_or_else(|| ApiError::not_found(&r.plural, name))
}

/// A stored object as the client asked for it.
async fn out(
    state: &AppState,
    r: &Resource,
    version: &str,
    kv: &KeyValue,
) -> Result<Value, ApiError> {
    convert::one(state, r, version, objects::outgoing(r, version, kv)?).await
}

fn decode(kv: &KeyValue) -> Result<Value, ApiError> {
    serde_json::from_slice(&kv.value).map_err(|e| ApiError::internal(e.to_string()))
}

/// The namespace a new object goes into must exist and not be terminating.
pub fn check_namespace(state: &AppState, ns: &str) -> Result<(), ApiError> {
    let Some(r) = state.registry.find("", "v1", "namespaces") else {
        return Ok(());
    };
    let kv = state
        .store
        .get(&r.key(None, Some(ns)))?
        .ok_or_else(|| ApiError::not_found("namespaces", ns))?;
    if decode(&kv)?["metadata"].get("deletionTimestamp").is_some() {
        return Err(ApiError::forbidden(format!(
            "unable to create new content in namespace {ns} because it is being terminated"
        )));
    }
    Ok(())
}

/// How a write is made: `dryRun=All` checks everything and stores nothing;
/// `fieldValidation=Strict` makes fields a schema does not know an error instead of
/// dropping them.
///
/// A write with a `user` goes through the admission webhooks; the server's own writes
/// have none.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Write {
    pub dry_run: bool,
    pub strict: bool,
    pub user: Option<Arc<User>>,
}

/// Creates `body` (in `version`) in `ns`.
pub async fn create(
    state: &AppState,
    r: &Resource,
    version: &str,
    ns: Option<&str>,
    body: Value,
    how: Write,
) -> Result<Value, ApiError> {
    if let Some(ns) = ns {
        check_namespace(state, ns)?;
    }
    let (body, written) = convert::incoming(state, r, version, body).await?;
    let mut obj = objects::for_create(r, &written, ns, body, how.strict)?;
    if r.builtin && r.plural == "services" {
        let privileged = crate::services::privileged(how.user.as_deref());
        crate::services::allocate(state, &mut obj, privileged)?;
    }
    if r.builtin && r.plural == "pods" {
        crate::launchers::check(how.user.as_deref(), None, &obj)?;
    }
    let name = obj["metadata"]["name"]
        .as_str()
        .unwrap_or_default()
        .to_owned();
    if let Some(user) = &how.user {
        let a = Attributes {
            resource: r,
            version,
            subresource: None,
            operation: "CREATE",
            namespace: ns,
            name: &name,
            user,
            dry_run: how.dry_run,
        };
        let mutated = admission::mutate(state, &a, obj.clone(), None).await?;
        obj = objects::recheck(r, mutated, how.strict)?;
        admission::validate(state, &a, Some(&obj), None).await?;
        if r.builtin && r.group == crate::rbac::GROUP {
            state
                .authorizer
                .check_escalation(&*state.store, user, &r.plural, &obj)?;
        }
    } else {
        obj = objects::recheck(r, obj, how.strict)?;
    }
    let key = r.key(ns, Some(&name));
    if how.dry_run {
        if state.store.get(&key)?.is_some() {
            return Err(ApiError::already_exists(&r.plural, &name));
        }
        return Ok(obj);
    }
    let kv = state
        .store
        .create(&key, objects::to_bytes(&obj))
        .await
        .map_err(|e| write_error(e, r, &name))?;
    after_write(state, r);
    out(state, r, version, &kv).await
}

/// After a write: a CustomResourceDefinition changes what the server serves; a role or
/// binding changes who may do what (before the answer goes out, so the writer's next
/// request sees it).
fn after_write(state: &AppState, r: &Resource) {
    if r.builtin && r.plural == "customresourcedefinitions" {
        state.reload_crds();
    }
    if r.builtin && r.group == crate::rbac::GROUP {
        state.authorizer.invalidate();
    }
}

/// Reads an object in the client's version.
pub async fn get(
    state: &AppState,
    r: &Resource,
    version: &str,
    key: &str,
) -> Result<(Value, Rev), ApiError> {
    let kv = current(state, r, key)?;
    Ok((out(state, r, version, &kv).await?, kv.mod_rev))
}

/// Updates the object at `key` with what `mutate` makes of its current state (in
/// `version`). A `resourceVersion` left in the result must be the current one.
pub async fn update(
    state: &AppState,
    r: &Resource,
    version: &str,
    key: &str,
    part: Part,
    how: Write,
    mutate: impl Fn(Value) -> Result<Value, ApiError>,
) -> Result<Value, ApiError> {
    let name = key.rsplit('/').next().unwrap_or_default();
    loop {
        let kv = current(state, r, key)?;
        let current = out(state, r, version, &kv).await?;
        let body = mutate(current)?;
        if body["metadata"]["name"].as_str().is_some_and(|n| n != name) {
            return Err(ApiError::bad_request(format!(
                "the name of the object ({}) does not match the name on the URL ({name})",
                body["metadata"]["name"].as_str().unwrap_or_default()
            )));
        }
        let expected =
            match &body["metadata"]["resourceVersion"] {
                Value::String(rv) => Some(rv.parse::<Rev>().map_err(|_| {
                    ApiError::bad_request(format!("invalid resourceVersion {rv:?}"))
                })?),
                _ => None,
            };
        if expected.is_some_and(|e| e != kv.mod_rev) {
            return Err(ApiError::conflict(&r.plural, name));
        }
        let old = decode(&kv)?;
        let (body, written) = convert::incoming(state, r, version, body).await?;
        let mut obj = objects::for_update(r, &written, &old, body, part, how.strict)?;
        if r.builtin && r.plural == "services" && part != Part::Status {
            crate::services::check_update(state, &old, &mut obj)?;
        }
        if r.builtin && r.plural == "pods" {
            crate::launchers::check(how.user.as_deref(), Some(&old), &obj)?;
        }
        if let Some(user) = &how.user {
            let a = Attributes {
                resource: r,
                version,
                subresource: (part == Part::Status).then_some("status"),
                operation: "UPDATE",
                namespace: old["metadata"]["namespace"].as_str(),
                name,
                user,
                dry_run: how.dry_run,
            };
            let mutated = admission::mutate(state, &a, obj.clone(), Some(&old)).await?;
            obj = objects::recheck(r, mutated, how.strict)?;
            admission::validate(state, &a, Some(&obj), Some(&old)).await?;
            if r.builtin && r.group == crate::rbac::GROUP {
                state
                    .authorizer
                    .check_escalation(&*state.store, user, &r.plural, &obj)?;
            }
        } else {
            obj = objects::recheck(r, obj, how.strict)?;
        }
        if how.dry_run {
            return Ok(obj);
        }
        let written = if objects::releasable(&obj) {
            state.store.delete(key, Some(kv.mod_rev)).await
        } else if obj == old {
            return out(state, r, version, &kv).await;
        } else {
            state
                .store
                .update(key, objects::to_bytes(&obj), Some(kv.mod_rev))
                .await
        };
        match written {
            Ok(kv) => {
                after_write(state, r);
                let mut out = out(state, r, version, &kv).await?;
                if objects::releasable(&obj) {
                    out = convert::one(state, r, version, obj).await?;
                }
                return Ok(out);
            }
            // Another write came first: run `mutate` again on the new state. A
            // resourceVersion the caller set is then stale and answered with 409 above;
            // one a patch merely carried over from the old state is the new one.
            Err(StoreError::Conflict { .. }) => continue,
            Err(e) => return Err(write_error(e, r, name)),
        }
    }
}

/// What a DELETE asks for.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct DeleteOptions {
    /// `Background` (the default), `Foreground` or `Orphan`.
    pub propagation: Option<String>,
    pub uid: Option<String>,
    pub resource_version: Option<String>,
    pub dry_run: bool,
    /// `gracePeriodSeconds`: for pods on a node, how long they get to stop.
    pub grace_period: Option<i64>,
    /// Who asks: the deletion goes through the validating webhooks.
    pub user: Option<Arc<User>>,
}

/// The grace period a pod's deletion waits for: none for a pod not on a node or already
/// finished, else the request's or the pod's `terminationGracePeriodSeconds` (30).
fn pod_grace(r: &Resource, pod: &Value, requested: Option<i64>) -> i64 {
    let on_node = pod["spec"]["nodeName"]
        .as_str()
        .is_some_and(|n| !n.is_empty());
    let finished = matches!(
        pod["status"]["phase"].as_str(),
        Some("Succeeded" | "Failed")
    );
    let is_pod = r.builtin && r.plural == "pods";
    if !is_pod || !on_node || finished {
        return 0;
    }
    requested
        .or_else(|| pod["spec"]["terminationGracePeriodSeconds"].as_i64())
        .unwrap_or(30)
        .max(0)
}

impl DeleteOptions {
    /// From the DELETE body (a `DeleteOptions`) and the query.
    pub fn parse(
        body: &Value,
        params: &std::collections::HashMap<String, String>,
    ) -> Result<Self, ApiError> {
        let propagation = body["propagationPolicy"]
            .as_str()
            .map(str::to_owned)
            .or_else(|| params.get("propagationPolicy").cloned())
            .or_else(|| {
                (body["orphanDependents"].as_bool() == Some(true)
                    || params.get("orphanDependents").is_some_and(|o| o == "true"))
                .then(|| "Orphan".to_owned())
            });
        if let Some(p) = &propagation
            && !matches!(p.as_str(), "Background" | "Foreground" | "Orphan")
        {
            return Err(ApiError::unprocessable(
                "DeleteOptions",
                "",
                "propagationPolicy",
                &format!(
                    "Unsupported value: {p:?}: supported values: \"Foreground\", \"Background\", \"Orphan\""
                ),
            ));
        }
        Ok(Self {
            propagation,
            uid: body["preconditions"]["uid"].as_str().map(str::to_owned),
            resource_version: body["preconditions"]["resourceVersion"]
                .as_str()
                .map(str::to_owned),
            dry_run: body["dryRun"].as_array().is_some_and(|d| !d.is_empty())
                || params.get("dryRun").is_some_and(|d| d == "All"),
            grace_period: body["gracePeriodSeconds"].as_i64().or_else(|| {
                params
                    .get("gracePeriodSeconds")
                    .and_then(|g| g.parse().ok())
            }),
            user: None,
        })
    }
}

/// Deletes the object at `key`, or marks it for deletion while finalizers hold it.
/// Returns the object as it was last seen.
pub async fn delete(
    state: &AppState,
    r: &Resource,
    version: &str,
    key: &str,
    opts: &DeleteOptions,
) -> Result<Value, ApiError> {
    let name = key.rsplit('/').next().unwrap_or_default();
    loop {
        let kv = current(state, r, key)?;
        let mut obj = decode(&kv)?;
        let meta = &obj["metadata"];
        if opts
            .uid
            .as_deref()
            .is_some_and(|u| Some(u) != meta["uid"].as_str())
            || opts
                .resource_version
                .as_deref()
                .is_some_and(|rv| rv != kv.mod_rev.to_string())
        {
            return Err(ApiError::conflict(&r.plural, name));
        }
        if let Some(user) = &opts.user {
            let a = Attributes {
                resource: r,
                version,
                subresource: None,
                operation: "DELETE",
                namespace: meta["namespace"].as_str(),
                name,
                user,
                dry_run: opts.dry_run,
            };
            admission::validate(state, &a, None, Some(&obj)).await?;
        }
        let meta = &obj["metadata"];
        let mut finalizers: Vec<Value> = meta["finalizers"].as_array().cloned().unwrap_or_default();
        let extra = match opts.propagation.as_deref() {
            Some("Foreground") => Some(FOREGROUND),
            Some("Orphan") => Some(ORPHAN),
            _ => None,
        };
        if let Some(f) = extra
            && !finalizers.iter().any(|x| x == f)
        {
            finalizers.push(json!(f));
        }
        let namespace = r.builtin && r.plural == "namespaces";
        // A pod on a node is stopped there first: it keeps a deletionTimestamp for its
        // grace period until its node deletes it with grace 0 (or someone forces it).
        let grace = pod_grace(r, &obj, opts.grace_period);
        let held = !finalizers.is_empty() || namespace || grace > 0;
        if !held {
            if opts.dry_run {
                return out(state, r, version, &kv).await;
            }
            match state.store.delete(key, Some(kv.mod_rev)).await {
                Ok(kv) => {
                    after_write(state, r);
                    return out(state, r, version, &kv).await;
                }
                Err(StoreError::Conflict { .. }) => continue,
                Err(e) => return Err(write_error(e, r, name)),
            }
        }
        let already = meta.get("deletionTimestamp").is_some();
        let before: Vec<Value> = meta["finalizers"].as_array().cloned().unwrap_or_default();
        let current_grace = meta["deletionGracePeriodSeconds"].as_i64().unwrap_or(0);
        let shorter = already && grace < current_grace;
        if already && before == finalizers && !shorter {
            return out(state, r, version, &kv).await;
        }
        if !already || shorter {
            let at = k8s_openapi::jiff::Timestamp::now()
                .checked_add(k8s_openapi::jiff::SignedDuration::from_secs(grace))
                .unwrap_or_else(|_| k8s_openapi::jiff::Timestamp::now());
            obj["metadata"]["deletionTimestamp"] = json!(
                at.round(k8s_openapi::jiff::Unit::Second)
                    .map(|t| t.to_string())
                    .unwrap_or_default()
            );
            obj["metadata"]["deletionGracePeriodSeconds"] = json!(grace);
        }
        if !finalizers.is_empty() {
            obj["metadata"]["finalizers"] = Value::Array(finalizers);
        }
        if namespace {
            obj["status"]["phase"] = json!("Terminating");
        }
        if opts.dry_run {
            return convert::one(state, r, version, obj).await;
        }
        match state
            .store
            .update(key, objects::to_bytes(&obj), Some(kv.mod_rev))
            .await
        {
            Ok(kv) => return out(state, r, version, &kv).await,
            Err(StoreError::Conflict { .. }) => continue,
            Err(e) => return Err(write_error(e, r, name)),
        }
    }
}
