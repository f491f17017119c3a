//! The API server as a user drives it with the real kubectl (v1.32 on PATH), with client
//! validation on (no `--validate=false`).

#![allow(clippy::unwrap_used)]

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

mod common;

struct Cluster {
    url: String,
    dir: tempfile::TempDir,
}

impl Cluster {
    async fn start() -> Self {
        let state = apiserver::AppState::start(Arc::new(store::MemStore::new()))
            .await
            .unwrap();
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        tokio::spawn(async move { axum::serve(listener, apiserver::router(state)).await });
        Self {
            url,
            dir: tempfile::tempdir().unwrap(),
        }
    }

    fn command(&self, args: &[&str]) -> Command {
        let mut cmd = Command::new("kubectl");
        cmd.arg("--server")
            .arg(&self.url)
            .arg("--cache-dir")
            .arg(self.dir.path().join("cache"))
            .args(args)
            .env("KUBECONFIG", self.dir.path().join("no-kubeconfig"))
            .env("HOME", self.dir.path())
            .stdin(Stdio::null());
        cmd
    }

    /// Runs kubectl off the async runtime, so the server keeps serving.
    async fn run(&self, args: &[&str]) -> Output {
        let mut cmd = self.command(args);
        tokio::task::spawn_blocking(move || cmd.output().unwrap())
            .await
            .unwrap()
    }

    /// kubectl's stdout; panics with its stderr when it fails.
    async fn ok(&self, args: &[&str]) -> String {
        let out = self.run(args).await;
        assert!(
            out.status.success(),
            "kubectl {args:?} failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).unwrap()
    }

    /// kubectl's stderr; panics when it succeeds.
    async fn fails(&self, args: &[&str]) -> String {
        let out = self.run(args).await;
        assert!(
            !out.status.success(),
            "kubectl {args:?} succeeded: {}",
            String::from_utf8_lossy(&out.stdout)
        );
        String::from_utf8(out.stderr).unwrap()
    }

    fn write(&self, name: &str, text: &str) -> PathBuf {
        let path = self.dir.path().join(name);
        std::fs::write(&path, text).unwrap();
        path
    }

    /// Polls `kubectl args` until its output satisfies `done`.
    async fn eventually(&self, args: &[&str], done: impl Fn(&str) -> bool) -> String {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let out = self.run(args).await;
            let text = String::from_utf8_lossy(&out.stdout).into_owned()
                + &String::from_utf8_lossy(&out.stderr);
            if done(&text) {
                return text;
            }
            assert!(Instant::now() < deadline, "kubectl {args:?}: still {text}");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

fn example(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../../shared/upstream-examples")
        .join(name)
}

fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn apply_get_patch_edit_replace_with_validation_on() {
    let c = Cluster::start().await;
    let resources = c.ok(&["api-resources"]).await;
    for line in ["virtualmachines   vm,vms", "pods   po", "namespaces   ns"] {
        let words: Vec<&str> = line.split_whitespace().collect();
        assert!(
            resources
                .lines()
                .any(|l| l.split_whitespace().take(2).eq(words.iter().copied())),
            "{line} in\n{resources}"
        );
    }

    let vm = example("vm-cirros.yaml");
    assert!(
        c.ok(&["apply", "-f", s(&vm)])
            .await
            .contains("virtualmachine.kubevirt.io/vm-cirros created")
    );
    assert!(c.ok(&["apply", "-f", s(&vm)]).await.contains("unchanged"));
    let changed = std::fs::read_to_string(&vm).unwrap().replacen(
        "kubevirt.io/vm: vm-cirros",
        "kubevirt.io/vm: vm-cirros\n    tier: web",
        1,
    );
    let changed = c.write("vm-changed.yaml", &changed);
    assert!(
        c.ok(&["apply", "-f", s(&changed)])
            .await
            .contains("configured")
    );
    assert_eq!(
        c.ok(&[
            "get",
            "vm",
            "vm-cirros",
            "-o",
            "jsonpath={.metadata.labels.tier}"
        ])
        .await,
        "web"
    );
    let ssa = c
        .ok(&[
            "apply",
            "--server-side",
            "-f",
            s(&example("vmi-replicaset-cirros.yaml")),
        ])
        .await;
    assert!(ssa.contains("serverside-applied"), "{ssa}");

    // Columns as upstream prints them; wide and yaml.
    let table = c.ok(&["get", "vm"]).await;
    assert!(table.starts_with("NAME"), "{table}");
    assert!(table.contains("vm-cirros"), "{table}");
    let yaml = c.ok(&["get", "vm", "vm-cirros", "-o", "yaml"]).await;
    assert!(yaml.contains("kind: VirtualMachine") && yaml.contains("resourceVersion:"));

    // Patches: merge, JSON; strategic is refused on custom resources only.
    c.ok(&[
        "patch",
        "vm",
        "vm-cirros",
        "--type=merge",
        "-p",
        r#"{"metadata":{"labels":{"patched":"merge"}}}"#,
    ])
    .await;
    c.ok(&[
        "patch",
        "vm",
        "vm-cirros",
        "--type=json",
        "-p",
        r#"[{"op":"add","path":"/metadata/labels/json","value":"yes"}]"#,
    ])
    .await;
    let labels = c
        .ok(&[
            "get",
            "vm",
            "vm-cirros",
            "-o",
            "jsonpath={.metadata.labels}",
        ])
        .await;
    assert!(
        labels.contains(r#""patched":"merge""#) && labels.contains(r#""json":"yes""#),
        "{labels}"
    );
    let err = c
        .fails(&[
            "patch",
            "vm",
            "vm-cirros",
            "--type=strategic",
            "-p",
            r#"{"metadata":{"labels":{"x":"y"}}}"#,
        ])
        .await;
    assert!(
        err.contains("UnsupportedMediaType") || err.contains("unknown format"),
        "{err}"
    );
    c.ok(&["create", "configmap", "settings", "--from-literal=a=1"])
        .await;
    c.ok(&[
        "patch",
        "configmap",
        "settings",
        "-p",
        r#"{"data":{"b":"2"}}"#,
    ])
    .await;
    assert_eq!(
        c.ok(&["get", "cm", "settings", "-o", "jsonpath={.data.b}"])
            .await,
        "2"
    );

    // A strict server: unknown fields are refused by name.
    let bad = std::fs::read_to_string(&vm)
        .unwrap()
        .replace("runStrategy: Halted", "runStrategy: Halted\n  runing: true");
    let bad = c.write("vm-bad.yaml", &bad);
    let err = c.fails(&["apply", "-f", s(&bad)]).await;
    assert!(
        err.contains("unknown field") && err.contains("spec.runing"),
        "{err}"
    );

    // Edit through KUBE_EDITOR.
    let mut edit = c.command(&["edit", "vm", "vm-cirros"]);
    edit.env(
        "KUBE_EDITOR",
        "sed -i s/patched:\\ merge/patched:\\ edited/",
    );
    let out = tokio::task::spawn_blocking(move || edit.output().unwrap())
        .await
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(
        c.ok(&[
            "get",
            "vm",
            "vm-cirros",
            "-o",
            "jsonpath={.metadata.labels.patched}"
        ])
        .await,
        "edited"
    );

    // Replace with a stale resourceVersion.
    let current = c.ok(&["get", "vm", "vm-cirros", "-o", "json"]).await;
    c.ok(&["label", "vm", "vm-cirros", "color=blue"]).await;
    c.ok(&["annotate", "vm", "vm-cirros", "note=hello"]).await;
    let stale = c.write("stale.json", &current);
    let err = c.fails(&["replace", "-f", s(&stale)]).await;
    assert!(
        err.contains("Conflict") && err.contains("the object has been modified"),
        "{err}"
    );
    let meta = c
        .ok(&[
            "get",
            "vm",
            "vm-cirros",
            "-o",
            "jsonpath={.metadata.labels.color} {.metadata.annotations.note}",
        ])
        .await;
    assert_eq!(meta, "blue hello");

    // Scale through the scale subresource.
    c.ok(&["scale", "vmirs", "vmi-replicaset-cirros", "--replicas=1"])
        .await;
    assert_eq!(
        c.ok(&[
            "get",
            "vmirs",
            "vmi-replicaset-cirros",
            "-o",
            "jsonpath={.spec.replicas}"
        ])
        .await,
        "1"
    );

    let explained = c.ok(&["explain", "vm.spec.runStrategy"]).await;
    assert!(explained.contains("FIELD: runStrategy"), "{explained}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deletion_waits_for_finalizers_and_cascades() {
    let c = Cluster::start().await;
    let owner = c.write(
        "owner.yaml",
        "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: owner\n  finalizers: [example.com/hold]\n",
    );
    c.ok(&["apply", "-f", s(&owner)]).await;
    let uid = c
        .ok(&["get", "cm", "owner", "-o", "jsonpath={.metadata.uid}"])
        .await;
    for name in ["child-a", "child-b"] {
        let child = format!(
            "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: {name}\n  ownerReferences:\n  - apiVersion: v1\n    kind: ConfigMap\n    name: owner\n    uid: {uid}\n"
        );
        c.ok(&["apply", "-f", s(&c.write(&format!("{name}.yaml"), &child))])
            .await;
    }

    // kubectl delete waits while a finalizer holds the object.
    let mut delete = c.command(&["delete", "cm", "owner", "--timeout=20s"]);
    let waiting = tokio::task::spawn_blocking(move || delete.output().unwrap());
    c.eventually(
        &[
            "get",
            "cm",
            "owner",
            "-o",
            "jsonpath={.metadata.deletionTimestamp}",
        ],
        |t| !t.is_empty(),
    )
    .await;
    assert!(!waiting.is_finished());
    let err = c
        .fails(&[
            "patch",
            "cm",
            "owner",
            "--type=merge",
            "-p",
            r#"{"metadata":{"finalizers":["example.com/hold","new"]}}"#,
        ])
        .await;
    assert!(err.contains("no new finalizers"), "{err}");
    c.ok(&[
        "patch",
        "cm",
        "owner",
        "--type=json",
        "-p",
        r#"[{"op":"remove","path":"/metadata/finalizers"}]"#,
    ])
    .await;
    let done = waiting.await.unwrap();
    assert!(
        done.status.success(),
        "{}",
        String::from_utf8_lossy(&done.stderr)
    );
    assert!(String::from_utf8_lossy(&done.stdout).contains("deleted"));
    // Background propagation: the dependents go after the owner.
    c.eventually(&["get", "cm", "-o", "name"], |t| !t.contains("child-"))
        .await;

    // Orphan keeps the dependent and strips the reference; foreground deletes it first.
    for (cascade, survives) in [("orphan", true), ("foreground", false)] {
        c.ok(&["create", "cm", "parent"]).await;
        let uid = c
            .ok(&["get", "cm", "parent", "-o", "jsonpath={.metadata.uid}"])
            .await;
        let child = format!(
            "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: kid\n  ownerReferences:\n  - {{apiVersion: v1, kind: ConfigMap, name: parent, uid: {uid}, blockOwnerDeletion: true}}\n"
        );
        c.ok(&["apply", "-f", s(&c.write("kid.yaml", &child))])
            .await;
        let out = c
            .ok(&[
                "delete",
                "cm",
                "parent",
                &format!("--cascade={cascade}"),
                "--timeout=20s",
            ])
            .await;
        assert!(out.contains("deleted"), "{out}");
        let left = c.ok(&["get", "cm", "-o", "name"]).await;
        assert!(!left.contains("configmap/parent"), "{cascade}: {left}");
        assert_eq!(
            left.contains("configmap/kid"),
            survives,
            "{cascade}: {left}"
        );
        if survives {
            let refs = c
                .ok(&[
                    "get",
                    "cm",
                    "kid",
                    "-o",
                    "jsonpath={.metadata.ownerReferences}",
                ])
                .await;
            assert_eq!(refs, "", "{cascade}");
            c.ok(&["delete", "cm", "kid"]).await;
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn namespaces_events_and_watches() {
    let c = Cluster::start().await;
    c.ok(&["create", "namespace", "team"]).await;
    c.ok(&["-n", "team", "apply", "-f", s(&example("vm-cirros.yaml"))])
        .await;
    c.ok(&["-n", "team", "create", "configmap", "cfg"]).await;
    let uid = c
        .ok(&[
            "-n",
            "team",
            "get",
            "vm",
            "vm-cirros",
            "-o",
            "jsonpath={.metadata.uid}",
        ])
        .await;
    let event = format!(
        "apiVersion: v1\nkind: Event\nmetadata:\n  name: vm-cirros.1\n  namespace: team\ninvolvedObject:\n  apiVersion: kubevirt.io/v1\n  kind: VirtualMachine\n  name: vm-cirros\n  namespace: team\n  uid: {uid}\nreason: SuccessfulCreate\nmessage: Started the virtual machine by creating the new virtual machine instance\ntype: Normal\ncount: 1\nfirstTimestamp: \"2026-01-01T00:00:00Z\"\nlastTimestamp: \"2026-01-01T00:00:00Z\"\nsource:\n  component: virtualmachine-controller\n"
    );
    c.ok(&["apply", "-f", s(&c.write("event.yaml", &event))])
        .await;
    let described = c.ok(&["-n", "team", "describe", "vm", "vm-cirros"]).await;
    assert!(
        described.contains("SuccessfulCreate") && described.contains("Started the virtual machine"),
        "{described}"
    );

    // get -w prints the change as a table row.
    let mut watch = c.command(&["-n", "team", "get", "cm", "-w", "--request-timeout=5s"]);
    watch.stdout(Stdio::piped());
    let child = watch.spawn().unwrap();
    c.eventually(&["-n", "team", "get", "cm", "cfg"], |t| t.contains("cfg"))
        .await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    c.ok(&["-n", "team", "create", "configmap", "later"]).await;
    let out = tokio::task::spawn_blocking(move || child.wait_with_output().unwrap())
        .await
        .unwrap();
    let seen = String::from_utf8_lossy(&out.stdout);
    assert!(seen.lines().any(|l| l.starts_with("later ")), "{seen}");

    // Deleting the namespace deletes what is in it, then the namespace.
    let out = c
        .ok(&["delete", "namespace", "team", "--timeout=20s"])
        .await;
    assert!(out.contains("deleted"), "{out}");
    assert_eq!(c.ok(&["get", "vm,cm", "-A", "-o", "name"]).await.trim(), "");
    let err = c.fails(&["get", "ns", "team"]).await;
    assert!(
        err.contains("NotFound") || err.contains("not found"),
        "{err}"
    );
    let err = c.fails(&["-n", "gone", "create", "configmap", "x"]).await;
    assert!(err.contains("namespaces \"gone\" not found"), "{err}");
}

const CRD: &str = r#"apiVersion: apiextensions.k8s.io/v1
kind: CustomResourceDefinition
metadata:
  name: widgets.example.com
spec:
  group: example.com
  scope: Namespaced
  names: {plural: widgets, singular: widget, kind: Widget, shortNames: [wd]}
  versions:
  - name: v1
    served: true
    storage: true
    additionalPrinterColumns:
    - {name: Size, type: integer, jsonPath: .spec.size}
    - {name: Mode, type: string, jsonPath: .spec.mode}
    schema:
      openAPIV3Schema:
        type: object
        properties:
          spec:
            type: object
            required: [size]
            properties:
              size: {type: integer, minimum: 1}
              mode: {type: string, enum: [fast, slow], default: slow}
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_crd_is_served_while_it_exists() {
    let c = Cluster::start().await;
    c.ok(&["apply", "-f", s(&c.write("crd.yaml", CRD))]).await;
    c.ok(&[
        "wait",
        "--for=condition=Established",
        "crd/widgets.example.com",
        "--timeout=10s",
    ])
    .await;
    let widget =
        "apiVersion: example.com/v1\nkind: Widget\nmetadata:\n  name: w1\nspec:\n  size: 3\n";
    c.ok(&["apply", "-f", s(&c.write("w1.yaml", widget))]).await;
    let table = c.ok(&["get", "wd"]).await;
    let row: Vec<&str> = table.lines().nth(1).unwrap().split_whitespace().collect();
    assert_eq!(row[..3], ["w1", "3", "slow"], "{table}");

    // Refused with every problem named: out of range, not in the enum, unknown.
    for (name, change, mentions) in [
        ("w2", "size: 0\n  mode: warp", ["spec.size", "spec.mode"]),
        (
            "w3",
            "size: 3\n  colour: red",
            ["unknown field", "spec.colour"],
        ),
    ] {
        let text = widget.replace("size: 3", change).replace("w1", name);
        let file = c.write(&format!("{name}.yaml"), &text);
        let err = c.fails(&["apply", "-f", s(&file)]).await;
        assert!(mentions.iter().all(|m| err.contains(m)), "{err}");
    }
    let explained = c.ok(&["explain", "widget.spec.mode"]).await;
    assert!(explained.contains("mode"), "{explained}");

    c.ok(&["delete", "crd", "widgets.example.com"]).await;
    let err = c.fails(&["get", "widgets.example.com"]).await;
    assert!(err.contains("doesn't have a resource type"), "{err}");
    // Recreated, it starts empty: the old objects went with it.
    c.ok(&["apply", "-f", s(&c.write("crd.yaml", CRD))]).await;
    c.eventually(&["get", "wd", "-o", "name"], |t| t.trim().is_empty())
        .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pod_logs_come_from_the_node_agent_and_wide_shows_more() {
    // A stand-in node agent serving one container's log.
    let agent = axum::Router::new().route(
        "/containerLogs/default/web/main",
        axum::routing::get(
            |q: axum::extract::Query<std::collections::HashMap<String, String>>| async move {
                let lines = ["first line", "second line", "third line"];
                let tail = q
                    .get("tailLines")
                    .and_then(|t| t.parse().ok())
                    .unwrap_or(lines.len());
                lines[lines.len() - tail..]
                    .iter()
                    .map(|l| format!("{l}\n"))
                    .collect::<String>()
            },
        ),
    );
    let (port, _) = common::https(agent, &["node-1"]).await;
    let c = Cluster::start().await;
    // Status is the node's and the pod's own to report: written through /status.
    c.ok(&[
        "create",
        "-f",
        s(&c.write(
            "node.yaml",
            "apiVersion: v1\nkind: Node\nmetadata:\n  name: node-1\n",
        )),
    ])
    .await;
    let status = format!(
        r#"{{"status":{{"addresses":[{{"type":"InternalIP","address":"127.0.0.1"}}],"daemonEndpoints":{{"kubeletEndpoint":{{"Port":{port}}}}}}}}}"#
    );
    c.ok(&[
        "patch",
        "node",
        "node-1",
        "--subresource=status",
        "--type=merge",
        "-p",
        &status,
    ])
    .await;
    let pod = "apiVersion: v1\nkind: Pod\nmetadata:\n  name: web\nspec:\n  nodeName: node-1\n  containers:\n  - {name: main, image: example}\n";
    c.ok(&["apply", "-f", s(&c.write("pod.yaml", pod))]).await;
    c.ok(&[
        "patch",
        "pod",
        "web",
        "--subresource=status",
        "--type=merge",
        "-p",
        r#"{"status":{"phase":"Running","podIP":"10.0.0.7"}}"#,
    ])
    .await;
    assert_eq!(
        c.ok(&["logs", "web"]).await,
        "first line\nsecond line\nthird line\n"
    );
    assert_eq!(c.ok(&["logs", "web", "--tail=1"]).await, "third line\n");
    let err = c.fails(&["logs", "web", "-c", "sidecar"]).await;
    assert!(err.contains("container sidecar is not valid"), "{err}");

    let wide = c.ok(&["get", "pods", "-o", "wide"]).await;
    let header: Vec<&str> = wide.lines().next().unwrap().split_whitespace().collect();
    assert_eq!(header, ["NAME", "STATUS", "AGE", "IP", "NODE"], "{wide}");
    assert!(
        wide.contains("10.0.0.7") && wide.contains("node-1"),
        "{wide}"
    );
    let narrow = c.ok(&["get", "pods"]).await;
    assert!(!narrow.contains("10.0.0.7"), "{narrow}");

    // A pod on a node gets its grace period; forcing ends it; a pod on no node just goes.
    c.ok(&["delete", "pod", "web", "--wait=false"]).await;
    let grace = c
        .ok(&[
            "get",
            "pod",
            "web",
            "-o",
            "jsonpath={.metadata.deletionGracePeriodSeconds}",
        ])
        .await;
    assert_eq!(grace, "30");
    c.ok(&["delete", "pod", "web", "--grace-period=0", "--force"])
        .await;
    assert!(c.fails(&["get", "pod", "web"]).await.contains("not found"));
    let unbound = pod
        .replace("  nodeName: node-1\n", "")
        .replace("web", "idle");
    c.ok(&["apply", "-f", s(&c.write("idle.yaml", &unbound))])
        .await;
    c.ok(&["delete", "pod", "idle", "--wait=false"]).await;
    assert!(c.fails(&["get", "pod", "idle"]).await.contains("not found"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn applying_a_built_in_kind_again_merges_its_lists_by_key() {
    let c = Cluster::start().await;
    let svc = "apiVersion: v1\nkind: Service\nmetadata:\n  name: web\nspec:\n  selector: {app: web}\n  ports:\n  - {name: http, port: 80, targetPort: 8080}\n  - {name: https, port: 443, targetPort: 8443}\n";
    c.ok(&["apply", "-f", s(&c.write("svc.yaml", svc))]).await;
    // Someone else adds a field to one port; the next apply changes the other.
    c.ok(&[
        "patch",
        "svc",
        "web",
        "--type=json",
        "-p",
        r#"[{"op":"add","path":"/spec/ports/0/appProtocol","value":"http"}]"#,
    ])
    .await;
    let changed = svc.replace("targetPort: 8443", "targetPort: 9443");
    let out = c
        .ok(&["apply", "-f", s(&c.write("svc.yaml", &changed))])
        .await;
    assert!(out.contains("configured"), "{out}");
    let ports = c
        .ok(&[
            "get",
            "svc",
            "web",
            "-o",
            "jsonpath={range .spec.ports[*]}{.name}:{.targetPort}:{.appProtocol} {end}",
        ])
        .await;
    assert_eq!(ports.trim(), "http:8080:http https:9443:");
}
