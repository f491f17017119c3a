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
    let status = reconcile::kubevirt::status(&kv, registry, env!("CARGO_PKG_VERSION"), (ctx.now)());
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
    Ok(Action::await_change())
}

fn error_policy(_: Arc<KubeVirt>, _: &Error, _: Arc<Context>) -> Action {
    Action::requeue(std::time::Duration::from_secs(5))
}
