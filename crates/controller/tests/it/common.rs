//! The test cluster: an API server, a controller, and helpers that play the node.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use api::v1::{VirtualMachine, VirtualMachineInstance};
use k8s_openapi::api::core::v1::{Event, Namespace, Pod};
use kube::api::{Api, DeleteParams, ListParams, Patch, PatchParams, PostParams};
use kube::{Client, Config};
use serde_json::{Value, json};
use tokio::task::JoinHandle;

pub const NS: &str = "default";
pub const LAUNCHER: &str = "kubevirt-rs/virt-launcher:test";

/// A task aborted when dropped.
pub struct Task(pub JoinHandle<()>);

impl Drop for Task {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// An API server on a free port, with the `kubevirt` namespace.
pub struct Cluster {
    pub client: Client,
    _server: Task,
}

impl Cluster {
    pub async fn start() -> Self {
        // `RUST_LOG=controller=debug` shows what the controllers did.
        let _ = tracing_subscriber::fmt()
            .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
            .with_test_writer()
            .try_init();
        let store = Arc::new(store::MemStore::new());
        let state = apiserver::AppState::start(store).await.unwrap();
        let listener = tokio::net::TcpListener::bind(("127.0.0.1", 0))
            .await
            .unwrap();
        let port = listener.local_addr().unwrap().port();
        let server = tokio::spawn(async move {
            let _ = axum::serve(listener, apiserver::router(state)).await;
        });
        let mut config = Config::new(format!("http://127.0.0.1:{port}").parse().unwrap());
        config.read_timeout = Some(Duration::from_secs(30));
        let client = Client::try_from(config).unwrap();
        let ns: Namespace =
            serde_json::from_value(json!({"metadata": {"name": "kubevirt"}})).unwrap();
        Api::<Namespace>::all(client.clone())
            .create(&PostParams::default(), &ns)
            .await
            .unwrap();
        Self {
            client,
            _server: Task(server),
        }
    }

    /// Starts a controller instance named `identity`.
    pub fn controller(&self, identity: &str) -> Task {
        let config = controller::Config {
            launcher_image: LAUNCHER.into(),
            software_emulation: true,
            host_disk_dirs: Vec::new(),
            userfaultfd: false,
            namespace: "kubevirt".into(),
            identity: identity.into(),
        };
        let client = self.client.clone();
        Task(tokio::spawn(async move {
            if let Err(e) = controller::run(client, config).await {
                panic!("controller stopped: {e:#}");
            }
        }))
    }

    pub fn vmis(&self) -> Api<VirtualMachineInstance> {
        Api::namespaced(self.client.clone(), NS)
    }

    pub fn vms(&self) -> Api<VirtualMachine> {
        Api::namespaced(self.client.clone(), NS)
    }

    pub fn pods(&self) -> Api<Pod> {
        Api::namespaced(self.client.clone(), NS)
    }

    /// The launcher pods of the VMI with `uid`.
    pub async fn pods_of(&self, uid: &str) -> Vec<Pod> {
        let lp = ListParams::default().labels(&format!("kubevirt.io/created-by={uid}"));
        self.pods().list(&lp).await.unwrap().items
    }

    /// Plays the pod runner: binds `pod` to `node-1`, then reports it Running and Ready.
    pub async fn run_pod(&self, pod: &str) {
        let pods = self.pods();
        let bind = json!({"spec": {"nodeName": "node-1"}});
        patch(&pods, pod, &bind).await;
        let status = json!({"status": {"phase": "Running",
            "conditions": [{"type": "Ready", "status": "True"}]}});
        patch_status(&pods, pod, &status).await;
    }

    /// Plays the handler: the VMI runs and is ready.
    pub async fn run_vmi(&self, name: &str) {
        let status = json!({"status": {"phase": "Running",
            "conditions": [{"type": "Ready", "status": "True"}]}});
        patch(&self.vmis(), name, &status).await;
    }

    /// Deletes a pod at once, as its node would once it stopped.
    pub async fn force_delete_pod(&self, pod: &str) {
        let _ = self
            .pods()
            .delete(pod, &DeleteParams::default().grace_period(0))
            .await
            .unwrap();
    }

    /// The reasons of the events about `kind/name`.
    pub async fn event_reasons(&self, kind: &str, name: &str) -> Vec<String> {
        let events: Api<Event> = Api::namespaced(self.client.clone(), NS);
        let lp = ListParams::default().fields(&format!(
            "involvedObject.kind={kind},involvedObject.name={name}"
        ));
        events
            .list(&lp)
            .await
            .unwrap()
            .items
            .into_iter()
            .filter_map(|e| e.reason)
            .collect()
    }
}

/// A VMI or VM template spec: small, no disks.
pub fn vmi_spec() -> Value {
    json!({"domain": {"devices": {}, "memory": {"guest": "64Mi"}}})
}

pub fn vmi(name: &str) -> VirtualMachineInstance {
    serde_json::from_value(
        json!({"apiVersion": "kubevirt.io/v1", "kind": "VirtualMachineInstance",
        "metadata": {"name": name, "namespace": NS}, "spec": vmi_spec()}),
    )
    .unwrap()
}

pub fn vm(name: &str, run_strategy: &str) -> VirtualMachine {
    serde_json::from_value(
        json!({"apiVersion": "kubevirt.io/v1", "kind": "VirtualMachine",
        "metadata": {"name": name, "namespace": NS},
        "spec": {"runStrategy": run_strategy,
            "template": {"metadata": {"labels": {"app": name}}, "spec": vmi_spec()}}}),
    )
    .unwrap()
}

pub fn phase(vmi: &VirtualMachineInstance) -> Option<String> {
    let v = serde_json::to_value(vmi.status.as_ref()?.phase?).ok()?;
    v.as_str().map(str::to_owned)
}

/// A merge patch, retried on 409: the API server answers a patch that lost a race with
/// a conflict instead of applying it again, as Kubernetes does.
pub async fn patch<K>(api: &Api<K>, name: &str, body: &Value)
where
    K: Clone + serde::de::DeserializeOwned + std::fmt::Debug,
{
    for _ in 0..20 {
        match api
            .patch(name, &PatchParams::default(), &Patch::Merge(body))
            .await
        {
            Ok(_) => return,
            Err(kube::Error::Api(s)) if s.code == 409 => continue,
            Err(e) => panic!("patching {name}: {e}"),
        }
    }
    panic!("patching {name}: conflicts");
}

/// [`patch`] on the status subresource.
pub async fn patch_status<K>(api: &Api<K>, name: &str, body: &Value)
where
    K: Clone + serde::de::DeserializeOwned + std::fmt::Debug,
{
    for _ in 0..20 {
        match api
            .patch_status(name, &PatchParams::default(), &Patch::Merge(body))
            .await
        {
            Ok(_) => return,
            Err(kube::Error::Api(s)) if s.code == 409 => continue,
            Err(e) => panic!("patching the status of {name}: {e}"),
        }
    }
    panic!("patching the status of {name}: conflicts");
}

const DEADLINE: Duration = Duration::from_secs(10);

/// Polls `check` until it returns something, failing the test after a deadline.
pub async fn until<T, F, Fut>(what: &str, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let deadline = tokio::time::Instant::now() + DEADLINE;
    loop {
        if let Some(v) = check().await {
            return v;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// The VMI `name` once `pred` holds for it.
pub async fn vmi_until(
    c: &Cluster,
    name: &str,
    what: &str,
    pred: impl Fn(&VirtualMachineInstance) -> bool,
) -> VirtualMachineInstance {
    let api = c.vmis();
    until(what, || {
        let api = api.clone();
        let pred = &pred;
        async move { api.get_opt(name).await.unwrap().filter(|v| pred(v)) }
    })
    .await
}

/// The VM `name` once `pred` holds for it.
pub async fn vm_until(
    c: &Cluster,
    name: &str,
    what: &str,
    pred: impl Fn(&VirtualMachine) -> bool,
) -> VirtualMachine {
    let api = c.vms();
    until(what, || {
        let api = api.clone();
        let pred = &pred;
        async move { api.get_opt(name).await.unwrap().filter(|v| pred(v)) }
    })
    .await
}

/// The one launcher pod of the VMI with `uid`, once it exists.
pub async fn pod_of(c: &Cluster, uid: &str) -> Pod {
    until("the launcher pod", || async {
        c.pods_of(uid).await.into_iter().next()
    })
    .await
}

pub fn printable(vm: &VirtualMachine) -> Option<&str> {
    vm.status.as_ref()?.printable_status.as_deref()
}

pub fn condition(vm: &VirtualMachine, ty: &str) -> Option<(String, Option<String>)> {
    vm.status
        .as_ref()?
        .conditions
        .iter()
        .find(|c| c.type_ == ty)
        .map(|c| (c.status.clone(), c.message.clone()))
}
