//! kube-rs' runtime against the server: a Controller (reflector, watcher, status writes
//! through `/status`), and watchers across server restarts, with and without the
//! revisions they need still retained.

#![allow(clippy::unwrap_used)]

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use api::v1::VirtualMachine;
use futures_util::StreamExt;
use kube::api::{Api, Patch, PatchParams, PostParams};
use kube::runtime::controller::{Action, Controller};
use kube::runtime::watcher;
use kube::{Client, Config};
use serde_json::json;

fn example_vm(name: &str) -> VirtualMachine {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../../shared/upstream-examples/vm-cirros.yaml");
    match api::parse_documents(&std::fs::read_to_string(path).unwrap())
        .unwrap()
        .remove(0)
    {
        api::Object::VirtualMachine(mut vm) => {
            vm.metadata.name = Some(name.into());
            vm
        }
        _ => unreachable!(),
    }
}

/// A server on its own runtime and thread, over an SQLite file; dropping it stops the
/// server and closes the store, as a process exit would.
struct Server {
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Server {
    fn start(db: &Path, port: u16) -> (Self, u16) {
        let db = db.to_owned();
        let (ready_tx, ready_rx) = std::sync::mpsc::channel();
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let thread = std::thread::spawn(move || {
            let rt = tokio::runtime::Runtime::new().unwrap();
            rt.block_on(async move {
                let store = Arc::new(store::SqliteStore::open(&db).unwrap());
                let state = apiserver::AppState::start(store).await.unwrap();
                let listener = tokio::net::TcpListener::bind(("127.0.0.1", port))
                    .await
                    .unwrap();
                ready_tx
                    .send(listener.local_addr().unwrap().port())
                    .unwrap();
                tokio::select! {
                    _ = axum::serve(listener, apiserver::router(state)) => {}
                    _ = stopped => {}
                }
            });
            rt.shutdown_timeout(Duration::from_secs(1));
        });
        let port = ready_rx.recv().unwrap();
        (
            Self {
                stop: Some(stop),
                thread: Some(thread),
            },
            port,
        )
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

fn client(port: u16) -> Client {
    let mut config = Config::new(format!("http://127.0.0.1:{port}").parse().unwrap());
    config.read_timeout = Some(Duration::from_secs(30));
    Client::try_from(config).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_controller_reconciles_and_writes_status() {
    let dir = tempfile::tempdir().unwrap();
    let (_server, port) = Server::start(&dir.path().join("db.sqlite"), 0);
    let vms: Api<VirtualMachine> = Api::namespaced(client(port), "default");
    for name in ["a", "b"] {
        vms.create(&PostParams::default(), &example_vm(name))
            .await
            .unwrap();
    }
    let reconcile = |vm: Arc<VirtualMachine>, vms: Arc<Api<VirtualMachine>>| async move {
        let name = vm.metadata.name.clone().unwrap();
        let status = json!({"status": {"printableStatus": "Stopped", "created": false}});
        vms.patch_status(&name, &PatchParams::default(), &Patch::Merge(&status))
            .await?;
        Ok::<_, kube::Error>(Action::await_change())
    };
    let controller = Controller::new(vms.clone(), watcher::Config::default())
        .run(
            reconcile,
            |_, _, _| Action::requeue(Duration::from_secs(1)),
            Arc::new(vms.clone()),
        )
        .for_each(|_| async {});
    let running = tokio::spawn(controller);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(15);
    loop {
        let list = vms.list(&Default::default()).await.unwrap();
        let done = list.items.iter().all(|vm| {
            vm.status
                .as_ref()
                .and_then(|s| s.printable_status.as_ref())
                .map(String::as_str)
                == Some("Stopped")
        });
        if done {
            // Status writes leave the spec's generation alone.
            assert!(
                list.items
                    .iter()
                    .all(|vm| vm.metadata.generation == Some(1))
            );
            break;
        }
        assert!(tokio::time::Instant::now() < deadline, "not reconciled");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // The main endpoint cannot change the status.
    let mut vm = vms.get("a").await.unwrap();
    vm.status = None;
    let replaced = vms.replace("a", &PostParams::default(), &vm).await.unwrap();
    assert!(replaced.status.is_some());
    running.abort();
}

async fn next_event(
    events: &mut (
             impl futures_util::Stream<Item = Result<watcher::Event<VirtualMachine>, watcher::Error>>
             + Unpin
         ),
) -> Option<watcher::Event<VirtualMachine>> {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    loop {
        match tokio::time::timeout_at(deadline, events.next())
            .await
            .ok()??
        {
            Ok(ev) => return Some(ev),
            // While the server is down the watcher reports errors and retries.
            Err(_) => continue,
        }
    }
}

fn label(ev: &watcher::Event<VirtualMachine>) -> String {
    let name = |vm: &VirtualMachine| vm.metadata.name.clone().unwrap_or_default();
    match ev {
        watcher::Event::Apply(vm) => format!("apply {}", name(vm)),
        watcher::Event::Delete(vm) => format!("delete {}", name(vm)),
        watcher::Event::Init => "init".into(),
        watcher::Event::InitApply(vm) => format!("init-apply {}", name(vm)),
        watcher::Event::InitDone => "init-done".into(),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn watchers_resume_across_restarts_and_relist_after_410() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("db.sqlite");
    let (server, port) = Server::start(&db, 0);
    let vms: Api<VirtualMachine> = Api::namespaced(client(port), "default");
    vms.create(&PostParams::default(), &example_vm("first"))
        .await
        .unwrap();
    let cfg = watcher::Config::default().timeout(5);
    let mut events = watcher(vms.clone(), cfg).boxed();
    let mut seen = Vec::new();
    while seen.last().map(String::as_str) != Some("init-done") {
        seen.push(label(&next_event(&mut events).await.unwrap()));
    }
    assert_eq!(seen, ["init", "init-apply first", "init-done"]);

    // Restart with the history intact: the watcher resumes from its revision.
    drop(server);
    let (server, _) = Server::start(&db, port);
    vms.create(&PostParams::default(), &example_vm("second"))
        .await
        .unwrap();
    let ev = label(&next_event(&mut events).await.unwrap());
    assert_eq!(ev, "apply second");

    // Down again; meanwhile the history the watcher would need is compacted away.
    drop(server);
    {
        let store = store::SqliteStore::open(&db).unwrap();
        use store::Store;
        let key = "/kubevirt.io/virtualmachines/default/first";
        let kv = store.get(key).unwrap().unwrap();
        store.delete(key, Some(kv.mod_rev)).await.unwrap();
        store.compact(store.revision()).await.unwrap();
    }
    let (_server, _) = Server::start(&db, port);
    // 410 Expired, then a fresh list: the deletion shows as the new initial state.
    let mut after = Vec::new();
    while after.last().map(String::as_str) != Some("init-done") {
        after.push(label(&next_event(&mut events).await.unwrap()));
    }
    assert_eq!(after, ["init", "init-apply second", "init-done"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_streaming_list_ends_with_the_initial_events_bookmark() {
    let dir = tempfile::tempdir().unwrap();
    let (_server, port) = Server::start(&dir.path().join("db.sqlite"), 0);
    let vms: Api<VirtualMachine> = Api::namespaced(client(port), "default");
    for name in ["one", "two"] {
        vms.create(&PostParams::default(), &example_vm(name))
            .await
            .unwrap();
    }
    // sendInitialEvents=true: ADDED for each, then a BOOKMARK marked as the end of them.
    let cfg = watcher::Config::default().streaming_lists().timeout(5);
    let mut events = watcher(vms.clone(), cfg).boxed();
    let mut seen = Vec::new();
    while seen.last().map(String::as_str) != Some("init-done") {
        seen.push(label(&next_event(&mut events).await.unwrap()));
    }
    assert_eq!(
        seen,
        ["init", "init-apply one", "init-apply two", "init-done"]
    );
    vms.create(&PostParams::default(), &example_vm("three"))
        .await
        .unwrap();
    assert_eq!(
        label(&next_event(&mut events).await.unwrap()),
        "apply three"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pods_are_selected_by_node_and_phase() {
    use k8s_openapi::api::core::v1::Pod;
    use kube::api::ListParams;
    let dir = tempfile::tempdir().unwrap();
    let (_server, port) = Server::start(&dir.path().join("db.sqlite"), 0);
    let pods: Api<Pod> = Api::namespaced(client(port), "default");
    for (name, node, phase) in [
        ("a", "node-1", "Running"),
        ("b", "node-2", "Running"),
        ("c", "node-1", "Pending"),
    ] {
        let pod: Pod = serde_json::from_value(
            json!({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": name},
            "spec": {"nodeName": node, "containers": [{"name": "main", "image": "x"}]}}),
        )
        .unwrap();
        pods.create(&PostParams::default(), &pod).await.unwrap();
        let status = json!({"status": {"phase": phase}});
        pods.patch_status(name, &PatchParams::default(), &Patch::Merge(&status))
            .await
            .unwrap();
    }
    let names = |l: kube::core::ObjectList<Pod>| -> Vec<String> {
        l.items
            .into_iter()
            .map(|p| p.metadata.name.unwrap())
            .collect()
    };
    let on_node = pods
        .list(&ListParams::default().fields("spec.nodeName=node-1"))
        .await
        .unwrap();
    assert_eq!(names(on_node), ["a", "c"]);
    let running = pods
        .list(&ListParams::default().fields("spec.nodeName=node-1,status.phase=Running"))
        .await
        .unwrap();
    assert_eq!(names(running), ["a"]);
}
