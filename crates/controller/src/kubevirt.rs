//! The KubeVirt CR: created as `<namespace>/kubevirt` when this instance starts leading and
//! the cluster has none, and kept reporting the installation as deployed
//! ([`reconcile::kubevirt`]). Its `spec.configuration.migrations` is read by the migration
//! controller.

use std::sync::Arc;

use api::kubevirt::KubeVirt;
use futures_util::StreamExt;
use kube::api::{Api, Patch, PatchParams, PostParams};
use kube::runtime::controller::{Action, Controller};
use kube::runtime::reflector::Store;
use serde_json::json;
use tracing::{info, warn};

use crate::context::Context;
use crate::error::Error;
use crate::informer::Trigger;

/// The name upstream's install uses, and the one created here.
pub const NAME: &str = "kubevirt";

/// Creates `<namespace>/kubevirt` unless the (synced) cache holds a KubeVirt CR; then
/// reports on every one until the future is dropped.
pub(crate) async fn run(
    triggers: Vec<Trigger<KubeVirt>>,
    store: Store<KubeVirt>,
    ctx: Arc<Context>,
) {
    let Some(trigger) = triggers.into_iter().next() else {
        return;
    };
    if store.wait_until_ready().await.is_err() {
        return;
    }
    if store.is_empty() {
        let mut kv = KubeVirt::new(NAME, Default::default());
        kv.metadata.namespace = Some(ctx.namespace.clone());
        let api: Api<KubeVirt> = Api::namespaced(ctx.client.clone(), &ctx.namespace);
        match api.create(&PostParams::default(), &kv).await {
            Ok(_) => info!(namespace = %ctx.namespace, name = NAME, "created the KubeVirt CR"),
            Err(e) => warn!(error = %e, "could not create the KubeVirt CR"),
        }
    }
    Controller::for_stream(trigger, store)
        .run(reconcile, error_policy, ctx)
        .for_each(|r| async move {
            if let Err(e) = r {
                warn!(error = %e, "KubeVirt CR");
            }
        })
        .await;
}

async fn reconcile(kv: Arc<KubeVirt>, ctx: Arc<Context>) -> Result<Action, Error> {
    let name = kv.metadata.name.clone().unwrap_or_default();
    let namespace = kv.metadata.namespace.clone().unwrap_or_default();
    let registry = ctx
        .launcher
        .image
        .rsplit_once('/')
        .map_or("", |(registry, _)| registry);
    let health = health(&ctx).await;
    let status = reconcile::kubevirt::status(
        &kv,
        registry,
        env!("CARGO_PKG_VERSION"),
        &health,
        (ctx.now)(),
    );
    if kv.status.as_ref() != Some(&status) {
        let api: Api<KubeVirt> = Api::namespaced(ctx.client.clone(), &namespace);
        api.patch_status(
            &name,
            &PatchParams::default(),
            &Patch::Merge(json!({"status": status})),
        )
        .await
        .map_err(Error::api("patch status", "KubeVirt", &name))?;
    }
    // Looked at again after a while: health changes without the CR changing.
    Ok(Action::requeue(HEALTH_EVERY))
}

/// How often the components' health is looked at.
const HEALTH_EVERY: std::time::Duration = std::time::Duration::from_secs(10);
/// A handler whose heartbeat (every 30 s) is older than this is taken for gone.
const HEARTBEAT_STALE: std::time::Duration = std::time::Duration::from_secs(90);

/// virt-api through the API server (the path a user's `virtctl` takes), and the
/// handlers' heartbeats on their nodes.
async fn health(ctx: &Context) -> reconcile::kubevirt::Health {
    use k8s_openapi::api::core::v1::Node;
    let request = http::Request::get("/apis/subresources.kubevirt.io/v1/version")
        .body(Vec::new())
        .map_err(|e| e.to_string());
    let virt_api = match request {
        Ok(r) => ctx
            .client
            .request_text(r)
            .await
            .map(|_| ())
            .map_err(|e| e.to_string()),
        Err(e) => Err(e),
    };
    let nodes: Api<Node> = Api::all(ctx.client.clone());
    let labelled = nodes
        .list(&kube::api::ListParams::default().labels("kubevirt.io/schedulable=true"))
        .await
        .map(|l| l.items)
        .unwrap_or_default();
    let now = (ctx.now)();
    let fresh_handlers = labelled
        .iter()
        .filter(|n| {
            n.metadata
                .annotations
                .as_ref()
                .and_then(|a| a.get("kubevirt.io/heartbeat"))
                .and_then(|t| t.parse::<k8s_openapi::jiff::Timestamp>().ok())
                .and_then(|t| now.duration_since(t).try_into().ok())
                .is_some_and(|age: std::time::Duration| age < HEARTBEAT_STALE)
        })
        .count();
    reconcile::kubevirt::Health {
        virt_api,
        nodes: labelled.len(),
        fresh_handlers,
    }
}

fn error_policy(_: Arc<KubeVirt>, _: &Error, _: Arc<Context>) -> Action {
    Action::requeue(std::time::Duration::from_secs(5))
}
