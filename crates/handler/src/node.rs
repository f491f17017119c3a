//! The node's KubeVirt labels, the handler's endpoint and its heartbeat.

use std::collections::BTreeMap;
use std::time::Duration;

use k8s_openapi::api::core::v1::Node;
use k8s_openapi::jiff::Timestamp;
use kube::Api;
use kube::api::{Patch, PatchParams};
use serde_json::json;
use tracing::{info, warn};

/// Label: VMIs may be scheduled here.
pub const SCHEDULABLE: &str = "kubevirt.io/schedulable";
/// Label: guests on this node are emulated (`true`) or use KVM (`false`).
pub const SOFTWARE_EMULATION: &str = "kubevirt.io/software-emulation";
/// Annotation: where virt-api reaches this node's handler.
pub const ENDPOINT: &str = "kubevirt.io/handler-endpoint";
/// Annotation: the handler's last heartbeat (RFC 3339).
pub const HEARTBEAT: &str = "kubevirt.io/heartbeat";

const EVERY: Duration = Duration::from_secs(30);

/// What the handler says about its node.
#[derive(Debug, Clone)]
pub struct Labels {
    pub software_emulation: bool,
    pub endpoint: Option<String>,
}

/// The merge patch a heartbeat sends.
pub fn patch(labels: &Labels, now: Timestamp) -> serde_json::Value {
    let mut annotations = BTreeMap::from([(HEARTBEAT.to_owned(), now.to_string())]);
    if let Some(e) = &labels.endpoint {
        annotations.insert(ENDPOINT.to_owned(), e.clone());
    }
    json!({"metadata": {
        "labels": {SCHEDULABLE: "true", SOFTWARE_EMULATION: labels.software_emulation.to_string()},
        "annotations": annotations,
    }})
}

/// Labels the node now and every 30 s; until the node exists (its kubelet or pod runner
/// registers it), retries every 200 ms.
pub async fn heartbeat(client: kube::Client, node: String, labels: Labels) {
    let nodes: Api<Node> = Api::all(client);
    let mut announced = false;
    loop {
        let wait = match nodes
            .patch(
                &node,
                &PatchParams::default(),
                &Patch::Merge(patch(&labels, Timestamp::now())),
            )
            .await
        {
            Ok(_) => {
                if !announced {
                    info!(
                        node,
                        software_emulation = labels.software_emulation,
                        "node labelled schedulable"
                    );
                    announced = true;
                }
                EVERY
            }
            Err(kube::Error::Api(e)) if e.code == 404 => Duration::from_millis(200),
            Err(e) => {
                warn!(error = %e, "node heartbeat");
                Duration::from_secs(2)
            }
        };
        tokio::time::sleep(wait).await;
    }
}
