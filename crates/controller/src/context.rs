//! What the controllers share (client, caches, expectations, events, clock), and the
//! wiring that runs them together.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use api::v1::{
    VirtualMachine, VirtualMachineInstance, VirtualMachineInstanceMigration,
    VirtualMachineInstanceReplicaSet,
};
use futures_util::StreamExt;
use k8s_openapi::api::core::v1::Pod;
use k8s_openapi::jiff::Timestamp;
use kube::api::Api;
use kube::runtime::controller::{Action, Controller};
use kube::runtime::reflector::Store;
use kube::runtime::watcher;
use kube::{Client, Resource, ResourceExt};
use reconcile::pod::LauncherConfig;
use tracing::{debug, warn};

use crate::error::{Error, chain};
use crate::events::{Recorder, Writer};
use crate::informer::{Expectations, informer};

/// Everything a reconcile may use.
pub(crate) struct Context {
    pub client: Client,
    pub launcher: LauncherConfig,
    /// The components' namespace, where the KubeVirt CR is created.
    pub namespace: String,
    pub recorder: Recorder,
    writer: Mutex<Option<Writer>>,
    /// Launcher pods created or deleted by the VMI controller, by VMI uid.
    pub pod_expectations: Arc<Expectations<Pod>>,
    /// VMIs created or deleted by the ReplicaSet controller, by ReplicaSet uid.
    pub vmi_expectations: Arc<Expectations<VirtualMachineInstance>>,
    pub caches: Caches,
    failures: Mutex<HashMap<String, u32>>,
    /// By object uid, the resourceVersion a status write of ours replaced: a cached
    /// object still at that version is older than what we know, and deciding on it
    /// could undo the write (start a VM whose backoff the write recorded).
    superseded: Mutex<HashMap<String, String>>,
    pub now: fn() -> Timestamp,
}

/// The caches the reconciles read (filled in when the controllers start).
#[derive(Debug, Default)]
pub(crate) struct Caches {
    vmis: std::sync::OnceLock<Store<VirtualMachineInstance>>,
    pods: std::sync::OnceLock<Store<Pod>>,
    migrations: std::sync::OnceLock<Store<VirtualMachineInstanceMigration>>,
    kubevirts: std::sync::OnceLock<Store<api::kubevirt::KubeVirt>>,
}

impl Caches {
    fn get<K: kube::runtime::reflector::Lookup + Clone>(
        cell: &std::sync::OnceLock<Store<K>>,
    ) -> Vec<Arc<K>>
    where
        K::DynamicType: Eq + std::hash::Hash + Clone,
    {
        cell.get().map(Store::state).unwrap_or_default()
    }

    /// The VMIs of `namespace`.
    pub fn vmis(&self, namespace: &str) -> Vec<Arc<VirtualMachineInstance>> {
        Self::get(&self.vmis)
            .into_iter()
            .filter(|v| v.metadata.namespace.as_deref() == Some(namespace))
            .collect()
    }

    /// Every migration.
    pub fn migrations(&self) -> Vec<Arc<VirtualMachineInstanceMigration>> {
        Self::get(&self.migrations)
    }

    /// Every KubeVirt CR.
    pub fn kubevirts(&self) -> Vec<Arc<api::kubevirt::KubeVirt>> {
        Self::get(&self.kubevirts)
    }

    /// The VMI `namespace/name`.
    pub fn vmi(&self, namespace: &str, name: &str) -> Option<Arc<VirtualMachineInstance>> {
        let key = kube::runtime::reflector::ObjectRef::new(name).within(namespace);
        self.vmis.get().and_then(|s| s.get(&key))
    }

    /// The launcher pods of `namespace` controlled by the object with `uid`.
    pub fn pods_of(&self, namespace: &str, uid: &str) -> Vec<Pod> {
        Self::get(&self.pods)
            .into_iter()
            .filter(|p| p.metadata.namespace.as_deref() == Some(namespace))
            .filter(|p| {
                p.owner_references()
                    .iter()
                    .any(|o| o.controller == Some(true) && o.uid == uid)
            })
            .map(|p| (*p).clone())
            .collect()
    }
}

/// First retry after a failed reconcile; doubles per failure up to [`MAX_BACKOFF`].
const FIRST_BACKOFF: Duration = Duration::from_millis(200);
const MAX_BACKOFF: Duration = Duration::from_secs(60);
/// Even with nothing to do, look again this often (a resync).
pub(crate) const RESYNC: Duration = Duration::from_secs(300);

impl std::fmt::Debug for Context {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Context")
            .field("launcher", &self.launcher)
            .finish_non_exhaustive()
    }
}

impl Context {
    pub fn new(client: Client, config: &crate::Config) -> Self {
        let (recorder, writer) = Recorder::new(client.clone(), config.identity.clone());
        Self {
            client,
            launcher: LauncherConfig {
                image: config.launcher_image.clone(),
                software_emulation: config.software_emulation,
                host_disk_dirs: config.host_disk_dirs.clone(),
                userfaultfd: config.userfaultfd,
            },
            namespace: config.namespace.clone(),
            recorder,
            writer: Mutex::new(Some(writer)),
            pod_expectations: Arc::default(),
            vmi_expectations: Arc::default(),
            caches: Caches::default(),
            failures: Mutex::default(),
            superseded: Mutex::default(),
            now: Timestamp::now,
        }
    }

    fn key<K: Resource<DynamicType = ()>>(obj: &K) -> String {
        format!(
            "{}/{}/{}",
            K::kind(&()),
            obj.meta().namespace.as_deref().unwrap_or_default(),
            obj.meta().name.as_deref().unwrap_or_default()
        )
    }

    /// Our status write replaced `obj` at its current resourceVersion.
    pub fn wrote_over<K: Resource<DynamicType = ()>>(&self, obj: &K) {
        let meta = obj.meta();
        if let (Some(uid), Some(rv)) = (&meta.uid, &meta.resource_version) {
            let mut superseded = self.superseded.lock().unwrap_or_else(|p| p.into_inner());
            superseded.insert(uid.clone(), rv.clone());
        }
    }

    /// Whether the cache's `obj` is a version one of our status writes replaced: the
    /// watch has not delivered the write yet.
    pub fn is_stale<K: Resource<DynamicType = ()>>(&self, obj: &K) -> bool {
        let meta = obj.meta();
        let Some(uid) = &meta.uid else {
            return false;
        };
        let mut superseded = self.superseded.lock().unwrap_or_else(|p| p.into_inner());
        match superseded.get(uid) {
            Some(rv) if Some(rv) == meta.resource_version.as_ref() => true,
            Some(_) => {
                superseded.remove(uid);
                false
            }
            None => false,
        }
    }

    /// A reconcile of `obj` succeeded: its next failure starts the backoff over.
    pub fn succeeded<K: Resource<DynamicType = ()>>(&self, obj: &K) {
        let mut failures = self.failures.lock().unwrap_or_else(|p| p.into_inner());
        failures.remove(&Self::key(obj));
    }

    /// A reconcile of `obj` failed: log it and say when to retry.
    pub fn failed<K: Resource<DynamicType = ()>>(&self, obj: &K, error: &Error) -> Action {
        let key = Self::key(obj);
        let count = {
            let mut failures = self.failures.lock().unwrap_or_else(|p| p.into_inner());
            let n = failures.entry(key.clone()).or_insert(0);
            *n = n.saturating_add(1);
            *n
        };
        let delay = FIRST_BACKOFF
            .saturating_mul(1 << count.saturating_sub(1).min(16))
            .min(MAX_BACKOFF);
        warn!(object = %key, failures = count, retry_in = ?delay, error = %chain(error), "reconcile failed");
        Action::requeue(delay)
    }
}

fn log_result<T: std::fmt::Debug, E: std::error::Error>(result: Result<T, E>) {
    if let Err(error) = result {
        // Reconcile failures are logged by the error policy; what is left is the queue
        // (an object deleted before its turn, a stream error already retried).
        debug!(%error, "controller");
    }
}

/// Runs the caches, the three controllers and the event writer; returns only if all of
/// them stop.
pub(crate) async fn run_controllers(ctx: Arc<Context>) {
    let client = ctx.client.clone();
    let vmis = informer(
        Api::<VirtualMachineInstance>::all(client.clone()),
        watcher::Config::default(),
        4,
        vec![ctx.vmi_expectations.clone()],
    );
    let pods = informer(
        Api::<Pod>::all(client.clone()),
        watcher::Config::default().labels("kubevirt.io=virt-launcher"),
        2,
        vec![ctx.pod_expectations.clone()],
    );
    let vms = informer(
        Api::<VirtualMachine>::all(client.clone()),
        watcher::Config::default(),
        1,
        Vec::new(),
    );
    let replicasets = informer(
        Api::<VirtualMachineInstanceReplicaSet>::all(client.clone()),
        watcher::Config::default(),
        1,
        Vec::new(),
    );
    let migrations = informer(
        Api::<VirtualMachineInstanceMigration>::all(client.clone()),
        watcher::Config::default(),
        1,
        Vec::new(),
    );
    let kubevirts = informer(
        Api::<api::kubevirt::KubeVirt>::all(client.clone()),
        watcher::Config::default(),
        1,
        Vec::new(),
    );
    let _ = ctx.caches.kubevirts.set(kubevirts.store.clone());
    let _ = ctx.caches.vmis.set(vmis.store.clone());
    let _ = ctx.caches.migrations.set(migrations.store.clone());
    let _ = ctx.caches.pods.set(pods.store.clone());
    let writer = ctx.writer.lock().unwrap_or_else(|p| p.into_inner()).take();

    let mut vmi_triggers = vmis.triggers.into_iter();
    let mut pod_triggers = pods.triggers.into_iter();
    let (
        Some(vmi_self),
        Some(vmi_for_vm),
        Some(vmi_for_rs),
        Some(vmi_for_migration),
        Some(pod_trigger),
        Some(pod_for_migration),
    ) = (
        vmi_triggers.next(),
        vmi_triggers.next(),
        vmi_triggers.next(),
        vmi_triggers.next(),
        pod_triggers.next(),
        pod_triggers.next(),
    )
    else {
        return;
    };

    let vmi_controller = Controller::for_stream(vmi_self, vmis.store.clone())
        .owns_stream(pod_trigger)
        .run(crate::vmi::reconcile, crate::vmi::error_policy, ctx.clone())
        .for_each(|r| async move { log_result(r) });

    let mut vm_triggers = vms.triggers;
    let Some(vm_trigger) = vm_triggers.pop() else {
        return;
    };
    let vm_controller = Controller::for_stream(vm_trigger, vms.store.clone())
        .owns_stream(vmi_for_vm)
        .run(crate::vm::reconcile, crate::vm::error_policy, ctx.clone())
        .for_each(|r| async move { log_result(r) });

    let mut rs_triggers = replicasets.triggers;
    let Some(rs_trigger) = rs_triggers.pop() else {
        return;
    };
    let rs_store = replicasets.store.clone();
    let rs_controller = Controller::for_stream(rs_trigger, replicasets.store.clone())
        .watches_stream(vmi_for_rs, move |vmi| {
            crate::replicaset::interested(&rs_store, &vmi)
        })
        .run(
            crate::replicaset::reconcile,
            crate::replicaset::error_policy,
            ctx.clone(),
        )
        .for_each(|r| async move { log_result(r) });

    let mut migration_triggers = migrations.triggers;
    let Some(migration_trigger) = migration_triggers.pop() else {
        return;
    };
    let by_vmi = migrations.store.clone();
    let by_pod = migrations.store.clone();
    let migration_controller = Controller::for_stream(migration_trigger, migrations.store.clone())
        .watches_stream(vmi_for_migration, move |vmi| {
            crate::migration::for_vmi(&by_vmi, &vmi)
        })
        .watches_stream(pod_for_migration, move |pod| {
            crate::migration::for_pod(&by_pod, &pod)
        })
        .run(
            crate::migration::reconcile,
            crate::migration::error_policy,
            ctx.clone(),
        )
        .for_each(|r| async move { log_result(r) });

    let events = async move {
        if let Some(w) = writer {
            w.run().await;
        }
    };
    // As client-go's WaitForCacheSync: a controller deciding off a cache that has not
    // listed yet would, say, make replicas for VMIs it does not see.
    let vmi_store = vmis.store.clone();
    let pod_store = pods.store.clone();
    let vm_store = vms.store.clone();
    let rs_store = replicasets.store.clone();
    let migration_store = migrations.store.clone();
    let kubevirt_store = kubevirts.store.clone();
    let kubevirt_controller =
        crate::kubevirt::run(kubevirts.triggers, kubevirts.store, ctx.clone());
    let controllers = async move {
        let synced = tokio::try_join!(
            vmi_store.wait_until_ready(),
            pod_store.wait_until_ready(),
            vm_store.wait_until_ready(),
            rs_store.wait_until_ready(),
            migration_store.wait_until_ready(),
            kubevirt_store.wait_until_ready(),
        );
        if synced.is_err() {
            return;
        }
        tokio::join!(
            vmi_controller,
            vm_controller,
            rs_controller,
            migration_controller,
            kubevirt_controller,
        );
    };
    tokio::join!(
        vmis.driver,
        pods.driver,
        vms.driver,
        replicasets.driver,
        migrations.driver,
        kubevirts.driver,
        controllers,
        events,
    );
}
