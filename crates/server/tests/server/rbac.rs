//! Authorization with real kubectl: users other than the admin get only what RBAC
//! bindings give them, also on virt-api's subresources, which the API server authorizes
//! before it forwards them.

use std::time::Duration;

use crate::support::{Scratch, System, kubectl, kubectl_ok, wait_until};

const VM: &str = r#"{"apiVersion": "kubevirt.io/v1", "kind": "VirtualMachine",
  "metadata": {"name": "guarded", "namespace": "default"},
  "spec": {"runStrategy": "Halted", "template": {"spec": {"domain": {"devices": {},
    "memory": {"guest": "64Mi"}}}}}}"#;

#[tokio::test(flavor = "multi_thread")]
async fn only_bound_users_may_use_vms_and_their_subresources() {
    let scratch = Scratch::new();
    let system = System::start(&scratch).await;
    let server = &system.server;
    let kc = server.kubeconfig_path();
    let run = |args: &[&str]| kubectl(&kc, &scratch, args);
    let stop_path =
        "/apis/subresources.kubevirt.io/v1/namespaces/default/virtualmachines/guarded/stop";
    let body = scratch.path("stop.json");
    std::fs::write(&body, "{}").unwrap();
    let manifest = scratch.path("vm.json");
    std::fs::write(&manifest, VM).unwrap();
    kubectl_ok(&kc, &scratch, &["apply", "-f", manifest.to_str().unwrap()]);
    // virt-api installs upstream's user roles when it registers.
    wait_until(
        "the kubevirt.io:edit role",
        Duration::from_secs(30),
        server,
        || async {
            run(&["get", "clusterrole", "kubevirt.io:edit"])
                .status
                .success()
                .then_some(())
        },
    )
    .await;

    // Nobody has bound alice to anything: listing VMs and stopping one are refused.
    let out = run(&["--as", "alice", "get", "vm"]);
    assert!(!out.status.success());
    assert_eq!(
        String::from_utf8_lossy(&out.stderr).trim(),
        "Error from server (Forbidden): virtualmachines.kubevirt.io is forbidden: User \"alice\" cannot list resource \"virtualmachines\" in API group \"kubevirt.io\" in the namespace \"default\""
    );
    let stop = |who: &str| {
        run(&[
            "--as",
            who,
            "replace",
            "--raw",
            stop_path,
            "-f",
            body.to_str().unwrap(),
        ])
    };
    let out = stop("alice");
    assert!(String::from_utf8_lossy(&out.stderr).contains(
        "cannot update resource \"virtualmachines/stop\" in API group \"subresources.kubevirt.io\" in the namespace \"default\""
    ), "{}", String::from_utf8_lossy(&out.stderr));
    let can_i = |who: &str, args: &[&str]| {
        let mut all = vec!["--as", who, "auth", "can-i"];
        all.extend_from_slice(args);
        String::from_utf8_lossy(&run(&all).stdout).trim().to_owned()
    };
    assert_eq!(
        can_i("alice", &["list", "virtualmachines.kubevirt.io"]),
        "no"
    );

    // kubevirt.io:edit in the namespace: alice may list VMs there and use their
    // subresources; the stop reaches virt-api, which answers that the VM does not run.
    kubectl_ok(
        &kc,
        &scratch,
        &[
            "create",
            "rolebinding",
            "alice-vms",
            "--clusterrole=kubevirt.io:edit",
            "--user=alice",
        ],
    );
    assert_eq!(
        can_i("alice", &["list", "virtualmachines.kubevirt.io"]),
        "yes"
    );
    assert_eq!(
        can_i(
            "alice",
            &["list", "virtualmachines.kubevirt.io", "-n", "kube-system"]
        ),
        "no"
    );
    assert!(
        kubectl_ok(&kc, &scratch, &["--as", "alice", "get", "vm", "guarded"]).contains("guarded")
    );
    let out = stop("alice");
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("VM is not running"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    // virt-api checks the whole subresource again: kubevirt.io:edit grants the VNC
    // stream but not screenshots (upstream keeps those to kubevirt.io:admin).
    let screenshot = "/apis/subresources.kubevirt.io/v1/namespaces/default/virtualmachineinstances/guarded/vnc/screenshot";
    let out = run(&["--as", "alice", "get", "--raw", screenshot]);
    assert!(
        String::from_utf8_lossy(&out.stderr).contains(
            "User \"alice\" cannot get resource \"virtualmachineinstances/vnc/screenshot\""
        ),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    kubectl_ok(
        &kc,
        &scratch,
        &[
            "create",
            "rolebinding",
            "carol-admin",
            "--clusterrole=kubevirt.io:admin",
            "--user=carol",
        ],
    );
    // Allowed, so the answer is virt-api's own: there is no such VMI.
    let out = run(&["--as", "carol", "get", "--raw", screenshot]);
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("not found"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    // Kubernetes' view role takes in kubevirt.io:view: bob reads VMs cluster-wide but
    // may neither delete nor stop them.
    kubectl_ok(
        &kc,
        &scratch,
        &[
            "create",
            "clusterrolebinding",
            "bob-view",
            "--clusterrole=view",
            "--user=bob",
        ],
    );
    assert_eq!(
        can_i("bob", &["list", "virtualmachines.kubevirt.io", "-A"]),
        "yes"
    );
    assert_eq!(
        can_i("bob", &["delete", "virtualmachines.kubevirt.io"]),
        "no"
    );
    assert!(String::from_utf8_lossy(&stop("bob").stderr).contains("forbidden"));

    // The components hold what their calls need, and nothing near cluster-admin.
    let handler = "system:serviceaccount:kubevirt:kubevirt-handler";
    let controller = "system:serviceaccount:kubevirt:kubevirt-controller";
    let api = "system:serviceaccount:kubevirt:kubevirt-apiserver";
    let node = "system:node:kubevirt-rs";
    for (who, verb, what, want) in [
        (
            handler,
            "update",
            "virtualmachineinstances.kubevirt.io",
            "yes",
        ),
        (handler, "patch", "nodes", "yes"),
        (handler, "delete", "pods", "no"),
        (handler, "get", "secrets", "no"),
        (controller, "create", "pods", "yes"),
        (
            controller,
            "update",
            "virtualmachines.kubevirt.io/status",
            "yes",
        ),
        (controller, "delete", "nodes", "no"),
        (api, "patch", "virtualmachines.kubevirt.io", "yes"),
        (
            api,
            "patch",
            "validatingwebhookconfigurations.admissionregistration.k8s.io",
            "yes",
        ),
        (api, "delete", "virtualmachines.kubevirt.io", "no"),
        (node, "create", "nodes", "yes"),
        (
            node,
            "create",
            "clusterrolebindings.rbac.authorization.k8s.io",
            "no",
        ),
    ] {
        assert_eq!(can_i(who, &[verb, what, "-A"]), want, "{who} {verb} {what}");
    }
}
