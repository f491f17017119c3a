//! Who may make a pod a VMI's launcher. virt-controller counts a pod as a VMI's launcher
//! when its controller reference names the VMI (`status.activePods` comes from that), and
//! virt-handler then talks to whatever listens in that pod: sends it the VMI, and for a
//! migration the migration's TLS key. So only virt-controller (and cluster admins, and
//! the server itself) may create a pod, or change one, to carry a controller reference
//! to a VirtualMachineInstance; anyone else's write is refused (403), as an admission
//! plugin would.

use serde_json::Value;

use crate::ApiError;

/// virt-controller's identity.
const VIRT_CONTROLLER_USER: &str = "system:serviceaccount:kubevirt:kubevirt-controller";

/// The uids of the VMIs that `pod` names as its controller.
fn claimed(pod: &Value) -> Vec<&str> {
    pod["metadata"]["ownerReferences"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|o| {
            o["controller"] == true
                && o["kind"] == "VirtualMachineInstance"
                && o["apiVersion"]
                    .as_str()
                    .is_some_and(|v| v.starts_with("kubevirt.io/"))
        })
        .filter_map(|o| o["uid"].as_str())
        .collect()
}

/// Refuses a pod write by `user` (`None`: the server itself) that makes the pod a VMI's
/// launcher when it was not one (`old`: the pod before an update).
pub fn check(user: Option<&crate::User>, old: Option<&Value>, new: &Value) -> Result<(), ApiError> {
    let trusted = user.is_none_or(|u| {
        u.name == VIRT_CONTROLLER_USER || u.groups.iter().any(|g| g == crate::rbac::MASTERS)
    });
    if trusted {
        return Ok(());
    }
    let before = old.map(claimed).unwrap_or_default();
    let added = claimed(new).into_iter().any(|uid| !before.contains(&uid));
    if added {
        return Err(ApiError::forbidden(
            "pods with a controller reference to a VirtualMachineInstance are virt-controller's to create: such a pod is a VMI's launcher",
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use serde_json::json;

    use super::*;

    fn pod(owners: Value) -> Value {
        json!({"metadata": {"name": "p", "ownerReferences": owners}})
    }

    #[test]
    fn only_virt_controller_makes_a_pod_a_launcher() {
        let vmi_owner = json!([{"apiVersion": "kubevirt.io/v1", "kind": "VirtualMachineInstance",
            "name": "v", "uid": "u1", "controller": true}]);
        let tenant = crate::User {
            name: "alice".into(),
            groups: vec!["system:authenticated".into()],
        };
        let controller = crate::User {
            name: VIRT_CONTROLLER_USER.into(),
            groups: vec![],
        };
        let err = check(Some(&tenant), None, &pod(vmi_owner.clone())).unwrap_err();
        assert_eq!(err.status()["code"], 403);
        check(Some(&controller), None, &pod(vmi_owner.clone())).unwrap();
        check(None, None, &pod(vmi_owner.clone())).unwrap();
        // Adding the reference by an update is the same; keeping it is not.
        assert!(
            check(
                Some(&tenant),
                Some(&pod(json!([]))),
                &pod(vmi_owner.clone())
            )
            .is_err()
        );
        check(
            Some(&tenant),
            Some(&pod(vmi_owner.clone())),
            &pod(vmi_owner),
        )
        .unwrap();
        // Other owners, or a reference that does not control, are anyone's.
        let rs = json!([{"apiVersion": "apps/v1", "kind": "ReplicaSet", "name": "r", "uid": "u2", "controller": true}]);
        check(Some(&tenant), None, &pod(rs)).unwrap();
        let plain = json!([{"apiVersion": "kubevirt.io/v1", "kind": "VirtualMachineInstance", "name": "v", "uid": "u1"}]);
        check(Some(&tenant), None, &pod(plain)).unwrap();
    }
}
