//! VMs end to end: the real server with its components (virt-api, virt-controller,
//! virt-handler, the pod runner), real kubectl, and real guests under TCG from the
//! loopback registry (`make guest registry`).

use std::path::Path;
use std::time::{Duration, Instant};

use api::v1::{VirtualMachineInstance, VmiPhase};
use kube::Api;
use nix::sys::signal::Signal;

use crate::support::{
    Scratch, Server, System, cirros_manifest, kube_client, kubectl, kubectl_ok, qemu_pids,
    set_run_strategy, wait_until,
};

/// A guest under TCG takes a few seconds; a loaded CI machine more.
const BOOT: Duration = Duration::from_secs(90);

fn phase(vmi: &VirtualMachineInstance) -> Option<VmiPhase> {
    vmi.status.as_ref().and_then(|s| s.phase)
}

/// The first line of `kubectl get` output after the header, split on whitespace.
fn row(table: &str) -> Vec<String> {
    table
        .lines()
        .nth(1)
        .unwrap_or_default()
        .split_whitespace()
        .map(str::to_owned)
        .collect()
}

/// The serial console logs of the guests below `run_dir`.
fn console_log(run_dir: &Path) -> String {
    crate::support::vmi_dirs(run_dir)
        .iter()
        .filter_map(|d| std::fs::read_to_string(d.join("virt-serial0.log")).ok())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_vm_starts_survives_a_server_crash_stops_and_leaves_nothing() {
    let scratch = Scratch::new();
    let system = System::start(&scratch).await;
    let (mut server, run_dir) = (system.server, system.run_dir.clone());
    let kubeconfig = server.kubeconfig_path();
    let manifest = cirros_manifest();
    kubectl_ok(
        &kubeconfig,
        &scratch,
        &["apply", "-f", manifest.to_str().unwrap()],
    );
    let client = kube_client(&kubeconfig).await;
    let vmis: Api<VirtualMachineInstance> = Api::namespaced(client.clone(), "default");

    // The node registered itself (the pod runner) and is labelled by the handler.
    let nodes = kubectl_ok(&kubeconfig, &scratch, &["get", "nodes", "--show-labels"]);
    let cells = row(&nodes);
    assert_eq!(&cells[..2], ["node1", "Ready"], "{nodes}");
    assert!(cells[4].contains("kubevirt.io/schedulable=true"), "{nodes}");
    let vm = kubectl_ok(&kubeconfig, &scratch, &["get", "vm", "vm-cirros"]);
    assert_eq!(row(&vm)[2], "Stopped", "{vm}");

    // An invalid manifest is refused with the field at fault, and nothing is stored.
    let bad = scratch.path("bad.yaml");
    let text = std::fs::read_to_string(&manifest).unwrap();
    std::fs::write(
        &bad,
        text.replace("name: vm-cirros", "name: vm-bad")
            .replace("guest: 128Mi", "guest: lots"),
    )
    .unwrap();
    let refused = kubectl(
        &kubeconfig,
        &scratch,
        &["apply", "-f", bad.to_str().unwrap()],
    );
    let stderr = String::from_utf8_lossy(&refused.stderr);
    assert!(!refused.status.success(), "{stderr}");
    assert!(
        stderr.contains("spec.template.spec.domain.memory.guest"),
        "{stderr}"
    );
    let none = kubectl(&kubeconfig, &scratch, &["get", "vm", "vm-bad"]);
    assert!(!none.status.success());

    // Start it as virtctl start would for runStrategy Halted.
    let started = Instant::now();
    set_run_strategy(&kubeconfig, &scratch, "vm-cirros", "Always");
    let vmi = wait_until("VMI Running", BOOT, &server, || async {
        vmis.get_opt("vm-cirros")
            .await
            .ok()
            .flatten()
            .filter(|v| phase(v) == Some(VmiPhase::Running))
    })
    .await;
    eprintln!(
        "VMI Running {:?} after the start request",
        started.elapsed()
    );
    let status = vmi.status.unwrap();
    assert_eq!(status.node_name.as_deref(), Some("node1"));
    let condition = |t: &str| {
        status
            .conditions
            .iter()
            .find(|c| c.type_ == t)
            .map(|c| c.status.clone())
    };
    assert_eq!(condition("Ready").as_deref(), Some("True"));
    // This machine's KVM cannot run guests: the handler says so.
    assert_eq!(condition("SoftwareEmulation").as_deref(), Some("True"));
    assert_eq!(
        status.interfaces[0].ip_address.as_deref(),
        Some("127.0.0.1")
    );

    // kubectl shows upstream's columns.
    let table = kubectl_ok(&kubeconfig, &scratch, &["get", "vmi", "vm-cirros"]);
    assert!(
        table.starts_with("NAME") && table.contains("PHASE") && table.contains("NODENAME"),
        "{table}"
    );
    let cells = row(&table);
    assert_eq!(
        &cells[2..],
        ["Running", "127.0.0.1", "node1", "True"],
        "{table}"
    );
    let vm = wait_until("VM Running", Duration::from_secs(10), &server, || async {
        let t = kubectl_ok(&kubeconfig, &scratch, &["get", "vm", "vm-cirros"]);
        (row(&t)[2] == "Running").then_some(t)
    })
    .await;
    assert_eq!(row(&vm)[3], "True", "{vm}");

    // The guest booted: its console says so.
    wait_until("guest ready on the console", BOOT, &server, || async {
        console_log(&run_dir)
            .contains("KUBEVIRT-RS-GUEST-READY")
            .then_some(())
    })
    .await;
    // The launcher pod runs on node1 and its log is there.
    let pods = kubectl_ok(
        &kubeconfig,
        &scratch,
        &[
            "get",
            "pods",
            "-l",
            "kubevirt.io=virt-launcher",
            "-o",
            "jsonpath={.items[*].metadata.name}",
        ],
    );
    let pod = pods.trim().to_owned();
    assert!(pod.starts_with("virt-launcher-vm-cirros-"), "{pods}");
    let logs = kubectl_ok(&kubeconfig, &scratch, &["logs", &pod]);
    assert!(logs.contains("qemu started"), "{logs}");

    // kill -9 of the whole server: the guest keeps running, and the next start adopts it.
    let qemu = qemu_pids(&run_dir);
    assert_eq!(qemu.len(), 1, "one QEMU: {qemu:?}");
    server.stop(Signal::SIGKILL);
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(qemu_pids(&run_dir), qemu, "QEMU survived the server");
    let server = Server::start_with(&scratch, &system.node).await;
    let client = kube_client(&kubeconfig).await;
    let vmis: Api<VirtualMachineInstance> = Api::namespaced(client.clone(), "default");
    tokio::time::sleep(Duration::from_secs(2)).await;
    let after = vmis.get("vm-cirros").await.unwrap();
    assert_eq!(
        phase(&after),
        Some(VmiPhase::Running),
        "{}",
        server.log_text()
    );
    assert_eq!(after.metadata.uid, vmi.metadata.uid, "the same VMI");
    assert_eq!(qemu_pids(&run_dir), qemu, "the same QEMU");

    // Stop: the VMI, its pod and QEMU go; the VM says Stopped.
    set_run_strategy(&kubeconfig, &scratch, "vm-cirros", "Halted");
    wait_until(
        "VMI and pod gone",
        Duration::from_secs(60),
        &server,
        || async {
            let vmi = vmis.get_opt("vm-cirros").await.ok().flatten();
            let pods = kubectl_ok(&kubeconfig, &scratch, &["get", "pods", "-o", "name"]);
            (vmi.is_none() && pods.trim().is_empty()).then_some(())
        },
    )
    .await;
    assert!(qemu_pids(&run_dir).is_empty(), "no QEMU left");
    let vm = kubectl_ok(&kubeconfig, &scratch, &["get", "vm", "vm-cirros"]);
    assert_eq!(row(&vm)[2], "Stopped", "{vm}");
}
