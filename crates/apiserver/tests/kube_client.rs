//! The API server as kube-rs sees it: typed CRUD, errors as Status, discovery, watchers.

#![allow(clippy::unwrap_used)]

use std::sync::Arc;
use std::time::Duration;

use api::v1::VirtualMachine;
use futures_util::StreamExt;
use kube::api::{Api, DeleteParams, ListParams, PostParams};
use kube::runtime::watcher;
use kube::{Client, Config};

async fn serve(store: Arc<dyn store::Store>) -> Client {
    let state = apiserver::AppState::start(store).await.unwrap();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, apiserver::router(state)).await });
    Client::try_from(Config::new(url.parse().unwrap())).unwrap()
}

fn example_vm() -> VirtualMachine {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../../shared/upstream-examples/vm-cirros.yaml");
    match api::parse_documents(&std::fs::read_to_string(path).unwrap())
        .unwrap()
        .remove(0)
    {
        api::Object::VirtualMachine(vm) => vm,
        _ => unreachable!(),
    }
}

fn api_error(e: kube::Error) -> (u16, String, serde_json::Value) {
    match e {
        kube::Error::Api(s) => (s.code, s.reason.clone(), serde_json::to_value(&*s).unwrap()),
        other => panic!("expected an API error, got {other}"),
    }
}

#[tokio::test]
async fn typed_crud_with_kubernetes_semantics() {
    let client = serve(Arc::new(store::MemStore::new())).await;
    let vms: Api<VirtualMachine> = Api::namespaced(client, "default");
    let created = vms
        .create(&PostParams::default(), &example_vm())
        .await
        .unwrap();
    let meta = &created.metadata;
    assert!(meta.uid.is_some() && meta.creation_timestamp.is_some());
    assert_eq!(
        (meta.generation, meta.namespace.as_deref()),
        (Some(1), Some("default"))
    );
    let rv = meta.resource_version.clone().unwrap();

    let (code, reason, _) = api_error(
        vms.create(&PostParams::default(), &example_vm())
            .await
            .unwrap_err(),
    );
    assert_eq!((code, reason.as_str()), (409, "AlreadyExists"));

    let mut changed = created.clone();
    changed.spec.run_strategy = Some(api::v1::RunStrategy::Always);
    let updated = vms
        .replace("vm-cirros", &PostParams::default(), &changed)
        .await
        .unwrap();
    assert_eq!(
        updated.metadata.generation,
        Some(2),
        "a spec change bumps the generation"
    );
    assert_ne!(
        updated.metadata.resource_version.as_deref(),
        Some(rv.as_str())
    );

    let (code, reason, _) = api_error(
        vms.replace("vm-cirros", &PostParams::default(), &changed)
            .await
            .unwrap_err(),
    );
    assert_eq!(
        (code, reason.as_str()),
        (409, "Conflict"),
        "a stale resourceVersion is refused"
    );

    let list = vms.list(&ListParams::default()).await.unwrap();
    assert_eq!(list.items.len(), 1);
    assert!(list.metadata.resource_version.is_some());

    vms.delete("vm-cirros", &DeleteParams::default())
        .await
        .unwrap();
    let (code, _, _) = api_error(vms.get("vm-cirros").await.unwrap_err());
    assert_eq!(code, 404);
}

#[tokio::test]
async fn invalid_objects_get_422_with_field_causes_and_unknown_fields_400() {
    let client = serve(Arc::new(store::MemStore::new())).await;
    let vms: Api<VirtualMachine> = Api::namespaced(client.clone(), "default");
    let mut bad = example_vm();
    bad.spec.running = Some(true);
    bad.spec.run_strategy = Some(api::v1::RunStrategy::Always);
    let (code, reason, status) =
        api_error(vms.create(&PostParams::default(), &bad).await.unwrap_err());
    assert_eq!((code, reason.as_str()), (422, "Invalid"));
    assert_eq!(status["details"]["causes"][0]["field"], "spec.running");

    let raw = serde_json::json!({
        "apiVersion": "kubevirt.io/v1", "kind": "VirtualMachine",
        "metadata": {"name": "x"}, "spec": {"template": {}, "runStrategyy": "Always"}
    });
    let req = http::Request::post("/apis/kubevirt.io/v1/namespaces/default/virtualmachines")
        .header("content-type", "application/json")
        .body(serde_json::to_vec(&raw).unwrap())
        .unwrap();
    let err = client.request::<serde_json::Value>(req).await.unwrap_err();
    let (code, _, status) = api_error(err);
    assert_eq!(code, 400);
    assert_eq!(
        status["message"],
        "strict decoding error: unknown field \"spec.runStrategyy\""
    );
}

#[tokio::test]
async fn pagination_keeps_one_revision_across_pages() {
    let client = serve(Arc::new(store::MemStore::new())).await;
    let vms: Api<VirtualMachine> = Api::namespaced(client, "default");
    for i in 0..5 {
        let mut vm = example_vm();
        vm.metadata.name = Some(format!("vm-{i}"));
        vms.create(&PostParams::default(), &vm).await.unwrap();
    }
    let first = vms.list(&ListParams::default().limit(2)).await.unwrap();
    assert_eq!(first.items.len(), 2);
    vms.delete("vm-3", &DeleteParams::default()).await.unwrap();
    let token = first.metadata.continue_.clone().unwrap();
    let second = vms
        .list(&ListParams::default().limit(2).continue_token(&token))
        .await
        .unwrap();
    let names: Vec<_> = second
        .items
        .iter()
        .map(|v| v.metadata.name.clone().unwrap())
        .collect();
    assert_eq!(
        names,
        ["vm-2", "vm-3"],
        "the second page is read at the first page's revision"
    );
}

#[tokio::test]
async fn discovery_finds_the_kubevirt_kinds() {
    let client = serve(Arc::new(store::MemStore::new())).await;
    let discovery = kube::Discovery::new(client).run().await.unwrap();
    let group = discovery
        .get("kubevirt.io")
        .expect("kubevirt.io is discovered");
    let kinds: Vec<String> = group
        .recommended_resources()
        .into_iter()
        .map(|(ar, _)| ar.kind)
        .collect();
    for kind in [
        "VirtualMachine",
        "VirtualMachineInstance",
        "VirtualMachineInstanceReplicaSet",
    ] {
        assert!(kinds.contains(&kind.to_string()), "{kind} in {kinds:?}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_watcher_sees_the_initial_list_then_changes_on_sqlite() {
    let dir = tempfile::tempdir().unwrap();
    let store = Arc::new(store::SqliteStore::open(&dir.path().join("db.sqlite")).unwrap());
    let client = serve(store).await;
    let vms: Api<VirtualMachine> = Api::namespaced(client, "default");
    vms.create(&PostParams::default(), &example_vm())
        .await
        .unwrap();
    let mut events = watcher(vms.clone(), watcher::Config::default()).boxed();
    let mut seen = Vec::new();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while !seen.contains(&"delete vm-cirros".to_string()) {
        let ev = tokio::time::timeout_at(deadline, events.next())
            .await
            .expect("events in time")
            .unwrap()
            .unwrap();
        match ev {
            watcher::Event::InitApply(vm) => {
                seen.push(format!("init {}", vm.metadata.name.unwrap()))
            }
            watcher::Event::InitDone => {
                seen.push("init done".into());
                let mut vm = vms.get("vm-cirros").await.unwrap();
                vm.spec.run_strategy = Some(api::v1::RunStrategy::Manual);
                vms.replace("vm-cirros", &PostParams::default(), &vm)
                    .await
                    .unwrap();
            }
            watcher::Event::Apply(vm) => {
                seen.push(format!("apply {}", vm.metadata.name.unwrap()));
                vms.delete("vm-cirros", &DeleteParams::default())
                    .await
                    .unwrap();
            }
            watcher::Event::Delete(vm) => {
                seen.push(format!("delete {}", vm.metadata.name.unwrap()))
            }
            watcher::Event::Init => {}
        }
    }
    assert_eq!(
        seen,
        [
            "init vm-cirros",
            "init done",
            "apply vm-cirros",
            "delete vm-cirros"
        ]
    );
}

/// VMs a (tier=front), b (tier=back) and c (tier=front) on a fresh server.
async fn tiered_vms() -> Api<VirtualMachine> {
    let client = serve(Arc::new(store::MemStore::new())).await;
    let vms: Api<VirtualMachine> = Api::namespaced(client, "default");
    for (name, tier) in [("a", "front"), ("b", "back"), ("c", "front")] {
        let mut vm = example_vm();
        vm.metadata.name = Some(name.into());
        vm.metadata.labels = Some([("tier".to_string(), tier.to_string())].into());
        vms.create(&PostParams::default(), &vm).await.unwrap();
    }
    vms
}

#[tokio::test]
async fn selectors_filter_lists_and_watches() {
    use kube::api::{WatchEvent, WatchParams};
    let vms = tiered_vms().await;
    let names = |l: kube::core::ObjectList<VirtualMachine>| {
        l.items
            .into_iter()
            .map(|v| v.metadata.name.unwrap())
            .collect::<Vec<_>>()
    };
    assert_eq!(
        names(
            vms.list(&ListParams::default().labels("tier=front"))
                .await
                .unwrap()
        ),
        ["a", "c"]
    );
    assert_eq!(
        names(
            vms.list(&ListParams::default().labels("tier in (back)"))
                .await
                .unwrap()
        ),
        ["b"]
    );
    assert_eq!(
        names(
            vms.list(&ListParams::default().fields("metadata.name=c"))
                .await
                .unwrap()
        ),
        ["c"]
    );
    let (code, _, _) = api_error(
        vms.list(&ListParams::default().fields("spec.running=true"))
            .await
            .unwrap_err(),
    );
    assert_eq!(code, 400);

    let rv = vms
        .list(&ListParams::default())
        .await
        .unwrap()
        .metadata
        .resource_version
        .unwrap();
    let mut stream = vms
        .watch(&WatchParams::default().labels("tier=front"), &rv)
        .await
        .unwrap()
        .boxed();
    let mut a = vms.get("a").await.unwrap();
    a.metadata.labels = Some([("tier".to_string(), "back".to_string())].into());
    vms.replace("a", &PostParams::default(), &a).await.unwrap();
    let mut b = vms.get("b").await.unwrap();
    b.metadata.labels = Some([("tier".to_string(), "front".to_string())].into());
    vms.replace("b", &PostParams::default(), &b).await.unwrap();
    let mut seen = Vec::new();
    while seen.len() < 2 {
        let ev = tokio::time::timeout(Duration::from_secs(5), stream.next())
            .await
            .unwrap()
            .unwrap()
            .unwrap();
        seen.push(match ev {
            WatchEvent::Added(v) => format!("added {}", v.metadata.name.unwrap()),
            WatchEvent::Deleted(v) => format!("deleted {}", v.metadata.name.unwrap()),
            WatchEvent::Modified(v) => format!("modified {}", v.metadata.name.unwrap()),
            other => format!("{other:?}"),
        });
    }
    assert_eq!(
        seen,
        ["deleted a", "added b"],
        "objects moving out of and into the selection"
    );
}

/// What `kubectl get` prints: upstream's columns, a human age, `-o wide` extras.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kubectl_get_prints_upstreams_columns() {
    let state = apiserver::AppState::start(Arc::new(store::MemStore::new()))
        .await
        .unwrap();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, apiserver::router(state)).await });
    let client = Client::try_from(Config::new(url.parse().unwrap())).unwrap();
    let vms: Api<VirtualMachine> = Api::namespaced(client.clone(), "default");
    vms.create(&PostParams::default(), &example_vm())
        .await
        .unwrap();
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../../shared/upstream-examples/vmi-ephemeral.yaml");
    let api::Object::VirtualMachineInstance(vmi) =
        api::parse_documents(&std::fs::read_to_string(path).unwrap())
            .unwrap()
            .remove(0)
    else {
        unreachable!()
    };
    let vmis: Api<api::v1::VirtualMachineInstance> = Api::namespaced(client.clone(), "default");
    vmis.create(&PostParams::default(), &vmi).await.unwrap();
    let cache = tempfile::tempdir().unwrap();
    let cache_dir = cache.path().to_path_buf();
    let kubectl = move |args: &[&str]| {
        let out = std::process::Command::new("kubectl")
            .args(["--server", &url, "--cache-dir"])
            .arg(&cache_dir)
            .args(["-n", "default"])
            .args(args)
            .output()
            .expect("kubectl on PATH");
        assert!(
            out.status.success(),
            "kubectl {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).unwrap()
    };
    let out = tokio::task::spawn_blocking(move || {
        let vm = kubectl(&["get", "vm"]);
        let vmi_wide = kubectl(&["get", "vmi", "-o", "wide"]);
        let one = kubectl(&["get", "virtualmachine", "vm-cirros"]);
        (vm, vmi_wide, one)
    })
    .await
    .unwrap();
    let header = |s: &str| {
        s.lines()
            .next()
            .unwrap_or_default()
            .split_whitespace()
            .map(str::to_owned)
            .collect::<Vec<_>>()
    };
    assert_eq!(
        header(&out.0),
        ["NAME", "AGE", "STATUS", "READY"],
        "{}",
        out.0
    );
    let row: Vec<_> = out.0.lines().nth(1).unwrap().split_whitespace().collect();
    assert_eq!(row[0], "vm-cirros");
    assert!(
        row[1].ends_with('s'),
        "a human age, not a timestamp: {row:?}"
    );
    assert_eq!(
        header(&out.1),
        [
            "NAME",
            "AGE",
            "PHASE",
            "IP",
            "NODENAME",
            "READY",
            "LIVE-MIGRATABLE",
            "PAUSED"
        ],
        "{}",
        out.1
    );
    assert_eq!(header(&out.2), ["NAME", "AGE", "STATUS", "READY"]);
}

#[tokio::test]
async fn cluster_scoped_kinds_live_outside_namespaces() {
    use api::instancetype::VirtualMachineClusterInstancetype;
    let client = serve(Arc::new(store::MemStore::new())).await;
    let its: Api<VirtualMachineClusterInstancetype> = Api::all(client);
    let text = "apiVersion: instancetype.kubevirt.io/v1beta1\nkind: VirtualMachineClusterInstancetype\nmetadata: {name: cluster-csmall}\nspec: {cpu: {guest: 1}, memory: {guest: 128Mi}}\n";
    let api::Object::VirtualMachineClusterInstancetype(it) =
        api::parse_documents(text).unwrap().remove(0)
    else {
        unreachable!()
    };
    let created = its.create(&PostParams::default(), &it).await.unwrap();
    assert_eq!(created.metadata.namespace, None);
    assert_eq!(
        its.get("cluster-csmall").await.unwrap().spec.spec.cpu.guest,
        1
    );
    assert_eq!(
        its.list(&ListParams::default()).await.unwrap().items.len(),
        1
    );
    its.delete("cluster-csmall", &DeleteParams::default())
        .await
        .unwrap();
    assert_eq!(
        api_error(its.get("cluster-csmall").await.unwrap_err()).0,
        404
    );
}

#[tokio::test]
async fn delete_collection_removes_what_the_selector_picks() {
    let vms = tiered_vms().await;
    let deleted = vms
        .delete_collection(
            &DeleteParams::default(),
            &ListParams::default().labels("tier=front"),
        )
        .await
        .unwrap();
    let names: Vec<String> = deleted
        .left()
        .unwrap()
        .items
        .into_iter()
        .map(|vm| vm.metadata.name.unwrap())
        .collect();
    assert_eq!(names, ["a", "c"]);
    let left: Vec<String> = vms
        .list(&ListParams::default())
        .await
        .unwrap()
        .items
        .into_iter()
        .map(|vm| vm.metadata.name.unwrap())
        .collect();
    assert_eq!(left, ["b"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn racing_patches_all_land_and_a_stale_resource_version_is_refused() {
    use k8s_openapi::api::core::v1::ConfigMap;
    use kube::api::{Patch, PatchParams};

    let dir = tempfile::tempdir().unwrap();
    let store = store::SqliteStore::open(&dir.path().join("db.sqlite")).unwrap();
    let client = serve(Arc::new(store)).await;
    let cms: Api<ConfigMap> = Api::namespaced(client, "default");
    let cm: ConfigMap =
        serde_json::from_value(serde_json::json!({"metadata": {"name": "race"}})).unwrap();
    let created = cms.create(&PostParams::default(), &cm).await.unwrap();
    // Patches without a resourceVersion never conflict with each other: each is applied
    // to whatever is current when it is written.
    let writers = (0..16).map(|i| {
        let cms = cms.clone();
        tokio::spawn(async move {
            let patch = serde_json::json!({"data": {format!("k{i}"): "v"}});
            cms.patch("race", &PatchParams::default(), &Patch::Merge(&patch))
                .await
        })
    });
    for w in futures_util::future::join_all(writers).await {
        w.unwrap().unwrap();
    }
    let data = cms.get("race").await.unwrap().data.unwrap();
    assert_eq!(data.len(), 16, "{data:?}");
    // One that names an old resourceVersion is a precondition, and it failed.
    let stale = serde_json::json!({"metadata": {"resourceVersion": created.metadata.resource_version},
        "data": {"late": "v"}});
    let err = cms
        .patch("race", &PatchParams::default(), &Patch::Merge(&stale))
        .await
        .unwrap_err();
    assert_eq!(api_error(err).0, 409);
}
