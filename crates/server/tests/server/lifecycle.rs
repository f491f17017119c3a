//! Starting, stopping, restarting, the data-dir lock and the files left behind.

use std::os::unix::fs::PermissionsExt;
use std::process::Command;
use std::time::Duration;

use api::v1::VirtualMachine;
use futures_util::StreamExt;
use kube::api::{Api, PostParams, WatchParams};
use nix::sys::signal::Signal;

use crate::support::{BIN, Scratch, Server, cirros_vm, free_port, kube_client};

fn read(server: &Server, name: &str) -> Vec<u8> {
    std::fs::read(server.data.join(name)).unwrap()
}

#[tokio::test]
async fn a_restart_keeps_objects_certificates_and_token() {
    let scratch = Scratch::new();
    let mut first = Server::start(&scratch).await;
    let vms: Api<VirtualMachine> =
        Api::namespaced(kube_client(&first.kubeconfig_path()).await, "default");
    let created = vms
        .create(&PostParams::default(), &cirros_vm())
        .await
        .unwrap();
    let kept = [
        "tls/ca.crt",
        "tls/ca.key",
        "tls/server.crt",
        "tls/admin.crt",
        "tls/front-proxy-client.crt",
        "token",
    ]
    .map(|name| (name, read(&first, name)));

    let (status, took) = first.stop(Signal::SIGTERM);
    assert_eq!(status.code(), Some(0), "{}", first.log_text());
    assert!(took < Duration::from_secs(3), "SIGTERM took {took:?}");
    drop(first);

    let second = Server::start(&scratch).await;
    eprintln!("restart: ready after {:?}", second.ready_after);
    for (name, before) in &kept {
        assert_eq!(
            &read(&second, name),
            before,
            "{name} changed across a restart"
        );
    }
    let config = second.kubeconfig();
    assert_eq!(
        config.clusters[0].cluster.server,
        format!("https://127.0.0.1:{}", second.port),
        "the kubeconfig follows the new port"
    );
    let vms: Api<VirtualMachine> =
        Api::namespaced(kube_client(&second.kubeconfig_path()).await, "default");
    let after = vms.get("vm-cirros").await.unwrap();
    assert_eq!(
        after.metadata.resource_version,
        created.metadata.resource_version
    );
    assert_eq!(after.metadata.uid, created.metadata.uid);
}

#[tokio::test]
async fn sigint_cuts_open_watches_and_exits_0() {
    let scratch = Scratch::new();
    let mut server = Server::start(&scratch).await;
    let vms: Api<VirtualMachine> =
        Api::namespaced(kube_client(&server.kubeconfig_path()).await, "default");
    let mut watch = Box::pin(vms.watch(&WatchParams::default(), "0").await.unwrap());

    let (status, took) = server.stop(Signal::SIGINT);
    assert_eq!(status.code(), Some(0), "{}", server.log_text());
    assert!(
        took < Duration::from_secs(3),
        "an open watch held the stop for {took:?} (the drain bound is 5 s)"
    );
    let end = tokio::time::timeout(Duration::from_secs(5), watch.next())
        .await
        .expect("the watch ends with the server");
    assert!(
        !matches!(end, Some(Ok(_))),
        "no event after the stop: {end:?}"
    );
}

#[tokio::test]
async fn a_second_server_on_the_same_directory_exits_1_naming_the_first() {
    let scratch = Scratch::new();
    let server = Server::start(&scratch).await;
    let kubeconfig = read(&server, "kubeconfig");

    let out = Command::new(BIN)
        .args(["server", "--data-dir"])
        .arg(&server.data)
        .args(["--listen", &format!("127.0.0.1:{}", free_port())])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert_eq!(
        String::from_utf8(out.stderr).unwrap(),
        format!(
            "kubevirt-rs: another server is using {} (pid {})\n",
            server.data.display(),
            server.pid()
        )
    );
    assert!(out.stdout.is_empty());
    assert_eq!(
        read(&server, "kubeconfig"),
        kubeconfig,
        "the loser touches nothing"
    );
    let client = crate::support::https_client(&server.ca_pem(), Default::default());
    let ready = client.get(server.url("/readyz")).send().await.unwrap();
    assert_eq!(ready.status(), 200, "the first server still serves");
}

#[tokio::test]
async fn secrets_are_private_and_the_log_says_where_to_connect() {
    let scratch = Scratch::new();
    let server = Server::start(&scratch).await;
    let mode = |name: &str| {
        let meta = std::fs::metadata(server.data.join(name)).unwrap();
        meta.permissions().mode() & 0o777
    };
    for name in [
        "kubeconfig",
        "token",
        "tls/ca.key",
        "tls/server.key",
        "tls/admin.key",
        "tls/front-proxy-client.key",
    ] {
        assert_eq!(mode(name), 0o600, "{name}");
    }
    assert_eq!(mode(""), 0o700, "the data directory");
    assert_eq!(mode("tls/ca.crt"), 0o644);

    let log = server.log_text();
    let lines: Vec<&str> = log.lines().collect();
    assert_eq!(lines.len(), 2, "a first start logs two lines:\n{log}");
    assert!(lines[0].contains("issued certificates"), "{log}");
    assert!(
        lines[1].ends_with(&format!(
            "serving url=https://127.0.0.1:{} kubeconfig={}",
            server.port,
            server.kubeconfig_path().display()
        )),
        "{log}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn down_stops_the_server_and_every_vm_it_started() {
    use crate::support::{System, kubectl_ok, processes_mentioning, qemu_pids, wait_until};
    let scratch = Scratch::new();
    let mut system = System::start(&scratch).await;
    let kc = system.server.kubeconfig_path();
    let manifest = crate::support::upstream_example("vmi-ephemeral.yaml");
    kubectl_ok(&kc, &scratch, &["apply", "-f", &manifest]);
    let run_dir = system.run_dir.clone();
    wait_until(
        "a running guest",
        Duration::from_secs(60),
        &system.server,
        || {
            let run_dir = run_dir.clone();
            async move { (!qemu_pids(&run_dir).is_empty()).then_some(()) }
        },
    )
    .await;
    let server_pid = system.server.pid();
    let out = Command::new(BIN)
        .args(["down", "--grace-period", "5", "--data-dir"])
        .arg(&system.server.data)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        format!("stopped the server (pid {server_pid}) and 1 pods with their VMs")
    );
    // The server has exited, and nothing it started runs on.
    let status = system.server.child.wait().unwrap();
    assert!(status.success(), "{status}");
    assert_eq!(processes_mentioning(&run_dir), []);
    assert!(
        std::fs::read_dir(system.server.data.join("pods"))
            .unwrap()
            .next()
            .is_none(),
        "pod state left behind"
    );
    // A second run finds nothing to do.
    let again = Command::new(BIN)
        .args(["down", "--data-dir"])
        .arg(&system.server.data)
        .output()
        .unwrap();
    assert_eq!(
        String::from_utf8_lossy(&again.stdout).trim(),
        "stopped 0 pods with their VMs"
    );
}
