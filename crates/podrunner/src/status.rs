//! The pod status this node reports, built from what its containers do. Pure: the
//! worker ([`crate::pods`]) observes, these functions write the `status` it patches.

use k8s_openapi::api::core::v1::Pod;
use serde_json::{Value, json};

use crate::process::Exit;

/// What one container is doing, as this node sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Phase {
    Waiting { reason: String, message: String },
    Running { started_at: i64 },
    Terminated { started_at: i64, exit: Exit },
}

/// One container: its name, image and phase.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ContainerView {
    pub name: String,
    pub image: String,
    pub phase: Phase,
}

/// RFC 3339 in whole seconds, as Kubernetes writes `Time`.
pub fn rfc3339(secs: i64) -> String {
    k8s_openapi::jiff::Timestamp::from_second(secs)
        .map(|t| t.to_string())
        .unwrap_or_default()
}

/// The status of `pod` whose containers are `containers`, at `now`; timestamps the pod
/// already carries for an unchanged condition or start are kept.
pub fn pod_status(pod: &Pod, node_ip: &str, containers: &[ContainerView], now: i64) -> Value {
    let uid = pod.metadata.uid.as_deref().unwrap_or_default();
    let all_running = containers
        .iter()
        .all(|c| matches!(c.phase, Phase::Running { .. }));
    let terminated: Vec<&Exit> = containers
        .iter()
        .filter_map(|c| match &c.phase {
            Phase::Terminated { exit, .. } => Some(exit),
            _ => None,
        })
        .collect();
    let started = containers
        .iter()
        .any(|c| !matches!(c.phase, Phase::Waiting { .. }));
    let phase = if terminated.len() == containers.len() && !containers.is_empty() {
        if terminated.iter().all(|e| e.code == 0) {
            "Succeeded"
        } else {
            "Failed"
        }
    } else if started {
        "Running"
    } else {
        "Pending"
    };
    let unready: Vec<&str> = containers
        .iter()
        .filter(|c| !matches!(c.phase, Phase::Running { .. }))
        .map(|c| c.name.as_str())
        .collect();
    let ready = |kind: &str| {
        if all_running {
            json!({"type": kind, "status": "True"})
        } else {
            let reason = if terminated.len() == containers.len() {
                "PodCompleted"
            } else {
                "ContainersNotReady"
            };
            json!({"type": kind, "status": "False", "reason": reason,
                   "message": format!("containers not running: {}", unready.join(", "))})
        }
    };
    let conditions = vec![
        json!({"type": "Initialized", "status": "True"}),
        ready("Ready"),
        ready("ContainersReady"),
        json!({"type": "PodScheduled", "status": "True"}),
    ];
    let statuses: Vec<Value> = containers
        .iter()
        .map(|c| container_status(uid, c))
        .collect();
    let mut status = json!({
        "phase": phase,
        "conditions": stamped(pod, conditions, now),
        "hostIP": node_ip,
        "hostIPs": [{"ip": node_ip}],
        "startTime": existing(pod, "startTime").unwrap_or_else(|| json!(rfc3339(now))),
        "containerStatuses": statuses,
    });
    if started {
        status["podIP"] = json!(node_ip);
        status["podIPs"] = json!([{"ip": node_ip}]);
    }
    status
}

/// The status of a pod that cannot run here at all.
pub fn pod_failed(pod: &Pod, reason: &str, message: &str, now: i64) -> Value {
    json!({
        "phase": "Failed",
        "reason": reason,
        "message": message,
        "startTime": existing(pod, "startTime").unwrap_or_else(|| json!(rfc3339(now))),
    })
}

fn container_status(uid: &str, c: &ContainerView) -> Value {
    let id = format!("kubevirt-rs://{uid}/{}", c.name);
    let (state, ready, id) = match &c.phase {
        Phase::Waiting { reason, message } => (
            json!({"waiting": {"reason": reason, "message": message}}),
            false,
            None,
        ),
        Phase::Running { started_at } => (
            json!({"running": {"startedAt": rfc3339(*started_at)}}),
            true,
            Some(id),
        ),
        Phase::Terminated { started_at, exit } => {
            let reason = if exit.code == 0 { "Completed" } else { "Error" };
            let mut terminated = json!({"exitCode": exit.code, "reason": reason,
                "startedAt": rfc3339(*started_at), "finishedAt": rfc3339(exit.finished_at),
                "containerID": id});
            if !exit.recorded {
                terminated["message"] =
                    json!("the process was killed before it could record its exit status");
            }
            (json!({"terminated": terminated}), false, Some(id))
        }
    };
    let mut status = json!({"name": c.name, "image": c.image, "imageID": "", "ready": ready,
        "started": ready, "restartCount": 0, "state": state});
    if let Some(id) = id {
        status["containerID"] = json!(id);
    }
    status
}

fn existing(pod: &Pod, field: &str) -> Option<Value> {
    let status = serde_json::to_value(pod.status.as_ref()?).ok()?;
    status.get(field).filter(|v| !v.is_null()).cloned()
}

/// Each condition with its `lastTransitionTime`: the pod's own when the condition's
/// status did not change, else `now`.
fn stamped(pod: &Pod, conditions: Vec<Value>, now: i64) -> Vec<Value> {
    let old = pod
        .status
        .as_ref()
        .and_then(|s| s.conditions.clone())
        .unwrap_or_default();
    conditions
        .into_iter()
        .map(|mut c| {
            let since = old
                .iter()
                .find(|o| c["type"] == o.type_.as_str() && c["status"] == o.status.as_str())
                .and_then(|o| o.last_transition_time.as_ref())
                .map_or_else(|| rfc3339(now), |t| t.0.to_string());
            c["lastTransitionTime"] = json!(since);
            c
        })
        .collect()
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    fn view(name: &str, phase: Phase) -> ContainerView {
        ContainerView {
            name: name.to_owned(),
            image: "img".to_owned(),
            phase,
        }
    }

    fn pod() -> Pod {
        serde_json::from_value(json!({"metadata": {"name": "p", "uid": "u"}})).unwrap()
    }

    fn exit(code: i32) -> Exit {
        Exit {
            code,
            finished_at: 200,
            recorded: true,
        }
    }

    #[test]
    fn a_running_pod_is_ready_with_the_node_address() {
        let s = pod_status(
            &pod(),
            "10.0.0.1",
            &[view("c", Phase::Running { started_at: 100 })],
            150,
        );
        assert_eq!(s["phase"], "Running");
        assert_eq!(s["podIP"], "10.0.0.1");
        assert_eq!(s["conditions"][1]["type"], "Ready");
        assert_eq!(s["conditions"][1]["status"], "True");
        let c = &s["containerStatuses"][0];
        assert_eq!((&c["ready"], &c["restartCount"]), (&json!(true), &json!(0)));
        assert_eq!(c["state"]["running"]["startedAt"], "1970-01-01T00:01:40Z");
        assert_eq!(c["containerID"], "kubevirt-rs://u/c");
    }

    #[test]
    fn the_phase_follows_the_exit_codes() {
        let done = |code| Phase::Terminated {
            started_at: 100,
            exit: exit(code),
        };
        let s = pod_status(&pod(), "ip", &[view("a", done(0)), view("b", done(0))], 300);
        assert_eq!(s["phase"], "Succeeded");
        assert_eq!(s["conditions"][1]["reason"], "PodCompleted");
        let s = pod_status(&pod(), "ip", &[view("a", done(0)), view("b", done(2))], 300);
        assert_eq!(s["phase"], "Failed");
        let b = &s["containerStatuses"][1]["state"]["terminated"];
        assert_eq!((&b["exitCode"], &b["reason"]), (&json!(2), &json!("Error")));
        let s = pod_status(
            &pod(),
            "ip",
            &[
                view("a", done(0)),
                view("b", Phase::Running { started_at: 1 }),
            ],
            300,
        );
        assert_eq!(s["phase"], "Running");
        assert_eq!(s["conditions"][1]["status"], "False");
    }

    #[test]
    fn a_waiting_pod_is_pending_without_an_ip() {
        let waiting = Phase::Waiting {
            reason: "ErrImageNeverPull".to_owned(),
            message: "m".to_owned(),
        };
        let s = pod_status(&pod(), "ip", &[view("c", waiting)], 300);
        assert_eq!(s["phase"], "Pending");
        assert!(s.get("podIP").is_none());
        let w = &s["containerStatuses"][0]["state"]["waiting"];
        assert_eq!(w["reason"], "ErrImageNeverPull");
    }

    #[test]
    fn unchanged_conditions_keep_their_transition_time() {
        let mut p = pod();
        let first = pod_status(
            &p,
            "ip",
            &[view("c", Phase::Running { started_at: 1 })],
            100,
        );
        p.status = Some(serde_json::from_value(first.clone()).unwrap());
        let again = pod_status(
            &p,
            "ip",
            &[view("c", Phase::Running { started_at: 1 })],
            500,
        );
        assert_eq!(first, again);
        let done = Phase::Terminated {
            started_at: 1,
            exit: exit(0),
        };
        let after = pod_status(&p, "ip", &[view("c", done)], 500);
        assert_eq!(after["conditions"][0], first["conditions"][0]);
        assert_eq!(after["conditions"][1]["lastTransitionTime"], rfc3339(500));
    }
}
