//! A console nobody types into for five minutes is still connected: virtctl's keepalive
//! pings keep every hop (API server proxy, virt-api, handler) from dropping it, and the
//! guest's shell answers what is typed afterwards.

use std::io::Write;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

use api::v1::{VirtualMachineInstance, VmiPhase};
use kube::Api;

use crate::support::{BIN, Scratch, System, collect, kube_client, kubectl_ok, wait_until};

/// How long the console stays idle: the issue's five minutes.
const IDLE: Duration = Duration::from_secs(300);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_idle_console_is_still_connected_after_five_minutes() {
    let scratch = Scratch::new();
    let system = System::start(&scratch).await;
    let server = &system.server;
    let kc = server.kubeconfig_path();
    let manifest = crate::support::cirros_manifest();
    kubectl_ok(&kc, &scratch, &["apply", "-f", manifest.to_str().unwrap()]);
    kubectl_ok(
        &kc,
        &scratch,
        &[
            "patch",
            "vm",
            "vm-cirros",
            "--type=merge",
            "-p",
            r#"{"spec":{"runStrategy":"Always"}}"#,
        ],
    );
    let vmis: Api<VirtualMachineInstance> = Api::namespaced(kube_client(&kc).await, "default");
    wait_until(
        "vm-cirros Running",
        Duration::from_secs(60),
        server,
        || async {
            let phase = vmis
                .get_opt("vm-cirros")
                .await
                .ok()
                .flatten()?
                .status?
                .phase;
            (phase == Some(VmiPhase::Running)).then_some(())
        },
    )
    .await;

    let mut console = Command::new(Path::new(BIN).with_file_name("virtctl"))
        .arg("--kubeconfig")
        .arg(&kc)
        .args(["console", "vm-cirros"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let stdout = collect(console.stdout.take().unwrap());
    let stderr = collect(console.stderr.take().unwrap());
    wait_until(
        "the console to connect",
        Duration::from_secs(30),
        server,
        || {
            let connected = stderr.lock().unwrap().contains("Successfully connected");
            async move { connected.then_some(()) }
        },
    )
    .await;

    tokio::time::sleep(IDLE).await;
    assert!(
        console.try_wait().unwrap().is_none(),
        "the console ended while idle: {}",
        stderr.lock().unwrap()
    );
    // The guest's shell on the console answers: the session is alive end to end.
    let mut stdin = console.stdin.take().unwrap();
    stdin.write_all(b"\necho idle-$((6*7))\n").unwrap();
    stdin.flush().unwrap();
    wait_until(
        "the shell's answer",
        Duration::from_secs(30),
        server,
        || {
            let answered = stdout.lock().unwrap().contains("idle-42");
            async move { answered.then_some(()) }
        },
    )
    .await;
    console.kill().unwrap();
    console.wait().unwrap();
    kubectl_ok(
        &kc,
        &scratch,
        &["delete", "vm", "vm-cirros", "--wait=true", "--timeout=60s"],
    );
}
