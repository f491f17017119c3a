//! Live migration on a server acting as two nodes (`--nodes 2`), with real guests under
//! TCG: upstream's `migration-job.yaml` moves `vmi-migratable`; a guest counting on its
//! console keeps counting across a migration; a cancelled migration and one whose target
//! is killed leave the guest running where it was, with nothing left behind.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use api::v1::{VirtualMachineInstance, VirtualMachineInstanceMigration};
use kube::Api;
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;

use crate::support::{
    BIN, Scratch, Server, System, collect, http_get, kube_client, kubectl, kubectl_ok, qemu_pids,
    upstream_example, wait_until,
};

fn virtctl(kubeconfig: &Path, args: &[&str]) -> String {
    let out = crate::support::virtctl(kubeconfig, args);
    assert!(
        out.status.success(),
        "virtctl {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// What the guest's serial console shows over `for_how_long`, through `virtctl console`.
async fn console_output(kubeconfig: &Path, name: &str, for_how_long: Duration) -> String {
    let mut child = Command::new(Path::new(BIN).with_file_name("virtctl"))
        .arg("--kubeconfig")
        .arg(kubeconfig)
        .args(["console", name])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let out = collect(child.stdout.take().unwrap());
    tokio::time::sleep(for_how_long).await;
    let _ = child.kill();
    let _ = child.wait();
    out.lock().unwrap().clone()
}

/// The counter values in `text` (`tick N` lines).
fn ticks(text: &str) -> Vec<u64> {
    text.split("tick ")
        .skip(1)
        .filter_map(|rest| {
            let digits: String = rest.chars().take_while(char::is_ascii_digit).collect();
            digits.parse().ok()
        })
        .collect()
}

async fn vmi(client: &kube::Client, name: &str) -> VirtualMachineInstance {
    let vmis: Api<VirtualMachineInstance> = Api::namespaced(client.clone(), "default");
    vmis.get(name).await.unwrap()
}

/// The VMI's `status.migrationState`, which it must have.
async fn migration_state(
    client: &kube::Client,
    name: &str,
) -> api::v1::VirtualMachineInstanceMigrationState {
    vmi(client, name)
        .await
        .status
        .unwrap()
        .migration_state
        .unwrap()
}

fn node_of(vmi: &VirtualMachineInstance) -> String {
    vmi.status.as_ref().unwrap().node_name.clone().unwrap()
}

async fn wait_running(server: &Server, client: &kube::Client, name: &str) {
    let vmis: Api<VirtualMachineInstance> = Api::namespaced(client.clone(), "default");
    wait_until(
        &format!("{name} Running"),
        Duration::from_secs(60),
        server,
        || {
            let vmis = vmis.clone();
            async move {
                let v = vmis.get_opt(name).await.ok().flatten()?;
                let phase = v.status.as_ref()?.phase?;
                (phase == api::v1::VmiPhase::Running).then_some(())
            }
        },
    )
    .await;
}

/// Waits for the migration `name` (or the only one of `vmi` when `name` is empty) to reach
/// `phase`.
async fn wait_phase(
    server: &Server,
    client: &kube::Client,
    vmi: &str,
    phase: &'static str,
    within: Duration,
) -> VirtualMachineInstanceMigration {
    let api: Api<VirtualMachineInstanceMigration> = Api::namespaced(client.clone(), "default");
    wait_until(
        &format!("a migration of {vmi} {phase}"),
        within,
        server,
        || {
            let api = api.clone();
            async move {
                let list = api.list(&Default::default()).await.ok()?;
                list.items.into_iter().find(|m| {
                    m.spec.vmi_name.as_deref() == Some(vmi)
                        && m.status.as_ref().and_then(|s| s.phase.as_deref()) == Some(phase)
                })
            }
        },
    )
    .await
}

/// The serial console logs of the launchers on this machine.
fn serial_logs(run_dir: &Path) -> Vec<PathBuf> {
    crate::support::vmi_dirs(run_dir)
        .iter()
        .map(|d| d.join("virt-serial0.log"))
        .collect()
}

/// The launcher pods of VMI `name`, as `name node phase` lines.
fn launcher_pods(kubeconfig: &Path, scratch: &Scratch, name: &str) -> Vec<String> {
    let out = kubectl_ok(
        kubeconfig,
        scratch,
        &[
            "get",
            "pods",
            "-l",
            &format!("vm.kubevirt.io/name={name}"),
            "-o",
            "jsonpath={range .items[*]}{.metadata.name} {.spec.nodeName} {.status.phase}{\"\\n\"}{end}",
        ],
    );
    out.lines().map(str::to_owned).collect()
}

/// Waits until VMI `name` has one launcher pod left (the other end's has gone).
async fn one_launcher(
    server: &Server,
    kubeconfig: &Path,
    scratch: &Scratch,
    name: &str,
) -> Vec<String> {
    wait_until(
        &format!("one launcher pod for {name}"),
        Duration::from_secs(30),
        server,
        || {
            let pods = launcher_pods(kubeconfig, scratch, name);
            async move { (pods.len() == 1).then_some(pods) }
        },
    )
    .await
}

const COUNTER: &str = r#"
apiVersion: kubevirt.io/v1
kind: VirtualMachine
metadata:
  name: counter
spec:
  runStrategy: Always
  template:
    metadata:
      labels:
        migration: slow
    spec:
      domain:
        devices:
          disks:
          - disk: {bus: virtio}
            name: containerdisk
          - disk: {bus: virtio}
            name: cloudinitdisk
          interfaces:
          - name: default
            masquerade: {}
            ports:
            - port: 18081
        memory:
          guest: 128Mi
      networks:
      - name: default
        pod: {}
      terminationGracePeriodSeconds: 0
      evictionStrategy: LiveMigrate
      volumes:
      - containerDisk:
          image: registry:5000/kubevirt/alpine-container-disk-demo:devel
        name: containerdisk
      - cloudInitNoCloud:
          userData: |
            #!/bin/sh
            i=0
            while true; do echo "tick $i"; i=$((i+1)); sleep 1; done &
            mkdir -p /www && echo counting > /www/index.html && httpd -p 18081 -h /www
        name: cloudinitdisk
"#;

/// At 1 MiB/s the guest's memory takes about a minute to move: time to cancel or kill.
const SLOW_POLICY: &str = r#"
apiVersion: migrations.kubevirt.io/v1alpha1
kind: MigrationPolicy
metadata:
  name: slow
spec:
  bandwidthPerMigration: 1Mi
  selectors:
    virtualMachineInstanceSelector:
      migration: slow
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn vmis_migrate_between_nodes_and_failed_migrations_leave_them_running() {
    let scratch = Scratch::new();
    let system = System::start_nodes(&scratch, 2).await;
    let (server, run_dir) = (&system.server, &system.run_dir);
    let kc = server.kubeconfig_path();
    let client = kube_client(&kc).await;
    let nodes = kubectl_ok(&kc, &scratch, &["get", "nodes", "-o", "name"]);
    assert_eq!(nodes.lines().count(), 2, "{nodes}");

    // The installation's KubeVirt CR, as upstream's scripts wait for it; its migration
    // settings apply to every migration (checked on the one below).
    kubectl_ok(
        &kc,
        &scratch,
        &[
            "wait",
            "kv",
            "kubevirt",
            "-n",
            "kubevirt",
            "--for",
            "condition=Available",
            "--timeout=30s",
        ],
    );
    let kv = kubectl_ok(&kc, &scratch, &["get", "kv", "-n", "kubevirt"]);
    assert!(
        kv.starts_with("NAME") && kv.contains("PHASE") && kv.contains("Deployed"),
        "{kv}"
    );
    let patch_kv = |migrations: &str| {
        let body = format!(r#"{{"spec":{{"configuration":{{"migrations":{migrations}}}}}}}"#);
        let args = [
            "patch", "kv", "kubevirt", "-n", "kubevirt", "--type", "merge", "-p", &body,
        ];
        kubectl(&kc, &scratch, &args)
    };
    let bad = patch_kv(r#"{"progressTimeout":0}"#);
    let why = String::from_utf8_lossy(&bad.stderr);
    assert!(
        !bad.status.success() && why.contains("spec.configuration.migrations.progressTimeout"),
        "{why}"
    );
    let good = patch_kv(r#"{"progressTimeout":300,"parallelMigrationsPerCluster":3}"#);
    assert!(
        good.status.success(),
        "{}",
        String::from_utf8_lossy(&good.stderr)
    );

    // Upstream's example, unchanged: vmi-migratable moves to the other node.
    kubectl_ok(
        &kc,
        &scratch,
        &["apply", "-f", &upstream_example("vmi-migratable.yaml")],
    );
    wait_running(server, &client, "vmi-migratable").await;
    let before = vmi(&client, "vmi-migratable").await;
    let source = node_of(&before);
    let wide = kubectl_ok(
        &kc,
        &scratch,
        &["get", "vmi", "vmi-migratable", "-o", "wide"],
    );
    assert!(wide.contains("LIVE-MIGRATABLE"), "{wide}");
    assert!(wide.lines().nth(1).unwrap().contains(" True "), "{wide}");
    kubectl_ok(
        &kc,
        &scratch,
        &["apply", "-f", &upstream_example("migration-job.yaml")],
    );
    let done = wait_phase(
        server,
        &client,
        "vmi-migratable",
        "Succeeded",
        Duration::from_secs(60),
    )
    .await;
    let after = vmi(&client, "vmi-migratable").await;
    let target = node_of(&after);
    assert_ne!(source, target);
    let labels = after.metadata.labels.clone().unwrap();
    assert_eq!(labels["kubevirt.io/nodeName"], target);
    assert!(!labels.contains_key("kubevirt.io/migrationTargetNodeName"));
    let state = after
        .status
        .as_ref()
        .unwrap()
        .migration_state
        .clone()
        .unwrap();
    assert_eq!(state.completed, Some(true));
    assert_eq!(state.migration_uid, done.metadata.uid);
    assert_eq!(
        (state.source_node.as_deref(), state.target_node.as_deref()),
        (Some(source.as_str()), Some(target.as_str()))
    );
    assert!(state.start_timestamp.is_some() && state.end_timestamp.is_some());
    assert_eq!(state.mode.as_deref(), Some("PreCopy"));
    let config = state.migration_configuration.clone().unwrap();
    assert_eq!(
        (
            config.progress_timeout,
            config.parallel_migrations_per_cluster
        ),
        (Some(300), Some(3)),
        "the KubeVirt CR's migration settings"
    );
    assert_eq!(
        config.completion_timeout_per_gib,
        Some(150),
        "upstream's default"
    );
    assert_eq!(
        done.status.unwrap().migration_state.unwrap().completed,
        Some(true),
        "the migration object carries the state too"
    );
    let table = kubectl_ok(&kc, &scratch, &["get", "vmim"]);
    assert!(table.starts_with("NAME") && table.contains("PHASE") && table.contains("VMI"));
    assert!(
        table.contains("migration-job") && table.contains("Succeeded"),
        "{table}"
    );
    // The source's pod and QEMU are gone: one launcher, on the target.
    let pods = one_launcher(server, &kc, &scratch, "vmi-migratable").await;
    assert!(pods[0].contains(&format!(" {target} Running")), "{pods:?}");
    assert_eq!(qemu_pids(run_dir).len(), 1);
    kubectl_ok(
        &kc,
        &scratch,
        &["delete", "vmi", "vmi-migratable", "--wait=true"],
    );
    wait_until("no QEMU left", Duration::from_secs(30), server, || {
        let left = qemu_pids(run_dir);
        async move { left.is_empty().then_some(()) }
    })
    .await;

    // A guest counting on its console keeps counting: its memory moved, and its console
    // history moved with it.
    let manifest = scratch.path("counter.yaml");
    std::fs::write(&manifest, COUNTER).unwrap();
    kubectl_ok(&kc, &scratch, &["apply", "-f", manifest.to_str().unwrap()]);
    wait_running(server, &client, "counter").await;
    let seen_before = wait_until(
        "the guest to count",
        Duration::from_secs(60),
        server,
        || {
            let kc = kc.clone();
            async move {
                let t = ticks(&console_output(&kc, "counter", Duration::from_secs(2)).await);
                t.last().copied().filter(|n| *n >= 2)
            }
        },
    )
    .await;
    let source = node_of(&vmi(&client, "counter").await);
    assert!(virtctl(&kc, &["migrate", "counter"]).contains("VM counter was scheduled to migrate"));
    wait_phase(
        server,
        &client,
        "counter",
        "Succeeded",
        Duration::from_secs(60),
    )
    .await;
    assert_ne!(node_of(&vmi(&client, "counter").await), source);
    let seen_after = ticks(&console_output(&kc, "counter", Duration::from_secs(3)).await);
    assert!(
        seen_after.first().is_some_and(|n| *n > seen_before),
        "counted {seen_before} before, then {seen_after:?}: the guest started over"
    );
    // Its forwarded port moved with it.
    wait_until(
        "the forwarded port on the target",
        Duration::from_secs(20),
        server,
        || async {
            http_get("127.0.0.1:18081")
                .await
                .filter(|b| b.contains("counting"))
        },
    )
    .await;
    let logs: Vec<PathBuf> = serial_logs(run_dir)
        .into_iter()
        .filter(|p| p.to_string_lossy().contains("default_counter-"))
        .collect();
    assert_eq!(logs.len(), 1, "{logs:?}");
    let history = String::from_utf8_lossy(&std::fs::read(&logs[0]).unwrap()).into_owned();
    let logged = ticks(&history);
    assert!(
        logged.contains(&0) && logged.contains(&seen_before),
        "the target's console log lacks the history: {logged:?}"
    );

    // Cancelled mid-way (slowed down by a MigrationPolicy): the guest stays where it was.
    let policy = scratch.path("policy.yaml");
    std::fs::write(&policy, SLOW_POLICY).unwrap();
    kubectl_ok(&kc, &scratch, &["apply", "-f", policy.to_str().unwrap()]);
    let home = node_of(&vmi(&client, "counter").await);
    virtctl(&kc, &["migrate", "counter"]);
    let running = wait_phase(
        server,
        &client,
        "counter",
        "Running",
        Duration::from_secs(60),
    )
    .await;
    let state = migration_state(&client, "counter").await;
    assert_eq!(state.migration_policy_name.as_deref(), Some("slow"));
    assert!(
        virtctl(&kc, &["migrate-cancel", "counter"])
            .contains("VM counter was scheduled to migrate-cancel")
    );
    let migrations: Api<VirtualMachineInstanceMigration> =
        Api::namespaced(client.clone(), "default");
    let name = running.metadata.name.clone().unwrap();
    wait_until(
        "the cancelled migration gone",
        Duration::from_secs(30),
        server,
        || {
            let migrations = migrations.clone();
            let name = name.clone();
            async move {
                migrations
                    .get_opt(&name)
                    .await
                    .ok()?
                    .is_none()
                    .then_some(())
            }
        },
    )
    .await;
    // The source reports the abort; the target's end may have been reported first.
    let after = wait_until(
        "the abort reported",
        Duration::from_secs(30),
        server,
        || {
            let client = client.clone();
            async move {
                let v = vmi(&client, "counter").await;
                let done = v
                    .status
                    .as_ref()?
                    .migration_state
                    .as_ref()?
                    .abort_status
                    .as_deref()
                    == Some("Succeeded");
                done.then_some(v)
            }
        },
    )
    .await;
    let state = after
        .status
        .as_ref()
        .unwrap()
        .migration_state
        .clone()
        .unwrap();
    assert_eq!(
        (
            state.failed,
            state.abort_requested,
            state.abort_status.as_deref()
        ),
        (Some(true), Some(true), Some("Succeeded")),
        "{state:?}"
    );
    assert_eq!(node_of(&after), home);
    assert_eq!(
        after.status.unwrap().phase,
        Some(api::v1::VmiPhase::Running)
    );
    one_launcher(server, &kc, &scratch, "counter").await;

    // The target killed mid-way: the migration fails, the guest runs on at the source.
    virtctl(&kc, &["migrate", "counter"]);
    wait_phase(
        server,
        &client,
        "counter",
        "Running",
        Duration::from_secs(60),
    )
    .await;
    // The streams are TLS with mutual authentication: without the migration
    // certificate, the target's disk export and hand-over give nothing.
    let state = migration_state(&client, "counter").await;
    let address = state.target_node_address.clone().unwrap();
    // The ports map says which stream each port takes: 10809 the disks, 1 the hand-over.
    let port = |stream: i32| {
        state
            .target_direct_migration_node_ports
            .iter()
            .find(|(_, s)| **s == stream)
            .map(|(p, _)| p.clone())
            .unwrap()
    };
    let nbd = std::process::Command::new("qemu-img")
        .args(["info", "--image-opts"])
        .arg(format!(
            "driver=nbd,host={address},port={},export=drive-ua-containerdisk",
            port(10809)
        ))
        .output()
        .unwrap();
    let said = String::from_utf8_lossy(&nbd.stderr).into_owned();
    assert!(
        !nbd.status.success() && said.contains("TLS"),
        "the disk export without TLS: {said}"
    );
    let handover = port(1);
    let answer = {
        use std::io::{Read, Write};
        let mut tcp =
            std::net::TcpStream::connect((address.as_str(), handover.parse().unwrap())).unwrap();
        tcp.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        let _ = tcp.write_all(b"{\"history\": 0, \"postCopy\": false}\n");
        let mut answer = Vec::new();
        let _ = tcp.read_to_end(&mut answer);
        String::from_utf8_lossy(&answer).into_owned()
    };
    assert!(!answer.contains("resumed"), "{answer}");
    // The target's QEMU is the one started last (a guest that migrated in before also
    // runs in a QEMU started with `-incoming`).
    let started = |pid: &i32| {
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
        let after_name = stat.rsplit_once(')').map_or("", |(_, rest)| rest);
        after_name
            .split_whitespace()
            .nth(19)
            .and_then(|t| t.parse::<u64>().ok())
            .unwrap_or(0)
    };
    let pids = qemu_pids(run_dir);
    assert_eq!(
        pids.len(),
        2,
        "the source's and the target's QEMU: {pids:?}"
    );
    let target_qemu = pids.iter().copied().max_by_key(started).unwrap();
    kill(Pid::from_raw(target_qemu), Signal::SIGKILL).unwrap();
    let failed = wait_phase(
        server,
        &client,
        "counter",
        "Failed",
        Duration::from_secs(60),
    )
    .await;
    let reason = failed
        .status
        .unwrap()
        .migration_state
        .unwrap()
        .failure_reason
        .unwrap_or_default();
    assert!(!reason.is_empty());
    let after = vmi(&client, "counter").await;
    assert_eq!(node_of(&after), home);
    assert_eq!(
        after.status.unwrap().phase,
        Some(api::v1::VmiPhase::Running)
    );
    let last = *seen_after.last().unwrap();
    let still = ticks(&console_output(&kc, "counter", Duration::from_secs(3)).await);
    assert!(
        still.first().is_some_and(|n| *n > last),
        "after {last}: {still:?}"
    );
    one_launcher(server, &kc, &scratch, "counter").await;

    // The completion timeout (a second per GiB, at 1 MiB/s) ends a migration that takes
    // too long; the guest stays.
    let hasty = SLOW_POLICY.replace(
        "bandwidthPerMigration: 1Mi",
        "bandwidthPerMigration: 1Mi\n  completionTimeoutPerGiB: 1",
    );
    std::fs::write(&policy, hasty).unwrap();
    kubectl_ok(&kc, &scratch, &["apply", "-f", policy.to_str().unwrap()]);
    virtctl(&kc, &["migrate", "counter"]);
    let timed_out = wait_until(
        "the migration to time out",
        Duration::from_secs(60),
        server,
        || {
            let migrations = migrations.clone();
            async move {
                let list = migrations.list(&Default::default()).await.ok()?;
                list.items.into_iter().find(|m| {
                    m.status
                        .as_ref()
                        .and_then(|s| s.migration_state.as_ref())
                        .is_some_and(|s| {
                            s.failure_reason
                                .as_deref()
                                .is_some_and(|r| r.contains("did not complete within 1s"))
                        })
                })
            }
        },
    )
    .await;
    assert_eq!(timed_out.status.unwrap().phase.as_deref(), Some("Failed"));
    let after = vmi(&client, "counter").await;
    assert_eq!(node_of(&after), home);
    assert_eq!(
        after.status.unwrap().phase,
        Some(api::v1::VmiPhase::Running)
    );
    one_launcher(server, &kc, &scratch, "counter").await;

    // Draining the node: the eviction becomes a migration, and the drain completes.
    kubectl_ok(&kc, &scratch, &["delete", "migrationpolicy", "slow"]);
    let drained = kubectl_ok(
        &kc,
        &scratch,
        &[
            "drain",
            &home,
            "--ignore-daemonsets",
            "--delete-emptydir-data",
            "--timeout=120s",
        ],
    );
    assert!(
        drained.contains(&format!("node/{home} drained")),
        "{drained}"
    );
    let after = vmi(&client, "counter").await;
    let status = after.status.clone().unwrap();
    assert_ne!(status.node_name.as_deref(), Some(home.as_str()));
    assert_eq!(status.phase, Some(api::v1::VmiPhase::Running));
    assert_eq!(status.evacuation_node_name, None);
    let evacuation = wait_phase(
        server,
        &client,
        "counter",
        "Succeeded",
        Duration::from_secs(5),
    )
    .await;
    assert!(
        evacuation
            .metadata
            .name
            .unwrap()
            .starts_with("kubevirt-evacuation-counter-")
    );
    let last = *still.last().unwrap();
    let drained_ticks = ticks(&console_output(&kc, "counter", Duration::from_secs(3)).await);
    assert!(
        drained_ticks.first().is_some_and(|n| *n > last),
        "after {last}: {drained_ticks:?}"
    );
    let nodes = kubectl_ok(&kc, &scratch, &["get", "nodes"]);
    assert!(nodes.contains("SchedulingDisabled"), "{nodes}");
    kubectl_ok(&kc, &scratch, &["uncordon", &home]);

    // Post-copy: a migration that cannot finish within its completion timeout (a second
    // per GiB, at 1 MiB/s) switches to post-copy when the policy allows it, and completes;
    // the guest moves and counts on.
    let post_copy = SLOW_POLICY.replace(
        "bandwidthPerMigration: 1Mi",
        "bandwidthPerMigration: 1Mi\n  completionTimeoutPerGiB: 1\n  allowPostCopy: true",
    );
    std::fs::write(&policy, post_copy).unwrap();
    kubectl_ok(&kc, &scratch, &["apply", "-f", policy.to_str().unwrap()]);
    let from = node_of(&vmi(&client, "counter").await);
    virtctl(&kc, &["migrate", "counter"]);
    let moved = wait_until(
        "the post-copy migration complete",
        Duration::from_secs(60),
        server,
        || {
            let client = client.clone();
            let from = from.clone();
            async move {
                let v = vmi(&client, "counter").await;
                let state = v.status.as_ref()?.migration_state.as_ref()?;
                let done = state.mode.as_deref() == Some("PostCopy")
                    && state.completed == Some(true)
                    && node_of(&v) != from;
                done.then_some(v)
            }
        },
    )
    .await;
    assert_eq!(
        moved.status.unwrap().phase,
        Some(api::v1::VmiPhase::Running)
    );
    let last = *drained_ticks.last().unwrap();
    let post_ticks = ticks(&console_output(&kc, "counter", Duration::from_secs(3)).await);
    assert!(
        post_ticks.first().is_some_and(|n| *n > last),
        "after {last}: {post_ticks:?}"
    );
    one_launcher(server, &kc, &scratch, "counter").await;

    drop(kubectl(
        &kc,
        &scratch,
        &["delete", "vm", "--all", "--wait=true", "--timeout=30s"],
    ));
}
