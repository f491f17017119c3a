//! virtctl against the whole system: every verb a user types, through the API server's
//! aggregation to virt-api, the handler and the launcher, with real guests under TCG.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::Duration;

use api::v1::{VirtualMachineInstance, VmiPhase};
use kube::Api;

use crate::support::{
    BIN, Scratch, System, kube_client, kubectl, kubectl_ok, qemu_pids, wait_until,
};

fn virtctl_binary() -> PathBuf {
    let path = Path::new(BIN).with_file_name("virtctl");
    assert!(
        path.exists(),
        "{} is missing: build the workspace",
        path.display()
    );
    path
}

fn virtctl(kubeconfig: &Path, args: &[&str]) -> Output {
    Command::new(virtctl_binary())
        .arg("--kubeconfig")
        .arg(kubeconfig)
        .args(args)
        .stdin(std::process::Stdio::null())
        .output()
        .unwrap()
}

fn ok(out: &Output) -> String {
    assert!(
        out.status.success(),
        "virtctl failed ({}): {}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// The one-line error of a failed virtctl.
fn refused(out: &Output) -> String {
    assert_eq!(
        out.status.code(),
        Some(1),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert_eq!(stderr.lines().count(), 1, "{stderr}");
    stderr
}

fn demo_manifest() -> String {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../examples/demo-vm.yaml")
        .display()
        .to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn virtctl_starts_pauses_restarts_stops_and_shows_the_console() {
    let scratch = Scratch::new();
    let system = System::start(&scratch).await;
    let (server, run_dir) = (&system.server, &system.run_dir);
    let kc = server.kubeconfig_path();
    let client = kube_client(&kc).await;
    let vmis: Api<VirtualMachineInstance> = Api::namespaced(client, "default");
    let phase = |name: &'static str| {
        let vmis = vmis.clone();
        async move {
            vmis.get_opt(name)
                .await
                .ok()
                .flatten()
                .and_then(|v| v.status.and_then(|s| s.phase))
        }
    };

    // The demo VM (runStrategy Manual): start, then the console shows the user data run,
    // until the guest powers itself off; the VM then stays stopped.
    kubectl_ok(&kc, &scratch, &["apply", "-f", &demo_manifest()]);
    assert!(ok(&virtctl(&kc, &["start", "demo"])).contains("VM demo was scheduled to start"));
    let console = virtctl(&kc, &["console", "demo", "--timeout", "2"]);
    let shown = ok(&console);
    assert!(shown.contains("hello from demo"), "{shown}");
    assert!(shown.contains("powering off"), "{shown}");
    let stderr = String::from_utf8_lossy(&console.stderr);
    assert!(
        stderr.contains("Successfully connected to demo console"),
        "{stderr}"
    );
    wait_until(
        "demo Succeeded",
        Duration::from_secs(30),
        server,
        || async { (phase("demo").await == Some(VmiPhase::Succeeded)).then_some(()) },
    )
    .await;
    let vm = kubectl_ok(
        &kc,
        &scratch,
        &[
            "get",
            "vm",
            "demo",
            "-o",
            "jsonpath={.status.printableStatus}",
        ],
    );
    assert_eq!(vm, "Stopped");

    // vm-cirros (runStrategy Halted): start, pause, unpause, restart, stop.
    kubectl_ok(
        &kc,
        &scratch,
        &[
            "apply",
            "-f",
            crate::support::cirros_manifest().to_str().unwrap(),
        ],
    );
    ok(&virtctl(&kc, &["start", "vm-cirros"]));
    wait_until(
        "vm-cirros Running",
        Duration::from_secs(60),
        server,
        || async { (phase("vm-cirros").await == Some(VmiPhase::Running)).then_some(()) },
    )
    .await;
    let status = || {
        kubectl_ok(
            &kc,
            &scratch,
            &[
                "get",
                "vm",
                "vm-cirros",
                "-o",
                "jsonpath={.status.printableStatus}",
            ],
        )
    };
    assert!(refused(&virtctl(&kc, &["start", "vm-cirros"])).contains("VM is already running"));

    // One console connection at a time: a new one takes over, and the old one ends
    // saying why.
    let mut first = Console::open(&kc, "vm-cirros", server).await;
    let mut second = Console::open(&kc, "vm-cirros", server).await;
    let ended = wait_until(
        "the first console to end",
        Duration::from_secs(20),
        server,
        || {
            let status = first.child.try_wait().unwrap();
            async move { status }
        },
    )
    .await;
    assert_eq!(ended.code(), Some(1));
    let said = first.stderr();
    assert!(
        said.contains("websocket: another connection to the serial console took over"),
        "{said}"
    );
    assert!(
        second.child.try_wait().unwrap().is_none(),
        "{}",
        second.stderr()
    );
    second.child.kill().unwrap();
    second.child.wait().unwrap();

    // The display as a PNG, no VNC viewer needed.
    let png_path = scratch.path("vm-cirros.png");
    let png_arg = png_path.to_str().unwrap();
    ok(&virtctl(
        &kc,
        &["vnc", "screenshot", "vm-cirros", "--file", png_arg],
    ));
    let png = std::fs::read(&png_path).unwrap();
    assert_eq!(&png[..8], b"\x89PNG\r\n\x1a\n");
    let size = |at: usize| u32::from_be_bytes(png[at..at + 4].try_into().unwrap());
    let (width, height) = (size(16), size(20));
    assert!(width >= 640 && height >= 400, "{width}x{height}");
    assert!(
        refused(&virtctl(
            &kc,
            &["vnc", "screenshot", "nosuch", "--file", png_arg]
        ))
        .contains("nosuch")
    );
    ok(&virtctl(&kc, &["pause", "vm", "vm-cirros"]));
    wait_until("Paused", Duration::from_secs(20), server, || async {
        (status() == "Paused").then_some(())
    })
    .await;
    assert!(refused(&virtctl(&kc, &["pause", "vmi", "vm-cirros"])).contains("already paused"));
    ok(&virtctl(&kc, &["unpause", "vmi", "vm-cirros"]));
    wait_until("Running again", Duration::from_secs(20), server, || async {
        (status() == "Running").then_some(())
    })
    .await;

    let first = vmis.get("vm-cirros").await.unwrap().metadata.uid;
    ok(&virtctl(&kc, &["restart", "vm-cirros"]));
    wait_until(
        "a new VMI Running",
        Duration::from_secs(60),
        server,
        || async {
            let v = vmis.get_opt("vm-cirros").await.ok().flatten()?;
            (v.metadata.uid != first && v.status.and_then(|s| s.phase) == Some(VmiPhase::Running))
                .then_some(())
        },
    )
    .await;
    assert_eq!(qemu_pids(run_dir).len(), 1, "the old guest is gone");

    // VNC through a local port: any viewer gets the RFB greeting of the guest's screen.
    let mut vnc = Command::new(virtctl_binary())
        .arg("--kubeconfig")
        .arg(&kc)
        .args(["vnc", "vm-cirros", "--proxy-only"])
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut line = String::new();
    std::io::BufRead::read_line(
        &mut std::io::BufReader::new(vnc.stdout.take().unwrap()),
        &mut line,
    )
    .unwrap();
    let port: serde_json::Value = serde_json::from_str(&line).unwrap();
    let port = u16::try_from(port["port"].as_u64().unwrap()).unwrap();
    let mut viewer = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
    viewer
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    let mut greeting = [0u8; 12];
    std::io::Read::read_exact(&mut viewer, &mut greeting).unwrap();
    assert_eq!(&greeting, b"RFB 003.008\n");
    drop(viewer);
    assert!(
        vnc.wait().unwrap().success(),
        "virtctl vnc ends with its viewer"
    );

    ok(&virtctl(
        &kc,
        &["stop", "vm-cirros", "--grace-period", "0", "--force"],
    ));
    wait_until("stopped", Duration::from_secs(30), server, || async {
        (phase("vm-cirros").await.is_none() && status() == "Stopped").then_some(())
    })
    .await;
    assert!(qemu_pids(run_dir).is_empty(), "no QEMU left");

    // Errors are one line and exit 1; usage errors exit 2.
    assert!(refused(&virtctl(&kc, &["start", "nosuch"])).contains("\"nosuch\" not found"));
    assert!(refused(&virtctl(&kc, &["console", "nosuch", "--timeout", "0"])).contains("nosuch"));
    assert!(refused(&virtctl(&kc, &["stop", "vm-cirros", "--force"])).contains("--grace-period 0"));
    assert_eq!(virtctl(&kc, &["pause", "pod", "x"]).status.code(), Some(2));

    // create vm prints what the API server accepts; version names both sides; and
    // kubectl runs it as a plugin.
    let yaml = ok(&virtctl(
        &kc,
        &[
            "create",
            "vm",
            "--name",
            "made",
            "--volume-containerdisk",
            "src:registry:5000/kubevirt/cirros-container-disk-demo:devel",
        ],
    ));
    let file = scratch.path("made.yaml");
    std::fs::write(&file, yaml).unwrap();
    kubectl_ok(
        &kc,
        &scratch,
        &["apply", "--dry-run=server", "-f", file.to_str().unwrap()],
    );
    let version = ok(&virtctl(&kc, &["version"]));
    assert!(
        version.contains("Client Version")
            && version.contains("Server Version: version.Info{GitVersion:\"v"),
        "{version}"
    );
    let plugins = scratch.path("plugins");
    std::fs::create_dir_all(&plugins).unwrap();
    std::os::unix::fs::symlink(virtctl_binary(), plugins.join("kubectl-virt")).unwrap();
    let path = format!(
        "{}:{}",
        plugins.display(),
        std::env::var("PATH").unwrap_or_default()
    );
    let plugin = Command::new("kubectl")
        .args(["virt", "--kubeconfig"])
        .arg(&kc)
        .arg("version")
        .env("PATH", path)
        .output()
        .unwrap();
    assert!(ok(&plugin).contains("Server Version"));
    drop(kubectl(
        &kc,
        &scratch,
        &["delete", "vm", "--all", "--wait=true", "--timeout=30s"],
    ));
}

/// A `virtctl console` running in the background, its stderr collected.
struct Console {
    child: std::process::Child,
    stderr: std::sync::Arc<std::sync::Mutex<String>>,
}

impl Console {
    /// Starts `virtctl console NAME` and waits until it says it is connected.
    async fn open(kubeconfig: &Path, name: &str, server: &crate::support::Server) -> Self {
        let mut child = Command::new(virtctl_binary())
            .arg("--kubeconfig")
            .arg(kubeconfig)
            .args(["console", name])
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        let stderr = crate::support::collect(child.stderr.take().unwrap());
        let console = Self { child, stderr };
        wait_until(
            "the console to connect",
            Duration::from_secs(20),
            server,
            || {
                let connected = console.stderr().contains("Successfully connected");
                async move { connected.then_some(()) }
            },
        )
        .await;
        console
    }

    fn stderr(&self) -> String {
        self.stderr.lock().unwrap().clone()
    }
}
