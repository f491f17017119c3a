//! The Node a user sees: Ready, with its addresses and log port, labels set by others
//! kept.

use k8s_openapi::api::coordination::v1::Lease;
use kube::api::{Api, PostParams};
use serde_json::json;

use crate::harness::{Cluster, NODE};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_node_is_ready_with_its_addresses_and_keeps_others_labels() {
    let mut c = Cluster::without_runner().await;
    // The node agent's labels and annotations are there before the runner registers.
    let nodes = c.nodes();
    let node = serde_json::from_value(json!({"metadata": {"name": NODE,
        "labels": {"kubevirt.io/schedulable": "true"},
        "annotations": {"kubevirt.io/handler-endpoint": "https://127.0.0.1:1"}}}))
    .unwrap();
    nodes.create(&PostParams::default(), &node).await.unwrap();
    c.start_runner();

    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    let node = loop {
        let node = serde_json::to_value(nodes.get(NODE).await.unwrap()).unwrap();
        if node["status"]["daemonEndpoints"]["kubeletEndpoint"]["Port"] == c.log_port {
            break node;
        }
        assert!(std::time::Instant::now() < deadline, "{node:#}");
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    };
    let status = &node["status"];
    let ready = status["conditions"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["type"] == "Ready")
        .unwrap();
    assert_eq!(ready["status"], "True", "{node:#}");
    assert!(ready["lastHeartbeatTime"].is_string());
    assert_eq!(
        status["addresses"],
        json!([{"type": "InternalIP", "address": "127.0.0.1"}, {"type": "Hostname", "address": NODE}])
    );
    assert_eq!(status["capacity"]["pods"], "110");
    assert!(
        status["allocatable"]["memory"]
            .as_str()
            .unwrap()
            .ends_with("Ki")
    );
    assert_eq!(status["nodeInfo"]["operatingSystem"], "linux");
    assert!(
        status["nodeInfo"]["containerRuntimeVersion"]
            .as_str()
            .unwrap()
            .starts_with("kubevirt-rs://")
    );
    let labels = &node["metadata"]["labels"];
    assert_eq!(labels["kubevirt.io/schedulable"], "true", "{node:#}");
    assert_eq!(labels["kubernetes.io/hostname"], NODE);
    assert_eq!(
        node["metadata"]["annotations"]["kubevirt.io/handler-endpoint"],
        "https://127.0.0.1:1"
    );
    let leases: Api<Lease> = Api::namespaced(c.client.clone(), "kube-node-lease");
    // The Lease comes with the first heartbeat, just after the Node.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    let lease = loop {
        match leases.get_opt(NODE).await.unwrap() {
            Some(lease) => break lease,
            None => {
                assert!(std::time::Instant::now() < deadline, "no node Lease");
                tokio::time::sleep(std::time::Duration::from_millis(50)).await;
            }
        }
    };
    assert_eq!(lease.spec.unwrap().holder_identity.as_deref(), Some(NODE));
}
