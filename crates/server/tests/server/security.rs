//! Attacks a namespace user could try on the node, each one made for real and each
//! refused or contained with the error the user sees (`make test-security`). The user is
//! alice, with upstream's `kubevirt.io:edit` in her namespace and nothing else.
//! (`virtctl vnc --web`'s token and Origin check are attacked in `browser.rs`.)

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use serde_json::Value;

use crate::support::{Scratch, System, kubectl, kubectl_ok, wait_until};

const NS: &str = "default";

/// A VMI booting one containerDisk; `extra` goes into the VMI's spec as JSON members.
fn vmi(name: &str, disk: &str, image: &str, path: Option<&str>) -> String {
    let path = path.map_or(String::new(), |p| format!(", \"path\": {p:?}"));
    format!(
        r#"{{"apiVersion": "kubevirt.io/v1", "kind": "VirtualMachineInstance",
  "metadata": {{"name": "{name}", "namespace": "{NS}"}},
  "spec": {{"domain": {{"memory": {{"guest": "64Mi"}},
    "devices": {{"disks": [{{"name": {disk:?}, "disk": {{"bus": "virtio"}}}}]}}}},
    "volumes": [{{"name": {disk:?}, "containerDisk": {{"image": "{image}"{path}}}}}]}}}}"#
    )
}

/// A VMI with one hostDisk at `path`.
fn host_disk_vmi(name: &str, path: &Path) -> String {
    format!(
        r#"{{"apiVersion": "kubevirt.io/v1", "kind": "VirtualMachineInstance",
  "metadata": {{"name": "{name}", "namespace": "{NS}"}},
  "spec": {{"domain": {{"memory": {{"guest": "64Mi"}},
    "devices": {{"disks": [{{"name": "data", "disk": {{"bus": "virtio"}}}}]}}}},
    "volumes": [{{"name": "data", "hostDisk": {{"path": {path:?}, "type": "DiskOrCreate", "capacity": "64Mi"}}}}]}}}}"#
    )
}

/// Gives alice `role` in `ns` through the RoleBinding `name`.
fn bind_alice(kc: &Path, scratch: &Scratch, name: &str, role: &str, ns: &str) {
    let role = format!("--clusterrole={role}");
    kubectl_ok(
        kc,
        scratch,
        &[
            "create",
            "rolebinding",
            name,
            &role,
            "--user=alice",
            "-n",
            ns,
        ],
    );
}

struct Tenant<'a> {
    kc: PathBuf,
    scratch: &'a Scratch,
}

impl Tenant<'_> {
    /// `kubectl --as alice apply` of `manifest`: Ok(stdout) or Err(stderr).
    fn apply(&self, manifest: &str) -> Result<String, String> {
        let file = self.scratch.path("attempt.json");
        std::fs::write(&file, manifest).unwrap();
        let out = kubectl(
            &self.kc,
            self.scratch,
            &["--as", "alice", "apply", "-f", file.to_str().unwrap()],
        );
        let text = |b: &[u8]| String::from_utf8_lossy(b).trim().to_owned();
        if out.status.success() {
            Ok(text(&out.stdout))
        } else {
            Err(text(&out.stderr))
        }
    }

    /// The refusal of `manifest`, asserting it names `field` and says `why`.
    fn refused(&self, manifest: &str, field: &str, why: &str) {
        let err = self.apply(manifest).expect_err("the attempt was admitted");
        assert!(err.contains("is invalid"), "{err}");
        assert!(err.contains(field), "{field} not named: {err}");
        assert!(err.contains(why), "{why:?} not said: {err}");
    }
}

/// The VMI's Synchronized condition's message once it has failed.
async fn failure(system: &System, tenant: &Tenant<'_>, name: &str) -> String {
    wait_until(
        &format!("VMI {name} failed"),
        Duration::from_secs(60),
        &system.server,
        || async {
            let out = kubectl(
                &tenant.kc,
                tenant.scratch,
                &["-n", NS, "get", "vmi", name, "-o", "json"],
            );
            let v: Value = serde_json::from_slice(&out.stdout).ok()?;
            if v["status"]["phase"] != "Failed" {
                return None;
            }
            v["status"]["conditions"]
                .as_array()?
                .iter()
                .find(|c| c["type"] == "Synchronized")
                .and_then(|c| c["message"].as_str())
                .map(str::to_owned)
        },
    )
    .await
}

/// Pushes a containerDisk holding `file` (at `/disk/<its name>`) as `repo:devel` to the
/// test registry, with the guests' own packaging script.
fn push_disk(scratch: &Scratch, file: &Path, repo: &str) {
    let layout = scratch.path("layout");
    let guest = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../guest/oci.py");
    let name = file.file_name().unwrap().to_str().unwrap();
    let status = Command::new("python3")
        .arg(guest)
        .arg(&layout)
        .arg("devel")
        .arg(format!("{}=/disk/{name}", file.display()))
        .stdout(std::process::Stdio::null())
        .status()
        .unwrap();
    assert!(status.success());
    let status = Command::new("skopeo")
        .args(["copy", "-q", "--dest-tls-verify=false"])
        .arg(format!("oci:{}:devel", layout.display()))
        .arg(format!("docker://127.0.0.1:5000/{repo}:devel"))
        .status()
        .unwrap();
    assert!(status.success(), "skopeo could not push {repo}");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_tenant_cannot_reach_the_nodes_files() {
    let scratch = Scratch::new();
    let system = System::start(&scratch).await;
    let kc = system.server.kubeconfig_path();
    bind_alice(&kc, &scratch, "alice-vms", "kubevirt.io:edit", NS);
    let tenant = Tenant {
        kc: kc.clone(),
        scratch: &scratch,
    };
    wait_until(
        "alice may create VMIs",
        Duration::from_secs(30),
        &system.server,
        || async {
            let out = kubectl(
                &kc,
                &scratch,
                &[
                    "--as",
                    "alice",
                    "auth",
                    "can-i",
                    "create",
                    "virtualmachineinstances.kubevirt.io",
                    "-n",
                    NS,
                ],
            );
            (String::from_utf8_lossy(&out.stdout).trim() == "yes").then_some(())
        },
    )
    .await;
    let image = "registry:5000/kubevirt/cirros-container-disk-demo:devel";

    // 1. A containerDisk path, or a kernel's, that climbs out of the image.
    tenant.refused(
        &vmi(
            "shadow",
            "root",
            image,
            Some("/../../../../../../etc/shadow"),
        ),
        "spec.volumes[0].containerDisk.path",
        "must be an absolute path to a file in the image",
    );
    let kernel = r#"{"apiVersion": "kubevirt.io/v1", "kind": "VirtualMachineInstance",
      "metadata": {"name": "kernel", "namespace": "default"},
      "spec": {"domain": {"memory": {"guest": "64Mi"}, "devices": {},
        "firmware": {"kernelBoot": {"container": {"image": "x",
          "kernelPath": "/boot/../../etc/shadow"}}}}}}"#;
    tenant.refused(
        kernel,
        "spec.domain.firmware.kernelBoot.container.kernelPath",
        "without '.', '..' or empty components",
    );

    // 2. An image whose qcow2 header names a host file as its backing file: admitted
    // (the image is the tenant's), refused by the launcher before QEMU opens anything.
    let evil = scratch.path("evil.qcow2");
    let made = Command::new("qemu-img")
        .args([
            "create",
            "-q",
            "-f",
            "qcow2",
            "-u",
            "-b",
            "/etc/shadow",
            "-F",
            "raw",
        ])
        .arg(&evil)
        .arg("64M")
        .status()
        .unwrap();
    assert!(made.success());
    push_disk(&scratch, &evil, "kubevirt-rs/evil-backing");
    tenant
        .apply(&vmi(
            "backing",
            "root",
            "registry:5000/kubevirt-rs/evil-backing:devel",
            None,
        ))
        .unwrap();
    let message = failure(&system, &tenant, "backing").await;
    assert!(
        message.contains("names a backing file (\"/etc/shadow\")"),
        "{message}"
    );

    // 3. Names and values that would add QEMU options if they were not checked.
    tenant.refused(
        &vmi("comma", "root,file.filename=/etc/shadow", image, None),
        "spec.domain.devices.disks[0].name",
        "is not a valid DNS-1123 label",
    );
    let serial = vmi("serial", "root", image, None).replace(
        r#""bus": "virtio"}"#,
        r#""bus": "virtio"}, "serial": "x,drive=other""#,
    );
    tenant.refused(
        &serial,
        "spec.domain.devices.disks[0].serial",
        "may contain only letters, digits",
    );

    let machine = vmi("machine", "root", image, None).replace(
        r#""memory": {"guest": "64Mi"},"#,
        r#""memory": {"guest": "64Mi"}, "machine": {"type": "pc-q35-9.0,initrd=/etc/shadow"},"#,
    );
    tenant.refused(&machine, "spec.domain.machine.type", "pc-q35-X.Y");

    // A status written at creation (a node, a phase) is not kept: the VMI starts Pending
    // with nothing else (a server-side dry run shows what would be stored).
    let forged = vmi("forged", "root", image, None).replace(
        r#""metadata": {"name": "forged", "namespace": "default"},"#,
        r#""metadata": {"name": "forged", "namespace": "default"},
           "status": {"phase": "Running", "nodeName": "node1", "activePods": {"x": "node1"}},"#,
    );
    let file = scratch.path("forged.json");
    std::fs::write(&file, &forged).unwrap();
    let stored: Value = serde_json::from_str(&kubectl_ok(
        &kc,
        &scratch,
        &[
            "--as",
            "alice",
            "create",
            "--dry-run=server",
            "-o",
            "json",
            "-f",
            file.to_str().unwrap(),
        ],
    ))
    .unwrap();
    assert_eq!(stored["status"]["phase"], "Pending", "{stored}");
    assert!(stored["status"]["nodeName"].is_null(), "{stored}");
    assert!(stored["status"]["activePods"].is_null(), "{stored}");

    // 4. hostDisk: off unless the KubeVirt CR turns the gate on ...
    tenant.refused(
        &host_disk_vmi("host", Path::new("/etc/shadow")),
        "spec.volumes[0].hostDisk",
        "the HostDisk feature gate is not enabled",
    );
    kubectl_ok(
        &kc,
        &scratch,
        &[
            "-n",
            "kubevirt",
            "patch",
            "kv",
            "kubevirt",
            "--type",
            "merge",
            "-p",
            r#"{"spec":{"configuration":{"developerConfiguration":{"featureGates":["HostDisk"]}}}}"#,
        ],
    );
    // ... and then only inside the server's host-disk directories.
    tenant.refused(
        &host_disk_vmi("host", Path::new("/etc/shadow")),
        "spec.volumes[0].hostDisk.path",
        "is not in a directory this cluster allows host disks in",
    );
    // Each namespace has a directory of its own there: another's is refused.
    let allowed = system.server.data.join("host-disks").join(NS);
    tenant.refused(
        &host_disk_vmi(
            "theirs",
            &system.server.data.join("host-disks/other/theirs.img"),
        ),
        "spec.volumes[0].hostDisk.path",
        "is not in a directory this cluster allows host disks in",
    );
    tenant
        .apply(&host_disk_vmi("fine", &allowed.join("fine.img")))
        .unwrap();
    // Its launcher, in a sandbox, has that directory and makes the disk there.
    wait_until(
        "the host disk made by the sandboxed launcher",
        Duration::from_secs(60),
        &system.server,
        || async { allowed.join("fine.img").is_file().then_some(()) },
    )
    .await;
    kubectl_ok(
        &kc,
        &scratch,
        &["-n", NS, "delete", "vmi", "fine", "--wait=false"],
    );
    // A link inside the allowed directory that leads out passes admission, which sees
    // only the path, and is refused by the launcher, which resolves it.
    std::fs::create_dir_all(&allowed).unwrap();
    std::os::unix::fs::symlink("/etc/shadow", allowed.join("link.img")).unwrap();
    tenant
        .apply(&host_disk_vmi("link", &allowed.join("link.img")))
        .unwrap();
    let message = failure(&system, &tenant, "link").await;
    assert!(
        message.contains("is not in a directory this node allows host disks in"),
        "{message}"
    );

    // 5. A pod whose container name climbs out of its directory on the node, where the
    // runner keeps `<container>.log`: refused before anything is written.
    let target = scratch.path("pwned");
    let pod = serde_json::json!({"apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": "sneaky", "namespace": NS},
        "spec": {"containers": [{
            "name": format!("../../../../../../../../../../..{}", target.display()),
            "image": format!("kubevirt-rs/virt-launcher:{}", env!("CARGO_PKG_VERSION"))}]}});
    let file = scratch.path("pod.json");
    std::fs::write(&file, pod.to_string()).unwrap();
    kubectl_ok(&kc, &scratch, &["apply", "-f", file.to_str().unwrap()]);
    let status = wait_until(
        "the pod refused",
        Duration::from_secs(30),
        &system.server,
        || async {
            let out = kubectl(
                &kc,
                &scratch,
                &["-n", NS, "get", "pod", "sneaky", "-o", "json"],
            );
            let v: Value = serde_json::from_slice(&out.stdout).ok()?;
            (v["status"]["phase"] == "Failed").then(|| v["status"].clone())
        },
    )
    .await;
    assert_eq!(status["reason"], "UnsupportedPodSpec", "{status}");
    assert!(
        status["message"].as_str().unwrap().contains("DNS-1123"),
        "{status}"
    );
    for ext in ["log", "pid", "exit"] {
        assert!(!target.with_extension(ext).exists(), "{ext} written");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_namespace_admin_cannot_grant_what_they_do_not_hold() {
    let scratch = Scratch::new();
    let server = crate::support::Server::start(&scratch).await;
    let kc = server.kubeconfig_path();
    let run = |args: &[&str]| kubectl(&kc, &scratch, args);
    kubectl_ok(&kc, &scratch, &["create", "namespace", "team"]);
    bind_alice(&kc, &scratch, "alice-admin", "admin", "team");
    let as_alice = |args: &[&str]| {
        let mut all = vec!["--as", "alice", "-n", "team"];
        all.extend_from_slice(args);
        let out = run(&all);
        (
            out.status.success(),
            String::from_utf8_lossy(&out.stderr).trim().to_owned(),
        )
    };
    // Binding cluster-admin in her namespace would make alice cluster-admin there (and
    // grant the non-resource URLs): refused.
    let (ok, err) = as_alice(&[
        "create",
        "rolebinding",
        "mine",
        "--clusterrole=cluster-admin",
        "--user=alice",
    ]);
    assert!(!ok);
    assert!(
        err.contains("is attempting to grant RBAC permissions not currently held"),
        "{err}"
    );
    // A role with a permission she lacks (nodes are cluster-scoped): refused.
    let (ok, err) = as_alice(&["create", "role", "nodes", "--verb=get", "--resource=nodes"]);
    assert!(!ok);
    assert!(
        err.contains("not currently held: get on \"nodes\""),
        "{err}"
    );
    // What she holds she may hand on: view to bob, and a role within her rights.
    let (ok, err) = as_alice(&[
        "create",
        "rolebinding",
        "bob-view",
        "--clusterrole=view",
        "--user=bob",
    ]);
    assert!(ok, "{err}");
    let (ok, err) = as_alice(&["create", "role", "pods", "--verb=get", "--resource=pods"]);
    assert!(ok, "{err}");
    assert_eq!(
        String::from_utf8_lossy(
            &run(&["--as", "bob", "auth", "can-i", "list", "pods", "-n", "team"]).stdout
        )
        .trim(),
        "yes"
    );
    // A role that repeats what she holds costs one check per distinct permission, and one
    // too large to check is refused (it would need escalate): no write keeps the server
    // busy.
    let role = |name: &str, verbs: Vec<String>, resources: Vec<String>| {
        let file = scratch.path("role.json");
        let role = serde_json::json!({"apiVersion": "rbac.authorization.k8s.io/v1",
            "kind": "Role", "metadata": {"name": name, "namespace": "team"},
            "rules": [{"apiGroups": [""], "verbs": verbs, "resources": resources}]});
        std::fs::write(&file, role.to_string()).unwrap();
        as_alice(&["create", "-f", file.to_str().unwrap()])
    };
    let started = std::time::Instant::now();
    let (ok, err) = role(
        "repeats",
        vec!["get".into(); 20_000],
        vec!["pods".into(); 20_000],
    );
    assert!(ok, "{err}");
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "{:?}",
        started.elapsed()
    );
    let (ok, err) = role(
        "wide",
        (0..120).map(|i| format!("verb{i}")).collect(),
        (0..100).map(|i| format!("res{i}")).collect(),
    );
    assert!(!ok);
    assert!(
        err.contains("may not grant 12000 permissions at once"),
        "{err}"
    );
    // Nor can she turn a binding she made into one of cluster-admin.
    let (ok, err) = as_alice(&[
        "patch",
        "rolebinding",
        "bob-view",
        "--type",
        "merge",
        "-p",
        r#"{"roleRef":{"apiGroup":"rbac.authorization.k8s.io","kind":"ClusterRole","name":"cluster-admin"}}"#,
    ]);
    assert!(!ok);
    assert!(err.contains("not currently held"), "{err}");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_tenant_cannot_take_another_services_address() {
    let scratch = Scratch::new();
    let server = crate::support::Server::start(&scratch).await;
    let kc = server.kubeconfig_path();
    kubectl_ok(&kc, &scratch, &["create", "namespace", "team"]);
    bind_alice(&kc, &scratch, "alice-edit", "edit", "team");
    let apply = |svc: Value| {
        let file = scratch.path("svc.json");
        std::fs::write(&file, svc.to_string()).unwrap();
        let out = kubectl(
            &kc,
            &scratch,
            &[
                "--as",
                "alice",
                "-n",
                "team",
                "apply",
                "-f",
                file.to_str().unwrap(),
            ],
        );
        (
            out.status.success(),
            String::from_utf8_lossy(&out.stderr).trim().to_owned(),
        )
    };
    let svc = |name: &str, spec: Value| {
        let mut spec = spec;
        spec["selector"] = serde_json::json!({"app": name});
        serde_json::json!({"apiVersion": "v1", "kind": "Service",
            "metadata": {"name": name, "namespace": "team"}, "spec": spec})
    };
    // The host's own loopback address (the API server's port): not a service address.
    let (ok, err) = apply(svc(
        "api",
        serde_json::json!({"clusterIP": "127.0.0.1", "ports": [{"port": 6443}]}),
    ));
    assert!(!ok);
    assert!(err.contains("is not in the valid range"), "{err}");
    // An address another Service holds.
    let (ok, err) = apply(svc(
        "first",
        serde_json::json!({"clusterIP": "127.10.5.5", "ports": [{"port": 80}]}),
    ));
    assert!(ok, "{err}");
    let (ok, err) = apply(svc(
        "second",
        serde_json::json!({"clusterIP": "127.10.5.5", "ports": [{"port": 80}]}),
    ));
    assert!(!ok);
    assert!(err.contains("provided IP is already allocated"), "{err}");
    // A cluster IP cannot be moved onto it afterwards either.
    let (ok, err) = apply(svc("second", serde_json::json!({"ports": [{"port": 80}]})));
    assert!(ok, "{err}");
    let (ok, err) = apply(svc(
        "second",
        serde_json::json!({"clusterIP": "127.10.5.5", "ports": [{"port": 80}]}),
    ));
    assert!(!ok);
    assert!(err.contains("field is immutable"), "{err}");
    // Node ports: one Service each, on create and on update.
    let node_port =
        |n: u64| serde_json::json!({"type": "NodePort", "ports": [{"port": 80, "nodePort": n}]});
    let (ok, err) = apply(svc("np1", node_port(30500)));
    assert!(ok, "{err}");
    let (ok, err) = apply(svc("np2", node_port(30500)));
    assert!(!ok);
    assert!(err.contains("provided port is already allocated"), "{err}");
    let (ok, err) = apply(svc("np2", node_port(30501)));
    assert!(ok, "{err}");
    let (ok, err) = apply(svc("np2", node_port(30500)));
    assert!(!ok);
    assert!(err.contains("provided port is already allocated"), "{err}");
    // A node port on a type without node ports (the proxy would serve it all the same).
    let (ok, err) = apply(svc(
        "sneaky",
        serde_json::json!({"ports": [{"port": 80, "nodePort": 30500}]}),
    ));
    assert!(!ok);
    assert!(
        err.contains("may not be used when `type` is 'ClusterIP'"),
        "{err}"
    );
    // An ExternalName Service has no cluster IP to check: it cannot become a ClusterIP
    // Service with one afterwards.
    let (ok, err) = apply(svc(
        "external",
        serde_json::json!({"type": "ExternalName", "externalName": "example.org"}),
    ));
    assert!(ok, "{err}");
    let (ok, err) = apply(svc(
        "external",
        serde_json::json!({"type": "ClusterIP", "clusterIP": "127.10.5.5", "ports": [{"port": 80}]}),
    ));
    assert!(!ok);
    assert!(err.contains("cannot change its type"), "{err}");
}

#[tokio::test(flavor = "multi_thread")]
async fn internal_endpoints_answer_only_their_callers() {
    use crate::support::{Tls, https_client};
    let scratch = Scratch::new();
    let system = System::start(&scratch).await;
    let server = &system.server;
    let kc = server.kubeconfig_path();
    let node: Value = serde_json::from_str(&kubectl_ok(
        &kc,
        &scratch,
        &["get", "node", "node1", "-o", "json"],
    ))
    .unwrap();
    let log_port = node["status"]["daemonEndpoints"]["kubeletEndpoint"]["Port"]
        .as_u64()
        .unwrap();
    let handler = node["metadata"]["annotations"]["kubevirt.io/handler-endpoint"]
        .as_str()
        .unwrap()
        .trim_end_matches('/')
        .to_owned();
    let tls = server.data.join("tls");
    let pair = |stem: &str| {
        (
            std::fs::read_to_string(tls.join(format!("{stem}.crt"))).unwrap(),
            std::fs::read_to_string(tls.join(format!("{stem}.key"))).unwrap(),
        )
    };
    let ca = server.ca_pem();
    // The admin's certificate and another component's are from the same CA: a chain
    // alone no longer opens these endpoints. Only the API server reads logs, and only
    // virt-api calls handlers.
    let admin = pair("admin");
    let front_proxy = pair("front-proxy-client");
    let logs = format!("https://127.0.0.1:{log_port}/containerLogs/default/none/compute");
    let status = |identity: Option<&(String, String)>, url: String| {
        let client = https_client(
            &ca,
            Tls {
                identity: identity.map(|(c, k)| (c.as_str(), k.as_str())),
                http1_only: true,
            },
        );
        async move { client.get(url).send().await.map(|r| r.status().as_u16()) }
    };
    for who in [None, Some(&admin)] {
        assert!(
            status(who, logs.clone()).await.is_err(),
            "the log endpoint answered {}",
            if who.is_some() {
                "the admin"
            } else {
                "no certificate"
            }
        );
    }
    // The API server's own identity is let in (the pod is unknown: 404).
    assert_eq!(status(Some(&front_proxy), logs).await.unwrap(), 404);
    let op = format!("{handler}/v1/namespaces/default/virtualmachineinstances/none/pause");
    for who in [None, Some(&admin), Some(&front_proxy)] {
        assert!(
            status(who, op.clone()).await.is_err(),
            "the handler answered a caller other than virt-api"
        );
    }
    // virt-api's identity gets an answer (no such VMI on the node).
    let answered = status(Some(&pair("virt-api")), op).await.unwrap();
    assert!((400..500).contains(&answered), "{answered}");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_request_head_that_never_ends_loses_its_connection() {
    use rustls::pki_types::pem::PemObject;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let scratch = Scratch::new();
    let server = crate::support::Server::start(&scratch).await;
    let mut roots = rustls::RootCertStore::empty();
    for cert in rustls::pki_types::CertificateDer::pem_slice_iter(&server.ca_pem()) {
        roots.add(cert.unwrap()).unwrap();
    }
    let config = rustls::ClientConfig::builder_with_provider(std::sync::Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_root_certificates(roots)
    .with_no_client_auth();
    let tcp = tokio::net::TcpStream::connect(("127.0.0.1", server.port))
        .await
        .unwrap();
    let mut tls = tokio_rustls::TlsConnector::from(std::sync::Arc::new(config))
        .connect("localhost".try_into().unwrap(), tcp)
        .await
        .unwrap();
    // A head that starts and never ends, as a slow-header attack sends it.
    tls.write_all(b"GET /version HTTP/1.1\r\nHost: localhost\r\nX-Slow: ")
        .await
        .unwrap();
    let started = std::time::Instant::now();
    let mut buf = [0u8; 256];
    let closed = tokio::time::timeout(Duration::from_secs(45), tls.read(&mut buf)).await;
    assert!(
        closed.is_ok(),
        "the connection was still open after {:?}",
        started.elapsed()
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn the_kubevirt_cr_says_when_a_component_is_missing() {
    let scratch = Scratch::new();
    let system = System::start(&scratch).await;
    let kc = system.server.kubeconfig_path();
    let available = || {
        let out = kubectl(
            &kc,
            &scratch,
            &[
                "get",
                "kv",
                "kubevirt",
                "-n",
                "kubevirt",
                "-o",
                "jsonpath={.status.conditions[?(@.type=='Available')].status} {.status.conditions[?(@.type=='Available')].message}",
            ],
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    wait_until(
        "Available",
        Duration::from_secs(40),
        &system.server,
        || async { available().starts_with("True ").then_some(()) },
    )
    .await;
    // virt-api unreachable (its APIService gone): the CR no longer claims availability.
    kubectl_ok(
        &kc,
        &scratch,
        &["delete", "apiservice", "v1.subresources.kubevirt.io"],
    );
    let said = wait_until(
        "Available False",
        Duration::from_secs(40),
        &system.server,
        || async {
            let a = available();
            a.starts_with("False ").then_some(a)
        },
    )
    .await;
    assert!(said.contains("virt-api does not answer"), "{said}");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_vmis_files_on_the_node_are_its_launchers_alone() {
    use std::os::unix::fs::PermissionsExt;
    let scratch = Scratch::new();
    let system = System::start(&scratch).await;
    let kc = system.server.kubeconfig_path();
    let manifest = crate::support::upstream_example("vmi-nocloud.yaml");
    kubectl_ok(&kc, &scratch, &["apply", "-f", &manifest]);
    // The guest's run directory once its console log is there: overlays, the cloud-init
    // ISO (user data may carry passwords and keys), sockets and logs.
    let dir = wait_until(
        "the VMI's run directory",
        Duration::from_secs(60),
        &system.server,
        || async {
            crate::support::vmi_dirs(&system.run_dir)
                .into_iter()
                .find(|p| {
                    p.file_name()
                        .is_some_and(|n| n.to_string_lossy().starts_with("default_vmi-nocloud-"))
                })
        },
    )
    .await;
    let mut seen = Vec::new();
    let mut todo = vec![dir];
    while let Some(path) = todo.pop() {
        let meta = std::fs::symlink_metadata(&path).unwrap();
        let mode = meta.permissions().mode() & 0o777;
        assert_eq!(mode & 0o077, 0, "{} is {mode:o}", path.display());
        if meta.is_dir() {
            todo.extend(
                std::fs::read_dir(&path)
                    .unwrap()
                    .flatten()
                    .map(|e| e.path()),
            );
        }
        seen.push(path.file_name().unwrap().to_string_lossy().into_owned());
    }
    for expected in [
        "cloudinitdisk.iso",
        "containerdisk.qcow2",
        "virt-serial0.log",
    ] {
        assert!(
            seen.iter().any(|s| s == expected),
            "{expected} not in {seen:?}"
        );
    }
}

/// Issue 12: a launcher pod is a sandbox. QEMU runs as qemu (107) with no capabilities,
/// under a seccomp filter, in mount and PID namespaces of its own; the pod asks for it.
#[tokio::test(flavor = "multi_thread")]
async fn a_guests_qemu_runs_unprivileged_in_its_own_namespaces() {
    let scratch = Scratch::new();
    let system = System::start(&scratch).await;
    let kc = system.server.kubeconfig_path();
    let file = scratch.path("sandboxed.json");
    std::fs::write(
        &file,
        vmi(
            "sandboxed",
            "root",
            "kubevirt/cirros-container-disk-demo:devel",
            None,
        ),
    )
    .unwrap();
    kubectl_ok(&kc, &scratch, &["apply", "-f", &file.display().to_string()]);
    let qemu = wait_until(
        "a running QEMU",
        Duration::from_secs(60),
        &system.server,
        || async { crate::support::qemu_pids(&system.run_dir).first().copied() },
    )
    .await;
    let status = std::fs::read_to_string(format!("/proc/{qemu}/status")).unwrap();
    let field = |name: &str| {
        status
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .unwrap_or_default()
            .trim()
            .to_owned()
    };
    assert_eq!(field("Uid:"), "107\t107\t107\t107", "{status}");
    assert_eq!(field("Gid:"), "107\t107\t107\t107", "{status}");
    assert_eq!(field("CapEff:"), "0000000000000000");
    assert_eq!(field("CapPrm:"), "0000000000000000");
    assert_eq!(field("NoNewPrivs:"), "1");
    assert_eq!(field("Seccomp:"), "2");
    for ns in ["mnt", "pid", "ipc", "uts"] {
        let theirs = std::fs::read_link(format!("/proc/{qemu}/ns/{ns}")).unwrap();
        let ours = std::fs::read_link(format!("/proc/self/ns/{ns}")).unwrap();
        assert_ne!(theirs, ours, "QEMU shares the server's {ns} namespace");
    }
    // The node's files are not in its view: its root is the launcher image.
    assert!(!Path::new(&format!("/proc/{qemu}/root/etc/kubevirt-rs")).exists());
    assert!(
        std::fs::read_to_string(format!("/proc/{qemu}/root/etc/passwd"))
            .unwrap()
            .contains("qemu:x:107:107")
    );
    // A tenant who may create pods cannot make one of their own pass for this VMI's
    // launcher, which the handler would send the VMI and a migration's key.
    bind_alice(&kc, &scratch, "alice-edit", "edit", NS);
    let tenant = Tenant {
        kc: kc.clone(),
        scratch: &scratch,
    };
    let uid = kubectl_ok(
        &kc,
        &scratch,
        &["get", "vmi", "sandboxed", "-o", "jsonpath={.metadata.uid}"],
    );
    let forged = format!(
        r#"{{"apiVersion": "v1", "kind": "Pod", "metadata": {{"name": "forged", "namespace": "{NS}",
  "labels": {{"kubevirt.io": "virt-launcher", "kubevirt.io/created-by": "{uid}"}},
  "ownerReferences": [{{"apiVersion": "kubevirt.io/v1", "kind": "VirtualMachineInstance",
    "name": "sandboxed", "uid": "{uid}", "controller": true}}]}},
  "spec": {{"containers": [{{"name": "c", "image": "127.0.0.1:5000/kubevirt-rs/toolbox:devel"}}]}}}}"#
    );
    let err = tenant
        .apply(&forged)
        .expect_err("the forged launcher pod was admitted");
    assert!(err.contains("virt-controller's to create"), "{err}");

    // The pod says so too.
    let pod = kubectl_ok(
        &kc,
        &scratch,
        &[
            "get",
            "pods",
            "-l",
            "vm.kubevirt.io/name=sandboxed",
            "-o",
            "json",
        ],
    );
    let pod: Value = serde_json::from_str(&pod).unwrap();
    let spec = &pod["items"][0]["spec"];
    assert_eq!(spec["securityContext"]["runAsUser"], 107);
    assert_eq!(spec["securityContext"]["runAsNonRoot"], true);
    assert_eq!(
        spec["containers"][0]["securityContext"]["capabilities"]["drop"],
        serde_json::json!(["ALL"])
    );
}
