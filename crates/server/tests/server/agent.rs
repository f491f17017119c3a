//! The full Debian guest (`make guest-full`) through the whole system: real cloud-init
//! runs the user data, qemu-guest-agent connects (the AgentConnected condition), and
//! `virtctl guestosinfo`, `userlist`, `fslist`, freeze/unfreeze and `virtctl soft-reboot`
//! go through it; the VMI's status shows the guest's interface and OS. Slow under TCG (a
//! minute or more to boot).

use std::path::Path;
use std::time::Duration;

use api::v1::VirtualMachineInstance;
use kube::Api;

use crate::support::{
    BIN, Scratch, System, console_log, kube_client, kubectl_ok, qemu_pids, wait_until,
};

const VMI: &str = "
apiVersion: kubevirt.io/v1
kind: VirtualMachineInstance
metadata: {name: full}
spec:
  terminationGracePeriodSeconds: 0
  domain:
    devices:
      disks: [{name: containerdisk, disk: {bus: virtio}}, {name: cloudinitdisk, disk: {bus: virtio}}]
      interfaces: [{name: default, masquerade: {}}]
    memory: {guest: 1Gi}
  networks: [{name: default, pod: {}}]
  volumes:
  - {name: containerdisk, containerDisk: {image: 'registry:5000/kubevirt/fedora-with-test-tooling-container-disk:devel'}}
  - name: cloudinitdisk
    cloudInitNoCloud:
      userData: |
        #cloud-config
        users:
          - name: tester
            shell: /bin/bash
            ssh_authorized_keys: ['PUBLIC_KEY']
        runcmd:
          - echo full-guest-user-data-ran > /dev/ttyS0
";

/// A guest this size takes minutes under TCG on a busy machine.
const BOOT: Duration = Duration::from_secs(420);

fn virtctl(kubeconfig: &Path, args: &[&str]) -> std::process::Output {
    std::process::Command::new(Path::new(BIN).with_file_name("virtctl"))
        .arg("--kubeconfig")
        .arg(kubeconfig)
        .args(args)
        .output()
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cloud_init_runs_and_the_guest_agent_answers_virtctl() {
    let scratch = Scratch::new();
    let system = System::start(&scratch).await;
    let (server, run_dir) = (&system.server, &system.run_dir);
    let kc = server.kubeconfig_path();
    let file = scratch.path("full.yaml");
    // A key pair for `virtctl ssh`; the public half goes in through cloud-init.
    let key = scratch.path("id_ed25519");
    let keygen = std::process::Command::new("ssh-keygen")
        .args([
            "-q",
            "-t",
            "ed25519",
            "-N",
            "",
            "-C",
            "kubevirt-rs-test",
            "-f",
        ])
        .arg(&key)
        .status()
        .unwrap();
    assert!(keygen.success());
    let public = std::fs::read_to_string(key.with_extension("pub")).unwrap();
    std::fs::write(&file, VMI.replace("PUBLIC_KEY", public.trim())).unwrap();
    kubectl_ok(&kc, &scratch, &["apply", "-f", file.to_str().unwrap()]);
    let vmis: Api<VirtualMachineInstance> = Api::namespaced(kube_client(&kc).await, "default");

    wait_until("the user data ran", BOOT, server, || async {
        console_log(run_dir, "full")
            .contains("full-guest-user-data-ran")
            .then_some(())
    })
    .await;
    wait_until("AgentConnected", BOOT, server, || async {
        let vmi = vmis.get("full").await.ok()?;
        vmi.status?
            .conditions
            .iter()
            .any(|c| c.type_ == "AgentConnected" && c.status == "True")
            .then_some(())
    })
    .await;

    let info = virtctl(&kc, &["guestosinfo", "full"]);
    assert!(
        info.status.success(),
        "{}",
        String::from_utf8_lossy(&info.stderr)
    );
    let info: serde_json::Value = serde_json::from_slice(&info.stdout).unwrap();
    assert_eq!(info["os"]["id"], "debian", "{info}");
    assert!(
        info["os"]["kernelRelease"]
            .as_str()
            .is_some_and(|k| !k.is_empty()),
        "{info}"
    );
    assert_eq!(info["hostname"], "full", "{info}");
    assert_eq!(info["fsFreezeStatus"], "thawed", "{info}");
    assert!(info["guestAgentVersion"].is_string(), "{info}");

    // Users and filesystems, in upstream's list shapes.
    let json_of = |out: std::process::Output| -> serde_json::Value {
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        serde_json::from_slice(&out.stdout).unwrap()
    };
    let users = json_of(virtctl(&kc, &["userlist", "full"]));
    assert!(users["items"].is_array(), "{users}");
    let filesystems = json_of(virtctl(&kc, &["fslist", "full"]));
    let root = filesystems["items"]
        .as_array()
        .unwrap()
        .iter()
        .find(|f| f["mountPoint"] == "/")
        .unwrap_or_else(|| panic!("no / in {filesystems}"))
        .clone();
    assert_eq!(root["fileSystemType"], "ext4", "{root}");
    assert!(root["totalBytes"].as_u64().unwrap() > root["usedBytes"].as_u64().unwrap());

    // The VMI's status takes the guest's OS and its name for the pod network interface.
    let vmi = wait_until(
        "the guest's interface in the status",
        Duration::from_secs(60),
        server,
        || async {
            let vmi = vmis.get("full").await.ok()?;
            let iface = vmi.status.as_ref()?.interfaces.first()?.clone();
            (iface.info_source.as_deref() == Some("domain, guest-agent")).then_some(vmi)
        },
    )
    .await;
    let status = vmi.status.unwrap();
    let iface = &status.interfaces[0];
    assert_eq!(iface.name.as_deref(), Some("default"));
    assert!(
        iface
            .interface_name
            .as_deref()
            .is_some_and(|n| n.starts_with("e")),
        "{iface:?}"
    );
    assert_eq!(status.guest_os_info.unwrap().0["id"], "debian");

    // The guest's sshd through a port-forward: its banner on a local port.
    let local = crate::support::free_port();
    let mut forward = std::process::Command::new(Path::new(BIN).with_file_name("virtctl"))
        .arg("--kubeconfig")
        .arg(&kc)
        .args(["port-forward", "vmi/full", &format!("{local}:22")])
        .stdin(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let banner = wait_until(
        "the guest's SSH banner",
        Duration::from_secs(120),
        server,
        || async {
            let mut tcp = tokio::net::TcpStream::connect(("127.0.0.1", local))
                .await
                .ok()?;
            let mut line = vec![0u8; 64];
            let n = tokio::time::timeout(
                Duration::from_secs(10),
                tokio::io::AsyncReadExt::read(&mut tcp, &mut line),
            )
            .await
            .ok()?
            .ok()?;
            let text = String::from_utf8_lossy(&line[..n]).into_owned();
            text.starts_with("SSH-2.0-").then_some(text)
        },
    )
    .await;
    assert!(banner.contains("OpenSSH"), "{banner}");
    forward.kill().unwrap();
    forward.wait().unwrap();

    // virtctl ssh and scp: the local OpenSSH client, through the same port-forward.
    let known_hosts = scratch.path("known_hosts");
    let ssh_opts = [
        "--identity-file",
        key.to_str().unwrap(),
        "--known-hosts",
        known_hosts.to_str().unwrap(),
        "--local-ssh-opts=-o StrictHostKeyChecking=accept-new",
        "--local-ssh-opts=-o BatchMode=yes",
    ];
    let mut args = vec!["ssh"];
    args.extend(ssh_opts);
    args.extend(["tester@vmi/full", "--command", "echo ssh-as-$(whoami)"]);
    let out = virtctl(&kc, &args);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "ssh-as-tester");
    let copy = scratch.path("hostname");
    let mut args = vec!["scp"];
    args.extend(ssh_opts);
    args.extend(["tester@vmi/full:/etc/hostname", copy.to_str().unwrap()]);
    let out = virtctl(&kc, &args);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(std::fs::read_to_string(&copy).unwrap().trim(), "full");

    // Freeze and unfreeze through the API; a freeze whose timeout passes thaws itself.
    let raw_put = |sub: &str, body: &str| {
        let file = scratch.path(&format!("{sub}.json"));
        std::fs::write(&file, body).unwrap();
        let path = format!(
            "/apis/subresources.kubevirt.io/v1/namespaces/default/virtualmachineinstances/full/{sub}"
        );
        kubectl_ok(
            &kc,
            &scratch,
            &["replace", "--raw", &path, "-f", file.to_str().unwrap()],
        );
    };
    let freeze_status = || async { vmis.get("full").await.ok()?.status?.fs_freeze_status };
    raw_put("freeze", r#"{"unfreezeTimeout": "1m0s"}"#);
    wait_until("frozen", Duration::from_secs(30), server, || async {
        (freeze_status().await.as_deref() == Some("frozen")).then_some(())
    })
    .await;
    let info = json_of(virtctl(&kc, &["guestosinfo", "full"]));
    assert_eq!(info["fsFreezeStatus"], "frozen", "{info}");
    raw_put("unfreeze", "{}");
    wait_until("thawed", Duration::from_secs(30), server, || async {
        freeze_status().await.is_none().then_some(())
    })
    .await;
    raw_put("freeze", r#"{"unfreezeTimeout": "2s"}"#);
    wait_until("frozen", Duration::from_secs(30), server, || async {
        (freeze_status().await.as_deref() == Some("frozen")).then_some(())
    })
    .await;
    wait_until(
        "the automatic thaw",
        Duration::from_secs(30),
        server,
        || async { freeze_status().await.is_none().then_some(()) },
    )
    .await;

    // The guest reboots itself: the kernel says so on the console, QEMU stays the same.
    let qemu = qemu_pids(run_dir);
    let reboot = virtctl(&kc, &["soft-reboot", "full"]);
    assert!(
        reboot.status.success(),
        "{}",
        String::from_utf8_lossy(&reboot.stderr)
    );
    wait_until(
        "the guest rebooting",
        Duration::from_secs(120),
        server,
        || async {
            console_log(run_dir, "full")
                .contains("reboot: Restarting system")
                .then_some(())
        },
    )
    .await;
    assert_eq!(qemu_pids(run_dir), qemu);

    kubectl_ok(
        &kc,
        &scratch,
        &["delete", "vmi", "full", "--wait=true", "--timeout=60s"],
    );
    assert!(qemu_pids(run_dir).is_empty());
}
