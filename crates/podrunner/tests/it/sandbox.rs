//! Pods in runc, from their images: what a pod can see and do of the node. Each test runs
//! what a tenant would try, in the toolbox image (busybox) from the local registry.

use std::time::Duration;

use serde_json::{Value, json};

use crate::harness::{Cluster, TOOLBOX, merge, running};

/// A pod whose container `main` runs `script` in the toolbox image; `container` and `spec`
/// are merged into the container and the pod's spec.
async fn toolbox(c: &Cluster, name: &str, script: &str, container: Value, spec: Value) -> Value {
    let mut main = json!({"name": "main", "image": TOOLBOX, "command": ["sh", "-c", script]});
    merge(&mut main, container);
    let mut extra = json!({"containers": [main]});
    merge(&mut extra, spec);
    serde_json::to_value(c.pod(name, "", extra).await).unwrap()
}

/// The pod, and its container's message, once it waits with `CreateContainerConfigError`:
/// refused before anything ran.
async fn config_error(c: &Cluster, name: &str) -> (Value, String) {
    let pod = c
        .wait_pod(name, "refused", |p| {
            p["status"]["containerStatuses"][0]["state"]["waiting"]["reason"]
                == "CreateContainerConfigError"
        })
        .await;
    let message = pod["status"]["containerStatuses"][0]["state"]["waiting"]["message"]
        .as_str()
        .unwrap_or_default()
        .to_owned();
    (pod, message)
}

/// The container's output, once the pod has ended.
async fn output(c: &Cluster, name: &str, phase: &str) -> String {
    let pod = c.wait_phase_for(name, phase, Duration::from_secs(60)).await;
    let uid = pod["metadata"]["uid"].as_str().unwrap();
    std::fs::read_to_string(c.state.path().join(uid).join("main.log")).unwrap()
}

fn own_namespace(kind: &str) -> String {
    std::fs::read_link(format!("/proc/self/ns/{kind}"))
        .unwrap()
        .display()
        .to_string()
}

#[tokio::test]
async fn a_pod_runs_from_its_image_in_namespaces_of_its_own() {
    let c = Cluster::sandboxed().await;
    toolbox(
        &c,
        "look",
        "id; for n in pid mnt ipc uts; do readlink /proc/self/ns/$n; done; \
         echo pid=$$$$; hostname; cat /etc/passwd; grep Seccomp: /proc/self/status; \
         ls /etc/kubevirt-rs 2>&1; exit 3",
        json!({}),
        json!({}),
    )
    .await;
    let out = output(&c, "look", "Failed").await;
    assert!(out.contains("uid=0(root)"), "{out}");
    for kind in ["pid", "mnt", "ipc", "uts"] {
        assert!(
            !out.contains(&own_namespace(kind)),
            "{kind} is the node's: {out}"
        );
    }
    assert!(
        out.contains("pid=1\n"),
        "the container is its own PID 1: {out}"
    );
    assert!(
        out.contains("\nlook\n"),
        "the hostname is the pod's name: {out}"
    );
    // The image's files, not the node's.
    assert!(out.contains("nobody:x:65534"), "{out}");
    assert!(!out.contains("daemon:x:1:"), "{out}");
    assert!(
        out.contains("No such file or directory"),
        "the node's /etc shows: {out}"
    );
    assert!(out.contains("Seccomp:\t2"), "no seccomp filter: {out}");
    let pod = c.wait_phase("look", "Failed").await;
    assert_eq!(
        pod["status"]["containerStatuses"][0]["state"]["terminated"]["exitCode"],
        3
    );
}

#[tokio::test]
async fn the_security_context_sets_the_user_and_takes_capabilities() {
    let c = Cluster::sandboxed().await;
    toolbox(
        &c,
        "qemu",
        "id -u; id -g; id -G; grep -E '^Cap(Eff|Bnd)' /proc/self/status; touch /x && echo wrote-root; true",
        json!({"securityContext": {"runAsUser": 107, "runAsGroup": 107, "runAsNonRoot": true,
               "readOnlyRootFilesystem": true, "capabilities": {"drop": ["ALL"], "add": ["NET_BIND_SERVICE"]}}}),
        json!({"securityContext": {"supplementalGroups": [36]}}),
    )
    .await;
    let out = output(&c, "qemu", "Succeeded").await;
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(&lines[..3], ["107", "107", "107 36"], "{out}");
    assert!(out.contains("CapEff:\t0000000000000000"), "{out}");
    // NET_BIND_SERVICE is bit 10, alone in the bounding set.
    assert!(out.contains("CapBnd:\t0000000000000400"), "{out}");
    assert!(out.contains("Read-only file system"), "{out}");
    assert!(!out.contains("wrote-root"), "{out}");

    // runAsNonRoot with an image that runs as root: refused before anything runs.
    toolbox(
        &c,
        "root",
        "true",
        json!({"securityContext": {"runAsNonRoot": true}}),
        json!({}),
    )
    .await;
    let (pod, message) = config_error(&c, "root").await;
    assert!(message.contains("runAsNonRoot"), "{message}");
    assert_eq!(pod["status"]["phase"], "Pending");
}

#[tokio::test]
async fn a_tenant_cannot_reach_the_node_through_env_path_or_args() {
    let c = Cluster::sandboxed().await;
    let secret = c.scratch("secret");
    std::fs::write(&secret, "node-secret-42").unwrap();
    let planted = c.scratch("planted");
    let host_lib = "/usr/lib/x86_64-linux-gnu/libc.so.6";
    toolbox(
        &c,
        "escape",
        "cat \"$1\"; touch \"$2\"; ls /proc/1/root/$3 2>&1; mount -t tmpfs none /tmp 2>&1; \
         unshare -r id 2>&1; echo done",
        json!({"args": ["x", secret, planted, c.scratch.path()],
               "env": [{"name": "LD_PRELOAD", "value": host_lib},
                       {"name": "PATH", "value": format!("{}:/bin", c.scratch.path().display())}]}),
        json!({}),
    )
    .await;
    let out = output(&c, "escape", "Succeeded").await;
    assert!(!out.contains("node-secret-42"), "read a node file: {out}");
    assert!(
        !std::path::Path::new(&planted).exists(),
        "wrote a node file"
    );
    assert!(out.contains("done"), "{out}");
    assert!(
        out.contains("mount: permission denied") || out.contains("Operation not permitted"),
        "mounted: {out}"
    );
    assert!(
        !out.contains("uid=0(root) gid=0(root) groups=65534"),
        "made a user namespace: {out}"
    );
    assert!(!out.contains("\nuid=0"), "made a user namespace: {out}");
}

#[tokio::test]
async fn limits_are_the_containers_cgroup_and_volumes_only_emptydir() {
    let c = Cluster::sandboxed().await;
    toolbox(
        &c,
        "limited",
        "cat /sys/fs/cgroup/memory/memory.limit_in_bytes 2>/dev/null || cat /sys/fs/cgroup/memory.max; \
         echo kept > /scratch/file; ls -ld /scratch",
        json!({"resources": {"limits": {"memory": "64Mi", "cpu": "500m"}},
               "volumeMounts": [{"name": "scratch", "mountPath": "/scratch"}]}),
        json!({"volumes": [{"name": "scratch", "emptyDir": {}}]}),
    )
    .await;
    let out = output(&c, "limited", "Succeeded").await;
    assert!(out.starts_with("67108864\n"), "{out}");
    let pod = c.wait_phase("limited", "Succeeded").await;
    let uid = pod["metadata"]["uid"].as_str().unwrap();
    let file = c
        .state
        .path()
        .join(uid)
        .join("volumes/kubernetes.io~empty-dir/scratch/file");
    assert_eq!(std::fs::read_to_string(file).unwrap(), "kept\n");

    toolbox(
        &c,
        "hostpath",
        "true",
        json!({"volumeMounts": [{"name": "etc", "mountPath": "/host"}]}),
        json!({"volumes": [{"name": "etc", "hostPath": {"path": "/etc"}}]}),
    )
    .await;
    let (_, message) = config_error(&c, "hostpath").await;
    assert!(
        message.contains("hostPath only for their namespace"),
        "{message}"
    );
}

#[tokio::test]
async fn a_sandboxed_pod_stops_on_delete_and_survives_a_runner_restart() {
    let mut c = Cluster::sandboxed().await;
    let marks = c.scratch.path().display().to_string();
    toolbox(
        &c,
        "long",
        "trap 'echo stopping; exit 7' TERM; echo up; while :; do sleep 0.1; done",
        json!({}),
        json!({"terminationGracePeriodSeconds": 10}),
    )
    .await;
    let pod = c
        .wait_phase_for("long", "Running", Duration::from_secs(60))
        .await;
    let uid = pod["metadata"]["uid"].as_str().unwrap().to_owned();
    // The shim records the container's first process once the runtime has started it.
    let init_file = c.state.path().join(&uid).join("main.init");
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while !init_file.exists() {
        assert!(std::time::Instant::now() < deadline, "no main.init");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let init = std::fs::read_to_string(init_file).unwrap();
    let init: i32 = init.split_whitespace().next().unwrap().parse().unwrap();
    assert!(running(init));
    // The container's first process runs as the image says, under the shim.
    let status = std::fs::read_to_string(format!("/proc/{init}/status")).unwrap();
    assert!(
        status.contains("NSpid:\t")
            && status
                .lines()
                .any(|l| l.starts_with("NSpid:") && l.ends_with("\t1")),
        "{status}"
    );

    c.stop_runner().await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(running(init), "the container ended with the runner");
    c.start_runner();
    c.wait_phase("long", "Running").await;

    c.pods().delete("long", &Default::default()).await.unwrap();
    c.wait_gone("long").await;
    assert!(!running(init), "the container outlived its pod");
    let _ = marks;
    assert!(
        !c.state.path().join(&uid).exists(),
        "the pod's directory is left"
    );
}

#[tokio::test]
async fn image_volumes_are_read_only_and_kvm_comes_with_its_resource() {
    let c = Cluster::sandboxed().await;
    let disk = "127.0.0.1:5000/kubevirt/cirros-container-disk-demo:devel";
    toolbox(
        &c,
        "disk",
        "ls -ln /images/disk; touch /images/disk/x 2>&1; ls -l /dev/kvm 2>&1; true",
        json!({"securityContext": {"runAsUser": 107},
               "resources": {"limits": {"devices.kubevirt.io/kvm": "1"}},
               "volumeMounts": [{"name": "disk", "mountPath": "/images"}]}),
        json!({"volumes": [{"name": "disk", "image": {"reference": disk, "pullPolicy": "IfNotPresent"}}]}),
    )
    .await;
    let out = output(&c, "disk", "Succeeded").await;
    // The containerDisk's file, owned by qemu (107) as the image has it.
    assert!(out.contains(" 107 ") && out.contains("-r--r-----"), "{out}");
    assert!(out.contains("Read-only file system"), "{out}");
    if std::path::Path::new("/dev/kvm").exists() {
        assert!(out.contains("crw-rw-rw-"), "{out}");
    }

    // Without the resource, no /dev/kvm.
    toolbox(&c, "nokvm", "ls /dev/kvm 2>&1; true", json!({}), json!({})).await;
    let out = output(&c, "nokvm", "Succeeded").await;
    assert!(out.contains("No such file or directory"), "{out}");
}

#[tokio::test]
async fn a_volume_named_like_a_path_or_a_capability_beyond_the_baseline_is_refused() {
    let c = Cluster::sandboxed().await;
    // A volume named "/" would have been the node's root directory.
    toolbox(
        &c,
        "slash",
        "true",
        json!({"volumeMounts": [{"name": "/", "mountPath": "/host"}]}),
        json!({"volumes": [{"name": "/", "emptyDir": {}}]}),
    )
    .await;
    let pod = c.wait_phase("slash", "Failed").await;
    let message = pod["status"]["message"].to_string();
    assert!(message.contains("volume name"), "{pod}");
    toolbox(
        &c,
        "admin",
        "true",
        json!({"securityContext": {"capabilities": {"add": ["SYS_ADMIN"]}}}),
        json!({}),
    )
    .await;
    let (_, message) = config_error(&c, "admin").await;
    assert!(message.contains("may not be added"), "{message}");
    // The node's root is as it was.
    let mode = std::fs::metadata("/").unwrap();
    use std::os::unix::fs::PermissionsExt;
    assert_eq!(mode.permissions().mode() & 0o777, 0o755);
}
