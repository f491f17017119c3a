//! CRUD, list and watch of registered resources.

use std::collections::HashMap;
use std::convert::Infallible;
use std::time::Duration;

use axum::Json;
use axum::body::{Body, Bytes};
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use base64::Engine;
use serde::Deserialize;
use serde_json::{Value, json};
use store::{EventKind, ListRequest, Rev, StoreError};

use crate::selectors::Selector;
use crate::{ApiError, AppState, Resource, objects, table};

type Params = Query<HashMap<String, String>>;

fn resource<'a>(
    state: &'a AppState,
    group: &str,
    version: &str,
    plural: &str,
) -> Result<&'a Resource, ApiError> {
    state
        .registry
        .find(group, version, plural)
        .ok_or_else(|| ApiError::not_found("resource", &format!("{plural}.{version}.{group}")))
}

fn write_error(e: StoreError, r: &Resource, name: &str) -> ApiError {
    match e {
        StoreError::AlreadyExists { .. } => ApiError::already_exists(&r.plural, name),
        StoreError::NotFound { .. } => ApiError::not_found(&r.plural, name),
        StoreError::Conflict { .. } => ApiError::conflict(&r.plural, name),
        other => other.into(),
    }
}

/// The resource (and object) a URL names; `namespace` is absent on cluster-wide paths,
/// `name` on collection paths. One handler serves both path shapes.
#[derive(Debug, Deserialize)]
pub struct Target {
    group: String,
    version: String,
    #[serde(default)]
    namespace: Option<String>,
    plural: String,
    #[serde(default)]
    name: Option<String>,
}

impl Target {
    fn ns(&self) -> Option<&str> {
        self.namespace.as_deref()
    }

    fn name(&self) -> &str {
        self.name.as_deref().unwrap_or_default()
    }

    fn resource<'a>(&self, state: &'a AppState) -> Result<&'a Resource, ApiError> {
        resource(state, &self.group, &self.version, &self.plural)
    }
}

fn parse_body(body: &[u8]) -> Result<Value, ApiError> {
    serde_json::from_slice(body)
        .map_err(|e| ApiError::bad_request(format!("the request body is not valid JSON: {e}")))
}

pub async fn create(
    State(state): State<AppState>,
    Path(t): Path<Target>,
    body: Bytes,
) -> Result<Response, ApiError> {
    let r = t.resource(&state)?;
    if r.namespaced != t.namespace.is_some() {
        return Err(ApiError::not_found("resource", &t.plural));
    }
    let obj = objects::for_create(r, &t.version, t.ns(), parse_body(&body)?)?;
    let name = obj["metadata"]["name"]
        .as_str()
        .unwrap_or_default()
        .to_owned();
    let kv = state
        .store
        .create(&r.key(t.ns(), Some(&name)), objects::to_bytes(&obj))
        .await
        .map_err(|e| write_error(e, r, &name))?;
    Ok((
        StatusCode::CREATED,
        Json(objects::outgoing(r, &t.version, &kv)?),
    )
        .into_response())
}

/// One object; a one-row Table when the client asked for tables.
pub async fn get(
    State(state): State<AppState>,
    Path(t): Path<Target>,
    Query(params): Params,
    headers: HeaderMap,
) -> Result<Json<Value>, ApiError> {
    let r = t.resource(&state)?;
    let kv = state
        .store
        .get(&r.key(t.ns(), Some(t.name())))?
        .ok_or_else(|| ApiError::not_found(&r.plural, t.name()))?;
    let obj = objects::outgoing(r, &t.version, &kv)?;
    if !table::wanted(accept(&headers)) {
        return Ok(Json(obj));
    }
    let metadata = json!({"resourceVersion": obj["metadata"]["resourceVersion"]});
    let include = params.get("includeObject").map(String::as_str);
    Ok(Json(table::build(r, &[obj], metadata, include, now())))
}

pub async fn replace(
    State(state): State<AppState>,
    Path(t): Path<Target>,
    body: Bytes,
) -> Result<Json<Value>, ApiError> {
    let (r, name) = (t.resource(&state)?, t.name());
    let body = parse_body(&body)?;
    if body["metadata"]["name"].as_str() != Some(name) {
        return Err(ApiError::bad_request(
            "the name of the object does not match the name on the URL",
        ));
    }
    let expected = match body["metadata"]["resourceVersion"].as_str() {
        Some(rv) => Some(
            rv.parse::<Rev>()
                .map_err(|_| ApiError::bad_request(format!("invalid resourceVersion {rv:?}")))?,
        ),
        None => None,
    };
    let key = r.key(t.ns(), Some(name));
    let current = state
        .store
        .get(&key)?
        .ok_or_else(|| ApiError::not_found(&r.plural, name))?;
    if expected.is_some_and(|e| e != current.mod_rev) {
        return Err(ApiError::conflict(&r.plural, name));
    }
    let old: Value =
        serde_json::from_slice(&current.value).map_err(|e| ApiError::internal(e.to_string()))?;
    let obj = objects::for_update(r, &t.version, &old, body)?;
    let kv = state
        .store
        .update(&key, objects::to_bytes(&obj), Some(current.mod_rev))
        .await
        .map_err(|e| write_error(e, r, name))?;
    Ok(Json(objects::outgoing(r, &t.version, &kv)?))
}

pub async fn delete(
    State(state): State<AppState>,
    Path(t): Path<Target>,
) -> Result<Json<Value>, ApiError> {
    let (r, name) = (t.resource(&state)?, t.name());
    let kv = state
        .store
        .delete(&r.key(t.ns(), Some(name)), None)
        .await
        .map_err(|e| write_error(e, r, name))?;
    Ok(Json(objects::outgoing(r, &t.version, &kv)?))
}

pub async fn list(
    State(state): State<AppState>,
    Path(t): Path<Target>,
    Query(params): Params,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    list_or_watch(
        &state,
        &t.group,
        &t.version,
        t.ns(),
        &t.plural,
        &params,
        &headers,
    )
    .await
}

fn accept(headers: &HeaderMap) -> Option<&str> {
    headers.get(header::ACCEPT).and_then(|v| v.to_str().ok())
}

fn now() -> i64 {
    k8s_openapi::jiff::Timestamp::now().as_second()
}

/// A continue token: the revision of the first page and the last key returned.
fn encode_continue(rev: Rev, key: &str) -> String {
    base64::engine::general_purpose::URL_SAFE_NO_PAD
        .encode(json!({"rev": rev, "key": key}).to_string())
}

fn decode_continue(token: &str) -> Result<(Rev, String), ApiError> {
    let bad = || ApiError::bad_request("invalid continue token");
    let raw = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(token)
        .map_err(|_| bad())?;
    let v: Value = serde_json::from_slice(&raw).map_err(|_| bad())?;
    Ok((
        v["rev"].as_u64().ok_or_else(bad)?,
        v["key"].as_str().ok_or_else(bad)?.to_owned(),
    ))
}

async fn list_or_watch(
    state: &AppState,
    group: &str,
    version: &str,
    ns: Option<&str>,
    plural: &str,
    params: &HashMap<String, String>,
    headers: &HeaderMap,
) -> Result<Response, ApiError> {
    let r = resource(state, group, version, plural)?.clone();
    let selector = Selector::parse(
        params.get("labelSelector").map(String::as_str),
        params.get("fieldSelector").map(String::as_str),
    )?;
    let prefix = r.key(ns, None);
    let rv = params.get("resourceVersion").filter(|v| !v.is_empty());
    if params.get("watch").is_some_and(|w| w == "true" || w == "1") {
        return watch(
            state,
            r,
            version.to_owned(),
            prefix,
            rv.cloned(),
            selector,
            params,
        )
        .await;
    }
    let limit: usize = match params.get("limit") {
        Some(l) => l
            .parse()
            .map_err(|_| ApiError::bad_request(format!("invalid limit {l:?}")))?,
        None => 0,
    };
    let (at, after) = match params.get("continue").filter(|c| !c.is_empty()) {
        Some(token) => {
            let (rev, key) = decode_continue(token)?;
            (Some(rev), Some(key))
        }
        None => match rv.map(|v| v.as_str()) {
            None | Some("0") => (None, None),
            Some(v) => {
                let rev: Rev = v
                    .parse()
                    .map_err(|_| ApiError::bad_request(format!("invalid resourceVersion {v:?}")))?;
                let exact = params
                    .get("resourceVersionMatch")
                    .is_some_and(|m| m == "Exact");
                (exact.then_some(rev), None)
            }
        },
    };
    let page = state.store.list(&ListRequest {
        prefix,
        after,
        limit,
        at,
    })?;
    let mut items = Vec::with_capacity(page.items.len());
    for kv in &page.items {
        let obj = objects::outgoing(&r, version, kv)?;
        if selector.matches(&obj) {
            items.push(obj);
        }
    }
    let mut metadata = json!({"resourceVersion": page.rev.to_string()});
    if page.more
        && let Some(last) = page.items.last()
    {
        metadata["continue"] = json!(encode_continue(page.rev, &last.key));
    }
    if table::wanted(accept(headers)) {
        let include = params.get("includeObject").map(String::as_str);
        return Ok(Json(table::build(&r, &items, metadata, include, now())).into_response());
    }
    let list = json!({
        "apiVersion": r.api_version(version),
        "kind": format!("{}List", r.kind),
        "metadata": metadata,
        "items": items,
    });
    Ok(Json(list).into_response())
}

fn event_line(kind: &str, object: Value) -> Bytes {
    let mut line = serde_json::to_vec(&json!({"type": kind, "object": object})).unwrap_or_default();
    line.push(b'\n');
    Bytes::from(line)
}

/// What a watcher with a selector sees of one change: an object moving into the selection
/// is ADDED, one moving out is DELETED, as the real server reports them.
fn selected_event(
    r: &Resource,
    version: &str,
    selector: &Selector,
    ev: &store::Event,
) -> Result<Option<Bytes>, ApiError> {
    let cur = objects::outgoing(r, version, &ev.kv)?;
    let now = selector.matches(&cur);
    let before = match &ev.prev {
        Some(prev) if !selector.is_empty() => {
            selector.matches(&objects::outgoing(r, version, prev)?)
        }
        Some(_) => true,
        None => false,
    };
    let kind = match (ev.kind, before, now) {
        (EventKind::Deleted, _, true) => "DELETED",
        (EventKind::Deleted, _, false) => return Ok(None),
        (EventKind::Created, _, true) | (EventKind::Modified, false, true) => "ADDED",
        (EventKind::Modified, true, true) => "MODIFIED",
        (EventKind::Modified, true, false) => "DELETED",
        _ => return Ok(None),
    };
    Ok(Some(event_line(kind, cur)))
}

async fn watch(
    state: &AppState,
    r: Resource,
    version: String,
    prefix: String,
    rv: Option<String>,
    selector: Selector,
    params: &HashMap<String, String>,
) -> Result<Response, ApiError> {
    let timeout = params
        .get("timeoutSeconds")
        .and_then(|t| t.parse::<u64>().ok())
        .map_or(Duration::from_secs(1800), Duration::from_secs);
    // No revision (or "0"): start with the current objects as ADDED events.
    let (initial, from) = match rv.as_deref() {
        None | Some("0") => {
            let page = state.store.list(&ListRequest {
                prefix: prefix.clone(),
                ..Default::default()
            })?;
            let mut lines = Vec::new();
            for kv in &page.items {
                let obj = objects::outgoing(&r, &version, kv)?;
                if selector.matches(&obj) {
                    lines.push(event_line("ADDED", obj));
                }
            }
            (lines, page.rev)
        }
        Some(v) => (
            Vec::new(),
            v.parse::<Rev>()
                .map_err(|_| ApiError::bad_request(format!("invalid resourceVersion {v:?}")))?,
        ),
    };
    let body = match state.store.watch(&prefix, from) {
        Ok(w) => {
            let deadline = tokio::time::Instant::now() + timeout;
            let live = futures_util::stream::unfold(
                (w, r, version, selector),
                move |(mut w, r, version, selector)| async move {
                    loop {
                        let next = tokio::time::timeout_at(deadline, w.next()).await.ok()??;
                        let line = match next {
                            Ok(ev) => match selected_event(&r, &version, &selector, &ev) {
                                Ok(Some(line)) => line,
                                Ok(None) => continue,
                                Err(e) => event_line("ERROR", e.status()),
                            },
                            Err(e) => event_line("ERROR", ApiError::from(e).status()),
                        };
                        return Some((Ok::<_, Infallible>(line), (w, r, version, selector)));
                    }
                },
            );
            let initial = futures_util::stream::iter(initial.into_iter().map(Ok::<_, Infallible>));
            Body::from_stream(futures_util::StreamExt::chain(initial, live))
        }
        Err(StoreError::Compacted {
            requested,
            compacted,
        }) => {
            let status = ApiError::gone(format!(
                "too old resource version: {requested} ({compacted})"
            ))
            .status();
            Body::from(event_line("ERROR", status))
        }
        Err(e) => return Err(e.into()),
    };
    Ok(([(header::CONTENT_TYPE, "application/json")], body).into_response())
}
