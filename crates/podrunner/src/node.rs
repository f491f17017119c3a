//! The Node object, as a kubelet keeps it: registered at start (our labels added,
//! everyone else's labels and annotations left alone: only merge patches), then a status
//! heartbeat with `Ready=True` and a renewed Lease in `kube-node-lease`.

use k8s_openapi::api::core::v1::{Namespace, Node};
use kube::Client;
use kube::api::{Api, Patch, PatchParams, PostParams};
use serde_json::{Value, json};

use crate::process::now;
use crate::status::rfc3339;

const LEASE_NAMESPACE: &str = "kube-node-lease";
/// How long the lease holds without renewal; four heartbeats.
const LEASE_SECONDS: i64 = 40;
/// The pods this node admits, as a kubelet's default `maxPods`.
const MAX_PODS: &str = "110";

/// The node this runner is.
#[derive(Debug, Clone)]
pub struct Agent {
    pub name: String,
    pub ip: String,
    /// The log endpoint's port (`kubeletEndpoint`).
    pub port: u16,
    /// When the node last turned Ready (kept across heartbeats and restarts).
    ready_since: Option<String>,
}

impl Agent {
    pub fn new(name: &str, ip: &str, port: u16) -> Self {
        Self {
            name: name.to_owned(),
            ip: ip.to_owned(),
            port,
            ready_since: None,
        }
    }

    /// Creates the Node or adds our labels to it, then reports its status.
    pub async fn register(&mut self, client: &Client) -> Result<(), kube::Error> {
        let api: Api<Node> = Api::all(client.clone());
        let labels = json!({
            "kubernetes.io/hostname": self.name,
            "kubernetes.io/os": "linux",
            "kubernetes.io/arch": architecture(),
        });
        match api.get_opt(&self.name).await? {
            None => {
                let node: Node = serde_json::from_value(json!({
                    "apiVersion": "v1", "kind": "Node",
                    "metadata": {"name": self.name, "labels": labels},
                }))
                .map_err(kube::Error::SerdeError)?;
                match api.create(&PostParams::default(), &node).await {
                    Err(kube::Error::Api(e)) if e.code == 409 => {}
                    other => {
                        other?;
                    }
                }
            }
            Some(node) => {
                self.ready_since = node
                    .status
                    .and_then(|s| s.conditions)
                    .into_iter()
                    .flatten()
                    .find(|c| c.type_ == "Ready" && c.status == "True")
                    .and_then(|c| c.last_transition_time)
                    .map(|t| t.0.to_string());
                let patch = json!({"metadata": {"labels": labels}});
                api.patch(&self.name, &PatchParams::default(), &Patch::Merge(patch))
                    .await?;
            }
        }
        tracing::info!(node = %self.name, ip = %self.ip, port = self.port, "node registered");
        self.heartbeat(client).await
    }

    /// Reports the node's status and renews its lease; re-registers a deleted node.
    pub async fn heartbeat(&mut self, client: &Client) -> Result<(), kube::Error> {
        let api: Api<Node> = Api::all(client.clone());
        let now = now();
        let since = self.ready_since.get_or_insert_with(|| rfc3339(now)).clone();
        let patch = json!({"status": self.status(&rfc3339(now), &since)});
        match api
            .patch_status(&self.name, &PatchParams::default(), &Patch::Merge(patch))
            .await
        {
            Err(kube::Error::Api(e)) if e.code == 404 => {
                tracing::warn!(node = %self.name, "node deleted: registering it again");
                self.ready_since = None;
                return Box::pin(self.register(client)).await;
            }
            other => {
                other?;
            }
        }
        if let Err(e) = self.renew_lease(client).await {
            tracing::warn!(node = %self.name, error = %e, "node lease not renewed");
        }
        Ok(())
    }

    fn status(&self, now: &str, since: &str) -> Value {
        let condition = |kind: &str, status: &str, reason: &str, message: &str, since: &str| {
            json!({"type": kind, "status": status, "reason": reason, "message": message,
                   "lastHeartbeatTime": now, "lastTransitionTime": since})
        };
        let mut resources = json!({
            "cpu": std::thread::available_parallelism().map_or(1, |n| n.get()).to_string(),
            "memory": memory(),
            "pods": MAX_PODS,
        });
        // What a device plugin would advertise (1k, as upstream's for /dev/kvm).
        for resource in crate::oci::node_devices().keys() {
            resources[resource] = json!("1k");
        }
        json!({
            "addresses": [
                {"type": "InternalIP", "address": self.ip},
                {"type": "Hostname", "address": self.name},
            ],
            "daemonEndpoints": {"kubeletEndpoint": {"Port": self.port}},
            "capacity": resources,
            "allocatable": resources,
            "nodeInfo": node_info(),
            "conditions": [
                condition("MemoryPressure", "False", "NoMemoryPressure", "not checked by the pod runner", since),
                condition("DiskPressure", "False", "NoDiskPressure", "not checked by the pod runner", since),
                condition("PIDPressure", "False", "NoPIDPressure", "not checked by the pod runner", since),
                condition("Ready", "True", "PodRunnerReady", "the kubevirt-rs pod runner is running", since),
            ],
        })
    }

    async fn renew_lease(&self, client: &Client) -> Result<(), kube::Error> {
        let namespaces: Api<Namespace> = Api::all(client.clone());
        if namespaces.get_opt(LEASE_NAMESPACE).await?.is_none() {
            let ns = serde_json::from_value(json!({"metadata": {"name": LEASE_NAMESPACE}}))
                .map_err(kube::Error::SerdeError)?;
            match namespaces.create(&PostParams::default(), &ns).await {
                Err(kube::Error::Api(e)) if e.code == 409 => {}
                other => {
                    other?;
                }
            }
        }
        let leases: Api<k8s_openapi::api::coordination::v1::Lease> =
            Api::namespaced(client.clone(), LEASE_NAMESPACE);
        let renewed = k8s_openapi::jiff::Timestamp::now()
            .round(k8s_openapi::jiff::Unit::Microsecond)
            .map(|t| t.to_string())
            .unwrap_or_default();
        let lease = json!({
            "apiVersion": "coordination.k8s.io/v1", "kind": "Lease",
            "metadata": {"name": self.name, "namespace": LEASE_NAMESPACE},
            "spec": {"holderIdentity": self.name, "leaseDurationSeconds": LEASE_SECONDS,
                     "renewTime": renewed},
        });
        match leases
            .patch(&self.name, &PatchParams::default(), &Patch::Merge(&lease))
            .await
        {
            Err(kube::Error::Api(e)) if e.code == 404 => {
                let lease = serde_json::from_value(lease).map_err(kube::Error::SerdeError)?;
                leases
                    .create(&PostParams::default(), &lease)
                    .await
                    .map(|_| ())
            }
            other => other.map(|_| ()),
        }
    }
}

/// Kubernetes' name for this machine's architecture.
fn architecture() -> &'static str {
    match std::env::consts::ARCH {
        "x86_64" => "amd64",
        "aarch64" => "arm64",
        "powerpc64" => "ppc64le",
        other => other,
    }
}

/// `MemTotal` from `/proc/meminfo`, as a quantity.
fn memory() -> String {
    let total = std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|m| {
            let line = m.lines().find(|l| l.starts_with("MemTotal:"))?.to_owned();
            line.split_whitespace().nth(1).map(str::to_owned)
        })
        .unwrap_or_else(|| "0".to_owned());
    format!("{total}Ki")
}

fn node_info() -> Value {
    let read = |path: &str| {
        std::fs::read_to_string(path)
            .map(|s| s.trim().to_owned())
            .unwrap_or_default()
    };
    let os_image = read("/etc/os-release")
        .lines()
        .find_map(|l| l.strip_prefix("PRETTY_NAME="))
        .map(|v| v.trim_matches('"').to_owned())
        .unwrap_or_else(|| "Linux".to_owned());
    let machine_id = read("/etc/machine-id");
    let uuid = read("/sys/class/dmi/id/product_uuid");
    let version = env!("CARGO_PKG_VERSION");
    json!({
        "machineID": machine_id,
        "systemUUID": if uuid.is_empty() { machine_id.clone() } else { uuid },
        "bootID": read("/proc/sys/kernel/random/boot_id"),
        "kernelVersion": read("/proc/sys/kernel/osrelease"),
        "osImage": os_image,
        "containerRuntimeVersion": format!("kubevirt-rs://{version}"),
        "kubeletVersion": format!("v1.33.0-kubevirt-rs.{version}"),
        "kubeProxyVersion": "",
        "operatingSystem": "linux",
        "architecture": architecture(),
    })
}
