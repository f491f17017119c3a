//! The built `virtctl` binary against the in-process API server with virt-api
//! registered through aggregation (the same cluster virt-api's own tests use).

#![allow(clippy::unwrap_used, missing_debug_implementations)]

#[path = "../../../virt-api/tests/it/harness.rs"]
mod harness;

use std::path::PathBuf;

use api::v1::{RunStrategy, VirtualMachine};
use kube::api::PostParams;
use serde_json::json;

use harness::Cluster;

struct Output {
    code: i32,
    stdout: String,
    stderr: String,
}

fn kubeconfig(c: &Cluster) -> PathBuf {
    let path = std::env::temp_dir().join(format!(
        "virtctl-it-{}-{}.kubeconfig",
        std::process::id(),
        c.addr.port()
    ));
    let text = format!(
        "apiVersion: v1\nkind: Config\nclusters:\n- name: t\n  cluster:\n    server: http://{}\nusers:\n- name: u\n  user: {{}}\ncontexts:\n- name: c\n  context:\n    cluster: t\n    user: u\n    namespace: default\ncurrent-context: c\n",
        c.addr
    );
    std::fs::write(&path, text).unwrap();
    path
}

async fn virtctl(c: &Cluster, args: &[&str]) -> Output {
    virtctl_as(env!("CARGO_BIN_EXE_virtctl").into(), c, args).await
}

async fn virtctl_as(bin: PathBuf, c: &Cluster, args: &[&str]) -> Output {
    let out = tokio::process::Command::new(bin)
        .arg("--kubeconfig")
        .arg(kubeconfig(c))
        .args(args)
        .env_remove("KUBECONFIG")
        .output()
        .await
        .unwrap();
    Output {
        code: out.status.code().unwrap_or(-1),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn start_stop_restart_change_the_vm() {
    let c = harness::start().await;
    c.create_vm("vm1", json!({"runStrategy": "Halted"})).await;
    let out = virtctl(&c, &["start", "vm1"]).await;
    assert_eq!(out.code, 0, "{}", out.stderr);
    assert_eq!(out.stdout, "VM vm1 was scheduled to start\n");
    let vm = c.vms().get("vm1").await.unwrap();
    assert_eq!(vm.spec.run_strategy, Some(RunStrategy::Always));

    let vmi = c.create_vmi("vm1", "Running", "node1").await;
    let out = virtctl(&c, &["restart", "vm1"]).await;
    assert_eq!(out.code, 0, "{}", out.stderr);
    let requests = c
        .vms()
        .get("vm1")
        .await
        .unwrap()
        .status
        .unwrap()
        .state_change_requests;
    assert_eq!(requests[0].uid, vmi.metadata.uid);

    let out = virtctl(&c, &["stop", "vm1", "--force", "--grace-period", "0"]).await;
    assert_eq!(out.code, 0, "{}", out.stderr);
    let vm = c.vms().get("vm1").await.unwrap();
    assert_eq!(vm.spec.run_strategy, Some(RunStrategy::Halted));
    let vmi = c.vmis().get("vm1").await.unwrap();
    assert_eq!(vmi.spec.termination_grace_period_seconds, Some(0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failures_are_one_line_and_non_zero() {
    let c = harness::start().await;
    for args in [
        &["start", "nope"][..],
        &["-n", "elsewhere", "stop", "nope"],
        &["pause", "vm", "nope"],
        &["stop", "x", "--grace-period", "3"],
        &["guestosinfo", "nope"],
    ] {
        let out = virtctl(&c, args).await;
        assert_ne!(out.code, 0, "{args:?}");
        assert!(
            out.stderr.starts_with("virtctl: "),
            "{args:?}: {}",
            out.stderr
        );
        assert_eq!(out.stderr.lines().count(), 1, "{args:?}: {}", out.stderr);
    }
    let out = virtctl(&c, &["start", "nope"]).await;
    assert!(out.stderr.contains("\"nope\" not found"), "{}", out.stderr);
    // Bad usage is clap's error, also non-zero.
    let out = virtctl(&c, &["pause", "pod", "x"]).await;
    assert_eq!(out.code, 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn create_vm_prints_yaml_the_api_server_accepts() {
    let c = harness::start().await;
    let out = virtctl(
        &c,
        &[
            "create",
            "vm",
            "--name",
            "made",
            "--run-strategy",
            "Halted",
            "--volume-containerdisk",
            "src:quay.io/containerdisks/fedora:41,name:root",
        ],
    )
    .await;
    assert_eq!(out.code, 0, "{}", out.stderr);
    let api::Object::VirtualMachine(vm) = api::parse_documents(&out.stdout).unwrap().remove(0)
    else {
        panic!("not a VM: {}", out.stdout)
    };
    let created: VirtualMachine = c.vms().create(&PostParams::default(), &vm).await.unwrap();
    let volumes = &created.spec.template.spec.unwrap().volumes;
    assert_eq!(volumes[0].name, "root");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn version_prints_client_and_server_and_works_as_a_kubectl_plugin() {
    let c = harness::start().await;
    let out = virtctl(&c, &["version"]).await;
    assert_eq!(out.code, 0, "{}", out.stderr);
    let lines: Vec<&str> = out.stdout.lines().collect();
    assert!(
        lines[0].starts_with("Client Version: version.Info{GitVersion:\"v"),
        "{}",
        out.stdout
    );
    assert!(
        lines[1].starts_with("Server Version: version.Info{GitVersion:\"v"),
        "{}",
        out.stdout
    );

    let dir = std::env::temp_dir().join(format!("virtctl-plugin-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let plugin = dir.join("kubectl-virt");
    std::fs::copy(env!("CARGO_BIN_EXE_virtctl"), &plugin).unwrap();
    let out = virtctl_as(plugin.clone(), &c, &["--help"]).await;
    assert!(out.stdout.contains("Usage: kubectl virt"), "{}", out.stdout);
    let out = virtctl_as(plugin, &c, &["version"]).await;
    assert_eq!(out.code, 0, "{}", out.stderr);
    let _ = std::fs::remove_dir_all(dir);
}
