//! Every upstream example and the seed's v1alpha2 manifest, applied unchanged to the whole
//! system with kubectl, run as real guests under TCG.

use std::path::Path;
use std::time::Duration;

use api::v1::{VirtualMachineInstance, VmiPhase};
use kube::Api;
use kube::api::ListParams;

use crate::support::{Scratch, System, kube_client, kubectl, kubectl_ok, qemu_pids, wait_until};

fn shared(path: &str) -> String {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../../shared")
        .join(path)
        .display()
        .to_string()
}

const VMIS: [&str; 8] = [
    "vmi-ephemeral",
    "vmi-kernel-boot",
    "vmi-migratable",
    "vmi-nocloud",
    "vmi-sata",
    "vm-cirros-csmall",
    "vm-cirros-clarge-virtio",
    "testvm",
];

/// The ReplicaSet's VMIs in `list`.
fn replicas(list: &[VirtualMachineInstance]) -> impl Iterator<Item = &VirtualMachineInstance> {
    list.iter().filter(|v| {
        v.metadata
            .name
            .as_deref()
            .is_some_and(|n| n.starts_with("vmi-replicaset-cirros"))
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upstream_examples_and_the_seed_apply_unchanged_and_run() {
    let scratch = Scratch::new();
    let system = System::start(&scratch).await;
    let (server, run_dir) = (&system.server, &system.run_dir);
    let kubeconfig = server.kubeconfig_path();
    let k = |args: &[&str]| kubectl_ok(&kubeconfig, &scratch, args);

    // The instancetypes and preference first: the VMs name them.
    for f in [
        "csmall.yaml",
        "clarge.yaml",
        "virtio.yaml",
        "vmi-preset-small.yaml",
    ] {
        k(&["apply", "-f", &shared(&format!("upstream-examples/{f}"))]);
    }
    k(&["apply", "-f", &shared("upstream-examples")]);
    k(&["apply", "-f", &shared("seed-examples/vm-v1alpha2.yaml")]);
    for vm in ["vm-cirros-csmall", "vm-cirros-clarge-virtio"] {
        k(&[
            "patch",
            "vm",
            vm,
            "--type",
            "merge",
            "-p",
            r#"{"spec":{"runStrategy":"Always"}}"#,
        ]);
    }
    // The seed's VM says `running: false`; a v1alpha2 client flips it.
    k(&[
        "patch",
        "virtualmachines.v1alpha2.kubevirt.io",
        "testvm",
        "--type",
        "merge",
        "-p",
        r#"{"spec":{"running":true}}"#,
    ]);

    let client = kube_client(&kubeconfig).await;
    let vmis: Api<VirtualMachineInstance> = Api::namespaced(client, "default");
    let running = |list: &[VirtualMachineInstance], name: &str| {
        list.iter().any(|v| {
            v.metadata.name.as_deref() == Some(name)
                && v.status.as_ref().and_then(|s| s.phase) == Some(VmiPhase::Running)
        })
    };
    let all = wait_until(
        "every example VMI Running",
        Duration::from_secs(180),
        server,
        || async {
            let list = vmis.list(&ListParams::default()).await.ok()?.items;
            let replicas = replicas(&list)
                .filter(|v| v.status.as_ref().and_then(|s| s.phase) == Some(VmiPhase::Running))
                .count();
            (VMIS.iter().all(|n| running(&list, n)) && replicas == 3).then_some(list)
        },
    )
    .await;
    let vmi = |name: &str| {
        all.iter()
            .find(|v| v.metadata.name.as_deref() == Some(name))
            .unwrap()
    };

    // The instancetype and preference shaped the VMIs.
    let clarge = &vmi("vm-cirros-clarge-virtio").spec;
    assert_eq!(
        clarge.domain.cpu.as_ref().and_then(|c| c.sockets),
        Some(4),
        "clarge: 4 vCPUs as sockets"
    );
    assert_eq!(
        clarge
            .domain
            .memory
            .as_ref()
            .and_then(|m| m.guest.as_ref())
            .map(|q| q.0.as_str()),
        Some("2Gi")
    );
    // The seed's preset gave its VMI 64M.
    let seed = vmi("testvm");
    let requests = &seed.spec.domain.resources.as_ref().unwrap().requests;
    assert_eq!(
        requests.get("memory").map(|q| q.0.as_str()),
        Some("64M"),
        "{:?}",
        seed.spec.domain.resources
    );
    let annotations = seed.metadata.annotations.clone().unwrap_or_default();
    assert_eq!(
        annotations
            .get("virtualmachineinstancepreset.kubevirt.io/small")
            .map(String::as_str),
        Some("kubevirt.io/v1"),
        "{annotations:?}"
    );

    // kubectl shows them all Running on node1.
    let table = k(&["get", "vmi"]);
    assert_eq!(
        table
            .lines()
            .filter(|l| l.contains(" Running ") && l.contains(" node1 "))
            .count(),
        11,
        "{table}"
    );

    // The ReplicaSet scales down to one; the others' guests go.
    let before = qemu_pids(run_dir).len();
    assert_eq!(before, 11, "one QEMU per VMI");
    k(&["scale", "vmirs", "vmi-replicaset-cirros", "--replicas=1"]);
    wait_until(
        "two replicas gone",
        Duration::from_secs(60),
        server,
        || async {
            let list = vmis.list(&ListParams::default()).await.ok()?.items;
            let left = replicas(&list).count();
            (left == 1 && qemu_pids(run_dir).len() == 9).then_some(())
        },
    )
    .await;
    let rs = k(&[
        "get",
        "vmirs",
        "vmi-replicaset-cirros",
        "-o",
        "jsonpath={.status.replicas}/{.status.readyReplicas}",
    ]);
    assert_eq!(rs, "1/1");

    // Everything deleted: no VMI, pod or QEMU is left.
    let out = kubectl(
        &kubeconfig,
        &scratch,
        &["delete", "-f", &shared("upstream-examples"), "--wait=false"],
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    k(&[
        "delete",
        "-f",
        &shared("seed-examples/vm-v1alpha2.yaml"),
        "--wait=false",
    ]);
    wait_until("nothing left", Duration::from_secs(90), server, || async {
        let vmis_left = vmis.list(&ListParams::default()).await.ok()?.items.len();
        let pods = kubectl_ok(&kubeconfig, &scratch, &["get", "pods", "-o", "name"]);
        (vmis_left == 0 && pods.trim().is_empty() && qemu_pids(run_dir).is_empty()).then_some(())
    })
    .await;
}
