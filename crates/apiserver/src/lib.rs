//! A small, honest Kubernetes API server over the [`store`] revision log.
//!
//! Owns: discovery, CRUD, list and watch of the resources in its [`Registry`], with
//! Kubernetes' wire formats (`metav1.Status` errors, `resourceVersion`, `generation`,
//! list pagination with `continue`, newline-delimited watch events).
//!
//! Label selectors and the `metadata.name` / `metadata.namespace` field selectors apply to
//! lists and watches; in a watch, an object moving out of the selection is DELETED.
//!
//! Lists and gets answer with a `meta.k8s.io/v1` Table, built from the CRD's printer
//! columns, when the client asks for one (as `kubectl get` does).
//!
//! Does not own (yet): TLS and authentication, built-in kinds, OpenAPI, patches,
//! finalizers and garbage collection, admission, aggregation. Those arrive with
//! the rest of the embedded server.

mod admission;
mod aggregation;
mod body;
mod convert;
mod discovery;
mod error;
mod eviction;
mod gc;
mod handlers;
mod launchers;
mod nodes;
mod objects;
mod openapi;
mod ops;
mod patch;
mod protobuf;
pub mod rbac;
pub(crate) mod registry;
mod request;
mod schema;
mod selectors;
mod services;
mod table;

use std::sync::Arc;

use axum::Router;
use axum::routing::{any, get};
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;

pub use aggregation::ProxyIdentity;
pub use error::ApiError;
pub use registry::{Registry, Resource};

/// What every request handler shares.
#[derive(Clone)]
pub struct AppState {
    pub store: Arc<dyn store::Store>,
    pub registry: Arc<Registry>,
    /// The client certificate presented to aggregated API servers.
    pub proxy_identity: Option<Arc<ProxyIdentity>>,
    /// Who may do what: the RBAC policy, cached.
    pub authorizer: Arc<rbac::Authorizer>,
}

impl AppState {
    /// The server over `store`, serving the built-in and kubevirt resources. See
    /// [`AppState::start`] for a server whose namespaces and garbage collection work.
    pub fn new(store: Arc<dyn store::Store>) -> Self {
        Self {
            store,
            registry: Arc::new(Registry::kubevirt()),
            proxy_identity: None,
            authorizer: Arc::default(),
        }
    }

    /// [`AppState::new`], with the system namespaces created (if missing) and the garbage
    /// collector running on the current tokio runtime until the store closes.
    pub async fn start(store: Arc<dyn store::Store>) -> Result<Self, ApiError> {
        let state = Self {
            store,
            registry: Arc::new(Registry::new(&[])),
            proxy_identity: None,
            authorizer: Arc::default(),
        };
        state.bootstrap().await?;
        state.install_crds().await?;
        state.ensure_objects(rbac::bootstrap_policy()).await?;
        tokio::spawn(gc::run(state.clone()));
        tokio::spawn(rbac::follow(state.clone()));
        Ok(state)
    }

    /// Serves the CustomResourceDefinitions in the store (and only those) beside the
    /// built-in kinds.
    pub fn reload_crds(&self) {
        let Some(r) = self
            .registry
            .find("apiextensions.k8s.io", "v1", "customresourcedefinitions")
        else {
            return;
        };
        let page = match self.store.list(&store::ListRequest {
            prefix: r.key(None, None),
            ..Default::default()
        }) {
            Ok(p) => p,
            Err(e) => {
                tracing::warn!(error = %e, "could not read the CustomResourceDefinitions");
                return;
            }
        };
        let crds: Vec<CustomResourceDefinition> = page
            .items
            .iter()
            .filter_map(|kv| registry::read_crd(&kv.value).ok())
            .collect();
        self.registry.set_crds(&crds);
    }

    /// Stores the kubevirt CRDs compiled into the api crate, replacing older definitions.
    /// Each carries the manifests' fingerprint, so a restart with current CRDs reads
    /// nothing but the store.
    async fn install_crds(&self) -> Result<(), ApiError> {
        use serde_json::{Value, json};
        const FINGERPRINT: &str = "kubevirt-rs.io/manifests";
        let Some(r) = self
            .registry
            .find("apiextensions.k8s.io", "v1", "customresourcedefinitions")
        else {
            return Ok(());
        };
        let fingerprint = api::crd::fingerprint();
        let current = |name: &str| -> Result<Option<(store::KeyValue, Value)>, ApiError> {
            let Some(kv) = self.store.get(&r.key(None, Some(name)))? else {
                return Ok(None);
            };
            let value =
                serde_json::from_slice(&kv.value).map_err(|e| ApiError::internal(e.to_string()))?;
            Ok(Some((kv, value)))
        };
        // Only the annotations are read here; the rest of each CRD is skipped unparsed.
        #[derive(serde::Deserialize)]
        struct Annotated {
            metadata: k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta,
        }
        let mut up_to_date = true;
        for name in api::crd::NAMES {
            let stored = self.store.get(&r.key(None, Some(name)))?;
            up_to_date &= stored
                .and_then(|kv| serde_json::from_slice::<Annotated>(&kv.value).ok())
                .and_then(|a| a.metadata.annotations)
                .is_some_and(|a| a.get(FINGERPRINT) == Some(&fingerprint));
        }
        if !up_to_date {
            for mut body in api::crd::installed_json() {
                let name = body["metadata"]["name"]
                    .as_str()
                    .unwrap_or_default()
                    .to_owned();
                body["apiVersion"] = json!("apiextensions.k8s.io/v1");
                body["kind"] = json!("CustomResourceDefinition");
                body["metadata"]["annotations"][FINGERPRINT] = json!(fingerprint);
                let key = r.key(None, Some(&name));
                match current(&name)? {
                    None => {
                        let obj = objects::for_create(&r, "v1", None, body, false)?;
                        self.store.create(&key, objects::to_bytes(&obj)).await?;
                    }
                    Some((kv, mut stored)) => {
                        stored["spec"] = body["spec"].take();
                        stored["metadata"]["annotations"][FINGERPRINT] = json!(fingerprint);
                        self.store
                            .update(&key, objects::to_bytes(&stored), Some(kv.mod_rev))
                            .await?;
                    }
                }
            }
        }
        self.reload_crds();
        Ok(())
    }

    /// Creates each of `objects` (of built-in or installed kinds) that does not exist yet;
    /// existing ones are left as they are.
    pub async fn ensure_objects(&self, objects: Vec<serde_json::Value>) -> Result<(), ApiError> {
        for obj in objects {
            let api_version = obj["apiVersion"].as_str().unwrap_or_default();
            let (group, version) = api_version.rsplit_once('/').unwrap_or(("", api_version));
            let kind = obj["kind"].as_str().unwrap_or_default();
            let Some(r) = self.resource_of(group, kind) else {
                return Err(ApiError::bad_request(format!(
                    "no resource of kind {kind} in {api_version}"
                )));
            };
            let ns = obj["metadata"]["namespace"].as_str().map(str::to_owned);
            let version = version.to_owned();
            match ops::create(
                self,
                &r,
                &version,
                ns.as_deref(),
                obj,
                ops::Write::default(),
            )
            .await
            {
                Ok(_) => {}
                Err(e) if e.code == 409 => {}
                Err(e) => return Err(e),
            }
        }
        Ok(())
    }

    /// The resource serving `kind` in `group`.
    fn resource_of(&self, group: &str, kind: &str) -> Option<Arc<Resource>> {
        self.registry
            .resources()
            .iter()
            .find(|r| r.group == group && r.kind == kind)
            .cloned()
    }

    /// Deletes the cluster-scoped object `name` of `kind` in `group`, if it is there.
    pub async fn remove_object(&self, group: &str, kind: &str, name: &str) -> Result<(), ApiError> {
        let Some(r) = self.resource_of(group, kind) else {
            return Ok(());
        };
        let key = r.key(None, Some(name));
        match ops::delete(self, &r, "v1", &key, &ops::DeleteOptions::default()).await {
            Ok(_) => Ok(()),
            Err(e) if e.code == 404 => Ok(()),
            Err(e) => Err(e),
        }
    }

    /// Creates the namespaces every cluster has.
    async fn bootstrap(&self) -> Result<(), ApiError> {
        let namespaces = ["default", "kube-system", "kube-public", "kube-node-lease"]
            .map(|name| serde_json::json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": name}}));
        self.ensure_objects(namespaces.into()).await
    }
}

/// Who made a request, as authentication established it. The serving layer puts it in
/// the request's extensions; handlers pass it on to admission and aggregated APIs.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct User {
    pub name: String,
    pub groups: Vec<String>,
}

impl std::fmt::Debug for AppState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AppState")
            .field("resources", &self.registry.resources().len())
            .finish()
    }
}

/// The HTTP routes of the API server.
pub fn router(state: AppState) -> Router {
    Router::new()
        .route("/version", get(discovery::version))
        .route("/healthz", get(discovery::healthy))
        .route("/livez", get(discovery::healthy))
        .route("/readyz", get(discovery::healthy))
        .route("/openapi/v3", get(openapi::root))
        .route("/openapi/v3/{*rest}", get(openapi::group_version))
        .route("/api", any(handlers::dispatch))
        .route("/apis", any(handlers::dispatch))
        .route("/api/{*rest}", any(handlers::dispatch))
        .route("/apis/{*rest}", any(handlers::dispatch))
        .route(
            "/apis/authorization.k8s.io/v1/{plural}",
            axum::routing::post(handlers::access_review),
        )
        .route(
            "/apis/authorization.k8s.io/v1/namespaces/{ns}/{plural}",
            axum::routing::post(handlers::local_access_review),
        )
        .fallback(|uri: axum::http::Uri| async move { ApiError::not_found_path(uri.path()) })
        .layer(axum::middleware::from_fn_with_state(
            state.clone(),
            rbac::authorize,
        ))
        .layer(axum::extract::DefaultBodyLimit::disable())
        .with_state(state)
}
