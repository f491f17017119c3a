//! Pods from creation to their end: bound, Running and Ready, then Succeeded or Failed
//! with the exit code; or Pending, with the reason.

use kube::api::{Patch, PatchParams};
use serde_json::{Value, json};

use crate::harness::{Cluster, NODE};

fn container(pod: &Value) -> &Value {
    &pod["status"]["containerStatuses"][0]
}

fn condition<'a>(pod: &'a Value, kind: &str) -> &'a Value {
    pod["status"]["conditions"]
        .as_array()
        .and_then(|cs| cs.iter().find(|c| c["type"] == kind))
        .unwrap_or(&Value::Null)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pod_runs_and_ends_with_its_exit_code() {
    let c = Cluster::start().await;
    let script = "echo $GREETING $MY_NS $POD_NAME $KUBEVIRT_RS_SCRATCH; \
                  while [ ! -e $KUBEVIRT_RS_SCRATCH/go ]; do sleep 0.05; done";
    let spec = json!({"containers": [{"name": "main", "image": crate::harness::SH,
    "command": ["sh", "-c", script], "env": [
        {"name": "GREETING", "value": "hello"},
        {"name": "MY_NS", "valueFrom": {"fieldRef": {"fieldPath": "metadata.namespace"}}},
    ]}]});
    c.pod("sleeper", "", spec).await;
    c.pod("ok", "exit 0", json!({})).await;
    c.pod("bad", "echo failing >&2; exit 3", json!({})).await;

    let pod = c.wait_phase("sleeper", "Running").await;
    assert_eq!(pod["spec"]["nodeName"], NODE);
    assert_eq!(pod["status"]["podIP"], "127.0.0.1");
    assert_eq!(pod["status"]["hostIP"], "127.0.0.1");
    assert!(pod["status"]["startTime"].is_string());
    for kind in ["PodScheduled", "Initialized", "ContainersReady", "Ready"] {
        assert_eq!(condition(&pod, kind)["status"], "True", "{kind}: {pod:#}");
    }
    let main = container(&pod);
    assert_eq!(
        (&main["ready"], &main["restartCount"]),
        (&json!(true), &json!(0))
    );
    assert_eq!(main["image"], crate::harness::SH);
    assert!(main["state"]["running"]["startedAt"].is_string(), "{pod:#}");
    let log = std::fs::read_to_string(
        c.state
            .path()
            .join(pod["metadata"]["uid"].as_str().unwrap())
            .join("main.log"),
    )
    .unwrap();
    assert_eq!(
        log,
        format!("hello default sleeper {}\n", c.scratch.path().display())
    );

    let ok = c.wait_phase("ok", "Succeeded").await;
    let done = &container(&ok)["state"]["terminated"];
    assert_eq!(
        (&done["exitCode"], &done["reason"]),
        (&json!(0), &json!("Completed"))
    );
    assert_eq!(condition(&ok, "Ready")["status"], "False");
    let bad = c.wait_phase("bad", "Failed").await;
    let done = &container(&bad)["state"]["terminated"];
    assert_eq!(
        (&done["exitCode"], &done["reason"]),
        (&json!(3), &json!("Error")),
        "{bad:#}"
    );
    assert!(done["finishedAt"].is_string());

    std::fs::write(c.scratch("go"), "").unwrap();
    let pod = c.wait_phase("sleeper", "Succeeded").await;
    assert_eq!(container(&pod)["state"]["terminated"]["exitCode"], 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_image_the_node_does_not_map_leaves_the_pod_pending() {
    let c = Cluster::start().await;
    c.pod(
        "elsewhere",
        "",
        json!({"containers": [{"name": "main", "image": "quay.io/x/y:2"}]}),
    )
    .await;
    let pod = c
        .wait_pod("elsewhere", "waiting", |p| {
            !container(p)["state"]["waiting"].is_null()
        })
        .await;
    assert_eq!(pod["status"]["phase"], "Pending");
    let waiting = &container(&pod)["state"]["waiting"];
    assert_eq!(waiting["reason"], "ErrImageNeverPull", "{pod:#}");
    assert!(
        waiting["message"]
            .as_str()
            .unwrap()
            .contains("\"quay.io/x/y:2\""),
        "{pod:#}"
    );
    // Deleted at once: nothing runs.
    c.pods()
        .delete("elsewhere", &Default::default())
        .await
        .unwrap();
    c.wait_gone("elsewhere").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pod_waits_for_a_node_that_matches_its_selector() {
    let c = Cluster::start().await;
    let selector = json!({"nodeSelector": {"kubevirt.io/schedulable": "true"}});
    c.pod("picky", "echo ran", selector).await;
    let pod = c
        .wait_pod("picky", "unschedulable", |p| {
            condition(p, "PodScheduled")["reason"] == "Unschedulable"
        })
        .await;
    let scheduled = condition(&pod, "PodScheduled");
    assert_eq!(scheduled["status"], "False");
    assert_eq!(
        scheduled["message"],
        "0/1 nodes are available: 1 node(s) didn't match Pod's node affinity/selector."
    );
    assert_eq!(pod["status"]["phase"], "Pending");
    assert!(pod["spec"]["nodeName"].is_null());

    // The node agent labels the node: the pod is bound and runs.
    let labels = json!({"metadata": {"labels": {"kubevirt.io/schedulable": "true"}}});
    c.nodes()
        .patch(NODE, &PatchParams::default(), &Patch::Merge(labels))
        .await
        .unwrap();
    let pod = c.wait_phase("picky", "Succeeded").await;
    assert_eq!(pod["spec"]["nodeName"], NODE);
    assert_eq!(condition(&pod, "PodScheduled")["status"], "True");
}
