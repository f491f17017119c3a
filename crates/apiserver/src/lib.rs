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

mod discovery;
mod error;
mod handlers;
mod objects;
mod registry;
mod selectors;
mod table;

use std::sync::Arc;

use axum::Router;
use axum::routing::get;

pub use error::ApiError;
pub use registry::{Registry, Resource};

/// What every request handler shares.
#[derive(Clone)]
pub struct AppState {
    pub store: Arc<dyn store::Store>,
    pub registry: Arc<Registry>,
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
        .route("/api", get(discovery::core_versions))
        .route("/api/v1", get(discovery::core_resources))
        .route("/apis", get(discovery::groups))
        .route("/apis/{group}/{version}", get(discovery::resources))
        .route(
            "/apis/{group}/{version}/{plural}",
            get(handlers::list).post(handlers::create),
        )
        .route(
            "/apis/{group}/{version}/{plural}/{name}",
            get(handlers::get)
                .put(handlers::replace)
                .delete(handlers::delete),
        )
        .route(
            "/apis/{group}/{version}/namespaces/{namespace}/{plural}",
            get(handlers::list).post(handlers::create),
        )
        .route(
            "/apis/{group}/{version}/namespaces/{namespace}/{plural}/{name}",
            get(handlers::get)
                .put(handlers::replace)
                .delete(handlers::delete),
        )
        .with_state(state)
}
