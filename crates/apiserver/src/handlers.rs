//! The resource endpoints: CRUD, patch, the status and scale subresources, list and
//! watch, for every registered resource.

use std::collections::HashMap;
use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use axum::Json;
use axum::body::{Body, Bytes};
use axum::extract::{Query, State};
use axum::http::{HeaderMap, Method, StatusCode, Uri, header};
use axum::response::{IntoResponse, Response};
use base64::Engine;
use serde_json::{Value, json};
use store::{EventKind, ListRequest, Rev, StoreError};

use crate::objects::Part;
use crate::ops::{self, DeleteOptions};
use crate::request::{Request, Target};
use crate::selectors::Selector;
use crate::{
    ApiError, AppState, Resource, User, aggregation, body, convert, discovery, nodes, objects,
    patch, table,
};

type Params = HashMap<String, String>;

/// Every request under `/api` and `/apis`. Without an authenticated user (a router
/// served without the authenticating layer, as in tests) the caller is
/// `system:unsecured`, a cluster admin, as Kubernetes' old insecure port treated it.
pub async fn dispatch(State(state): State<AppState>, req: axum::extract::Request) -> Response {
    let user = req
        .extensions()
        .get::<User>()
        .cloned()
        .unwrap_or_else(crate::rbac::unsecured);
    let mut segments = req.uri().path().trim_start_matches('/').split('/');
    if let (Some("apis"), Some(group), Some(version)) =
        (segments.next(), segments.next(), segments.next())
        && let Some(apiservice) = aggregation::service_for(&state, group, version)
    {
        return match aggregation::proxy(&state, &apiservice, req, &user).await {
            Ok(r) => r,
            Err(e) => e.into_response(),
        };
    }
    let (parts, body) = req.into_parts();
    match serve(&state, parts.method, &parts.uri, &parts.headers, body, user).await {
        Ok(r) => r,
        Err(e) => e.into_response(),
    }
}

async fn serve(
    state: &AppState,
    method: Method,
    uri: &Uri,
    headers: &HeaderMap,
    body: Body,
    user: User,
) -> Result<Response, ApiError> {
    let target = match Request::parse(uri.path())? {
        Request::Target(t) => t,
        discovery_request => {
            if method != Method::GET {
                return Err(ApiError::method_not_allowed());
            }
            return discovery::serve(state, discovery_request, headers).await;
        }
    };
    let params: Params = Query::<Params>::try_from_uri(uri)
        .map(|q| q.0)
        .map_err(|e| ApiError::bad_request(format!("invalid query: {e}")))?;
    let r = state
        .registry
        .find(&target.group, &target.version, &target.plural)
        .ok_or_else(|| ApiError::not_found_path(uri.path()))?
        .clone();
    if (target.namespace.is_some() && !r.namespaced)
        || (r.namespaced && target.namespace.is_none() && target.name.is_some())
        || (r.namespaced && target.namespace.is_none() && method != Method::GET)
    {
        return Err(ApiError::not_found_path(uri.path()));
    }
    let bytes = body::read(body).await?;
    let req = Req {
        state,
        r: &r,
        t: &target,
        params: &params,
        headers,
        body: &bytes,
        user: Arc::new(user),
    };
    match (
        &method,
        target.name.is_some(),
        target.subresource.as_deref(),
    ) {
        (&Method::GET, false, None) => req.list().await,
        (&Method::POST, false, None) => req.create().await,
        (&Method::DELETE, false, None) => req.delete_collection().await,
        (&Method::GET, true, None) => req.get().await,
        (&Method::PUT, true, None) => req.replace(Part::Main).await,
        (&Method::PATCH, true, None) => req.patch(Part::Main).await,
        (&Method::DELETE, true, None) => req.delete().await,
        (&Method::GET, true, Some("status")) if r.status_subresource => req.get().await,
        (&Method::PUT, true, Some("status")) if r.status_subresource => {
            req.replace(Part::Status).await
        }
        (&Method::PATCH, true, Some("status")) if r.status_subresource => {
            req.patch(Part::Status).await
        }
        (&Method::GET, true, Some("log")) if r.builtin && r.plural == "pods" => {
            let (pod, _) = ops::get(state, &r, &target.version, &req.key()).await?;
            nodes::pod_log(state, &pod, &params).await
        }
        (&Method::POST, true, Some("binding")) if r.builtin && r.plural == "pods" => {
            let binding = body::decode(headers, &bytes)?;
            let done =
                nodes::bind(state, &r, &target.version, &req.key(), &binding, req.how()).await?;
            Ok((StatusCode::CREATED, Json(done)).into_response())
        }
        (&Method::POST, true, Some("eviction")) if r.builtin && r.plural == "pods" => {
            let eviction = body::decode(headers, &bytes)?;
            let done = crate::eviction::evict(
                state,
                &r,
                &target.version,
                &req.key(),
                &eviction,
                req.user.clone(),
                &params,
            )
            .await?;
            Ok((StatusCode::CREATED, Json(done)).into_response())
        }
        (&Method::GET | &Method::PUT | &Method::PATCH, true, Some("scale"))
            if r.scale.is_some() =>
        {
            req.scale(&method).await
        }
        (_, true, Some(_))
            if !matches!(
                target.subresource.as_deref(),
                Some("status" | "scale" | "log" | "binding" | "eviction")
            ) =>
        {
            Err(ApiError::not_found_path(uri.path()))
        }
        _ => Err(ApiError::method_not_allowed()),
    }
}

/// One resource request, parsed.
struct Req<'a> {
    state: &'a AppState,
    r: &'a Resource,
    t: &'a Target,
    params: &'a Params,
    headers: &'a HeaderMap,
    body: &'a [u8],
    user: Arc<User>,
}

impl Req<'_> {
    fn ns(&self) -> Option<&str> {
        self.t.namespace.as_deref()
    }

    fn name(&self) -> &str {
        self.t.name.as_deref().unwrap_or_default()
    }

    fn key(&self) -> String {
        self.r.key(self.ns(), Some(self.name()))
    }

    fn how(&self) -> ops::Write {
        ops::Write {
            dry_run: self.params.get("dryRun").is_some_and(|d| d == "All"),
            strict: self
                .params
                .get("fieldValidation")
                .is_some_and(|v| v == "Strict"),
            user: Some(self.user.clone()),
        }
    }

    async fn create(&self) -> Result<Response, ApiError> {
        let body = body::decode(self.headers, self.body)?;
        let obj = ops::create(
            self.state,
            self.r,
            &self.t.version,
            self.ns(),
            body,
            self.how(),
        )
        .await?;
        Ok((StatusCode::CREATED, Json(obj)).into_response())
    }

    /// One object; a one-row Table when the client asked for tables.
    async fn get(&self) -> Result<Response, ApiError> {
        let (obj, _) = ops::get(self.state, self.r, &self.t.version, &self.key()).await?;
        if !table::wanted(accept(self.headers)) {
            return Ok(Json(obj).into_response());
        }
        let metadata = json!({"resourceVersion": obj["metadata"]["resourceVersion"]});
        let include = self.params.get("includeObject").map(String::as_str);
        Ok(Json(table::build(self.r, &[obj], metadata, include, now())).into_response())
    }

    async fn replace(&self, part: Part) -> Result<Response, ApiError> {
        let body = body::decode(self.headers, self.body)?;
        let obj = ops::update(
            self.state,
            self.r,
            &self.t.version,
            &self.key(),
            part,
            self.how(),
            |_| Ok(body.clone()),
        )
        .await?;
        Ok(Json(obj).into_response())
    }

    async fn patch(&self, part: Part) -> Result<Response, ApiError> {
        let kind =
            patch::Kind::from_content_type(body::content_type(self.headers), self.r.builtin)?;
        let p = patch::parse(kind, self.body)?;
        let key = self.key();
        let result = ops::update(
            self.state,
            self.r,
            &self.t.version,
            &key,
            part,
            self.how(),
            |current| patch::apply(kind, current, &p),
        )
        .await;
        match result {
            // Server-side apply creates what does not exist yet.
            Err(e) if e.code == 404 && kind == patch::Kind::Apply && part == Part::Main => {
                let obj = ops::create(
                    self.state,
                    self.r,
                    &self.t.version,
                    self.ns(),
                    p,
                    self.how(),
                )
                .await?;
                Ok((StatusCode::CREATED, Json(obj)).into_response())
            }
            other => Ok(Json(other?).into_response()),
        }
    }

    async fn delete(&self) -> Result<Response, ApiError> {
        let opts = self.delete_options()?;
        let obj = ops::delete(self.state, self.r, &self.t.version, &self.key(), &opts).await?;
        Ok(Json(obj).into_response())
    }

    fn delete_options(&self) -> Result<DeleteOptions, ApiError> {
        let body = if self.body.is_empty() {
            Value::Null
        } else {
            body::decode(self.headers, self.body)?
        };
        let mut opts = DeleteOptions::parse(&body, self.params)?;
        opts.user = Some(self.user.clone());
        Ok(opts)
    }

    /// Deletes every selected object of the collection; answers with the list of them.
    async fn delete_collection(&self) -> Result<Response, ApiError> {
        let opts = self.delete_options()?;
        let selector = self.selector()?;
        let page = self.state.store.list(&ListRequest {
            prefix: self.r.key(self.ns(), None),
            ..Default::default()
        })?;
        let mut items = Vec::new();
        for kv in &page.items {
            let obj = objects::outgoing(self.r, &self.t.version, kv)?;
            if !selector.matches(&obj) {
                continue;
            }
            match ops::delete(self.state, self.r, &self.t.version, &kv.key, &opts).await {
                Ok(obj) => items.push(obj),
                Err(e) if e.code == 404 => {}
                Err(e) => return Err(e),
            }
        }
        Ok(Json(json!({
            "apiVersion": self.r.api_version(&self.t.version),
            "kind": format!("{}List", self.r.kind),
            "metadata": {"resourceVersion": page.rev.to_string()},
            "items": items,
        }))
        .into_response())
    }

    /// `autoscaling/v1` Scale read from, and written to, the paths the CRD names.
    async fn scale(&self, method: &Method) -> Result<Response, ApiError> {
        let Some(paths) = self.r.scale.clone() else {
            return Err(ApiError::method_not_allowed());
        };
        let as_scale = |obj: &Value| {
            let replicas =
                |path: &str| table::eval(obj, path).and_then(|v| v.as_i64()).unwrap_or(0);
            let mut status = json!({"replicas": replicas(&paths.status_replicas)});
            if let Some(sel) = paths
                .label_selector
                .as_deref()
                .and_then(|p| table::eval(obj, p))
            {
                status["selector"] = sel;
            }
            json!({
                "kind": "Scale",
                "apiVersion": "autoscaling/v1",
                "metadata": {
                    "name": obj["metadata"]["name"], "namespace": obj["metadata"]["namespace"],
                    "uid": obj["metadata"]["uid"], "resourceVersion": obj["metadata"]["resourceVersion"],
                    "creationTimestamp": obj["metadata"]["creationTimestamp"],
                },
                "spec": {"replicas": replicas(&paths.spec_replicas)},
                "status": status,
            })
        };
        let key = self.key();
        if method == Method::GET {
            let (obj, _) = ops::get(self.state, self.r, &self.t.version, &key).await?;
            return Ok(Json(as_scale(&obj)).into_response());
        }
        let body = if method == Method::PUT {
            body::decode(self.headers, self.body)?
        } else {
            let kind = patch::Kind::from_content_type(body::content_type(self.headers), true)?;
            let p = patch::parse(kind, self.body)?;
            let (obj, _) = ops::get(self.state, self.r, &self.t.version, &key).await?;
            patch::apply(kind, as_scale(&obj), &p)?
        };
        let replicas = body["spec"]["replicas"].as_i64().ok_or_else(|| {
            ApiError::unprocessable(
                "Scale",
                self.name(),
                "spec.replicas",
                "Required value: an integer",
            )
        })?;
        if replicas < 0 {
            return Err(ApiError::unprocessable(
                "Scale",
                self.name(),
                "spec.replicas",
                "must be greater than or equal to 0",
            ));
        }
        let rv = body["metadata"]["resourceVersion"].clone();
        let spec_path: Vec<String> = paths
            .spec_replicas
            .trim_start_matches('.')
            .split('.')
            .map(str::to_owned)
            .collect();
        let obj = ops::update(
            self.state,
            self.r,
            &self.t.version,
            &key,
            Part::Main,
            self.how(),
            |mut current| {
                let mut at = &mut current;
                for p in &spec_path {
                    at = &mut at[p.as_str()];
                }
                *at = json!(replicas);
                if rv.is_string() {
                    current["metadata"]["resourceVersion"] = rv.clone();
                }
                Ok(current)
            },
        )
        .await?;
        Ok(Json(as_scale(&obj)).into_response())
    }

    fn selector(&self) -> Result<Selector, ApiError> {
        Selector::parse(
            self.r,
            self.params.get("labelSelector").map(String::as_str),
            self.params.get("fieldSelector").map(String::as_str),
        )
    }

    async fn list(&self) -> Result<Response, ApiError> {
        list_or_watch(
            self.state,
            self.r,
            &self.t.version,
            self.ns(),
            self.params,
            self.headers,
        )
        .await
    }
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
    r: &Resource,
    version: &str,
    ns: Option<&str>,
    params: &HashMap<String, String>,
    headers: &HeaderMap,
) -> Result<Response, ApiError> {
    let r = r.clone();
    let selector = Selector::parse(
        &r,
        params.get("labelSelector").map(String::as_str),
        params.get("fieldSelector").map(String::as_str),
    )?;
    let prefix = r.key(ns, None);
    let rv = params.get("resourceVersion").filter(|v| !v.is_empty());
    if params.get("watch").is_some_and(|w| w == "true" || w == "1") {
        let enc = Encoder {
            r,
            version: version.to_owned(),
            table: table::wanted(accept(headers)),
            include: params.get("includeObject").cloned(),
        };
        return watch(state, enc, prefix, rv.cloned(), selector, params).await;
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
    let items = convert::to_version(state, &r, version, items).await?;
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

/// How a watch writes its events: the object itself, or a one-row Table when the client
/// asked for tables (as `kubectl get -w` does).
#[derive(Debug, Clone)]
struct Encoder {
    r: Resource,
    version: String,
    table: bool,
    include: Option<String>,
}

impl Encoder {
    fn line(&self, kind: &str, object: Value) -> Bytes {
        let object = if self.table && kind != "ERROR" && kind != "BOOKMARK" {
            let metadata = json!({"resourceVersion": object["metadata"]["resourceVersion"]});
            table::build(&self.r, &[object], metadata, self.include.as_deref(), now())
        } else {
            object
        };
        event_line(kind, object)
    }

    fn bookmark(&self, rev: Rev, initial_end: bool) -> Bytes {
        let mut metadata = json!({"resourceVersion": rev.to_string()});
        if initial_end {
            metadata["annotations"] = json!({"k8s.io/initial-events-end": "true"});
        }
        event_line(
            "BOOKMARK",
            json!({"kind": self.r.kind, "apiVersion": self.r.api_version(&self.version), "metadata": metadata}),
        )
    }

    /// What a watcher with a selector sees of one change: an object moving into the
    /// selection is ADDED, one moving out is DELETED, as the real server reports them.
    async fn event(
        &self,
        state: &AppState,
        selector: &Selector,
        ev: &store::Event,
    ) -> Result<Option<Bytes>, ApiError> {
        let cur = objects::outgoing(&self.r, &self.version, &ev.kv)?;
        let now = selector.matches(&cur);
        let before = match &ev.prev {
            Some(prev) if !selector.is_empty() => {
                selector.matches(&objects::outgoing(&self.r, &self.version, prev)?)
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
        let cur = convert::one(state, &self.r, &self.version, cur).await?;
        Ok(Some(self.line(kind, cur)))
    }
}

fn event_line(kind: &str, object: Value) -> Bytes {
    let mut line = serde_json::to_vec(&json!({"type": kind, "object": object})).unwrap_or_default();
    line.push(b'\n');
    Bytes::from(line)
}

/// How often a watch that allows bookmarks gets one.
const BOOKMARK_EVERY: Duration = Duration::from_secs(30);
/// The longest watch a client may ask for with `timeoutSeconds`.
const MAX_WATCH_SECONDS: u64 = 3600;

async fn watch(
    state: &AppState,
    enc: Encoder,
    prefix: String,
    rv: Option<String>,
    selector: Selector,
    params: &HashMap<String, String>,
) -> Result<Response, ApiError> {
    // A client's timeout is honoured up to an hour (a larger one would overflow the
    // deadline); without one a watch lasts half an hour, as kube-apiserver's default.
    let timeout = params
        .get("timeoutSeconds")
        .and_then(|t| t.parse::<u64>().ok())
        .map_or(Duration::from_secs(1800), |s| {
            Duration::from_secs(s.min(MAX_WATCH_SECONDS))
        });
    let flag = |name: &str| params.get(name).is_some_and(|v| v == "true" || v == "1");
    let bookmarks = flag("allowWatchBookmarks");
    let send_initial = params.get("sendInitialEvents").map(|v| v == "true");

    // No revision (or "0"), or sendInitialEvents: start with the current objects as ADDED.
    let (initial, from) = match (rv.as_deref(), send_initial) {
        (_, Some(true)) | (None | Some("0"), None) => {
            let page = state.store.list(&ListRequest {
                prefix: prefix.clone(),
                ..Default::default()
            })?;
            let mut objects = Vec::new();
            for kv in &page.items {
                let obj = objects::outgoing(&enc.r, &enc.version, kv)?;
                if selector.matches(&obj) {
                    objects.push(obj);
                }
            }
            let objects = convert::to_version(state, &enc.r, &enc.version, objects).await?;
            let mut lines: Vec<Bytes> = objects.into_iter().map(|o| enc.line("ADDED", o)).collect();
            if send_initial == Some(true) {
                lines.push(enc.bookmark(page.rev, true));
            }
            (lines, page.rev)
        }
        (None | Some("0"), Some(false)) => (Vec::new(), state.store.revision()),
        (Some(v), _) => (
            Vec::new(),
            v.parse::<Rev>()
                .map_err(|_| ApiError::bad_request(format!("invalid resourceVersion {v:?}")))?,
        ),
    };
    let body = match state.store.watch(&prefix, from) {
        Ok(w) => {
            let deadline = tokio::time::Instant::now() + timeout;
            let mut tick = tokio::time::interval_at(
                tokio::time::Instant::now() + BOOKMARK_EVERY,
                BOOKMARK_EVERY,
            );
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            let state = state.clone();
            let live = futures_util::stream::unfold(
                (w, enc, selector, from, tick),
                move |(mut w, enc, selector, mut last, mut tick)| {
                    let state = state.clone();
                    async move {
                        loop {
                            let next = tokio::select! {
                                next = tokio::time::timeout_at(deadline, w.next()) => next.ok()??,
                                _ = tick.tick(), if bookmarks => {
                                    let line = enc.bookmark(last, false);
                                    return Some((Ok::<_, Infallible>(line), (w, enc, selector, last, tick)));
                                }
                            };
                            let line = match next {
                                Ok(ev) => {
                                    last = ev.rev();
                                    match enc.event(&state, &selector, &ev).await {
                                        Ok(Some(line)) => line,
                                        Ok(None) => continue,
                                        Err(e) => event_line("ERROR", e.status()),
                                    }
                                }
                                Err(e) => event_line("ERROR", ApiError::from(e).status()),
                            };
                            return Some((
                                Ok::<_, Infallible>(line),
                                (w, enc, selector, last, tick),
                            ));
                        }
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

/// The kind an `authorization.k8s.io/v1` plural names, if it is a review.
fn review_kind(plural: &str, namespaced: bool) -> Option<&'static str> {
    match (plural, namespaced) {
        ("subjectaccessreviews", false) => Some("SubjectAccessReview"),
        ("selfsubjectaccessreviews", false) => Some("SelfSubjectAccessReview"),
        ("localsubjectaccessreviews", true) => Some("LocalSubjectAccessReview"),
        _ => None,
    }
}

async fn answer_review(
    state: &AppState,
    user: Option<User>,
    (plural, namespace): (&str, Option<&str>),
    headers: &HeaderMap,
    body: axum::body::Body,
) -> Result<Response, ApiError> {
    let kind = review_kind(plural, namespace.is_some()).ok_or_else(|| {
        ApiError::not_found_path(&format!("/apis/authorization.k8s.io/v1/{plural}"))
    })?;
    // Bounded like every other body.
    let body = body::read(body).await?;
    let body = body::decode(headers, &body)?;
    if body["kind"].as_str().is_some_and(|k| k != kind) {
        return Err(ApiError::bad_request(format!(
            "expected a {kind}, got a {}",
            body["kind"].as_str().unwrap_or_default()
        )));
    }
    let user = user.unwrap_or_else(crate::rbac::unsecured);
    let mut answer = crate::rbac::review(state, &user, kind, namespace, body)?;
    answer["apiVersion"] = json!("authorization.k8s.io/v1");
    answer["kind"] = json!(kind);
    Ok((StatusCode::CREATED, Json(answer)).into_response())
}

/// POST `/apis/authorization.k8s.io/v1/{subjectaccessreviews,selfsubjectaccessreviews}`.
pub async fn access_review(
    State(state): State<AppState>,
    axum::extract::Path(plural): axum::extract::Path<String>,
    user: Option<axum::Extension<User>>,
    headers: HeaderMap,
    body: axum::body::Body,
) -> Response {
    answer_review(&state, user.map(|u| u.0), (&plural, None), &headers, body)
        .await
        .unwrap_or_else(IntoResponse::into_response)
}

/// POST `/apis/authorization.k8s.io/v1/namespaces/{ns}/localsubjectaccessreviews`.
pub async fn local_access_review(
    State(state): State<AppState>,
    axum::extract::Path((ns, plural)): axum::extract::Path<(String, String)>,
    user: Option<axum::Extension<User>>,
    headers: HeaderMap,
    body: axum::body::Body,
) -> Response {
    answer_review(
        &state,
        user.map(|u| u.0),
        (&plural, Some(&ns)),
        &headers,
        body,
    )
    .await
    .unwrap_or_else(IntoResponse::into_response)
}
