//! Embedded mode's service proxy, the part of kube-proxy one machine needs: every port of
//! every Service that selects pods is served on the host, at the Service's cluster IP
//! (a loopback address, see the API server's allocation) and, for NodePort and
//! LoadBalancer services, at `127.0.0.1:<nodePort>`.
//!
//! Each connection goes to one of the Service's ready pods, in turn. A launcher pod counts
//! as ready while its VMI is Ready (its readiness probe passes, it is not paused), as on a
//! cluster, where the kubelet runs the VMI's probe against the launcher pod. It is
//! reached the way its masquerade binding is on a cluster: the launcher forwards the
//! target port to the guest (`PortForward` over its control socket, under the run
//! directory of the pod's node). Any other pod is reached at its IP and the target port.
//! Only TCP is served; named target ports are looked up in the pod's container ports.

use std::collections::{BTreeMap, HashMap};
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use api::v1::VirtualMachineInstance;
use futures_util::StreamExt;
use k8s_openapi::api::core::v1::{Pod, Service};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use kube::Api;
use kube::runtime::reflector::{self, Store};
use kube::runtime::{WatchStreamExt, watcher};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinHandle;
use tracing::{debug, info, warn};

/// Where each node's launchers keep their run directories.
pub type RunDirs = BTreeMap<String, handler::Launchers>;

/// One served address: which Service port it stands for.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Route {
    namespace: String,
    service: String,
    selector: BTreeMap<String, String>,
    target: IntOrString,
}

/// The addresses the Services ask for, each with its route.
fn routes(services: &[Arc<Service>]) -> HashMap<SocketAddr, Route> {
    let mut wanted = HashMap::new();
    let mut contested = Vec::new();
    for svc in services {
        let Some(spec) = svc.spec.as_ref() else {
            continue;
        };
        let selector = spec.selector.clone().unwrap_or_default();
        if selector.is_empty() || spec.type_.as_deref() == Some("ExternalName") {
            continue;
        }
        let cluster_ip = spec
            .cluster_ip
            .as_deref()
            .and_then(|ip| ip.parse::<IpAddr>().ok())
            .filter(IpAddr::is_loopback);
        for port in spec.ports.iter().flatten() {
            if port.protocol.as_deref().is_some_and(|p| p != "TCP") {
                continue;
            }
            let route = Route {
                namespace: svc.metadata.namespace.clone().unwrap_or_default(),
                service: svc.metadata.name.clone().unwrap_or_default(),
                selector: selector.clone(),
                target: port
                    .target_port
                    .clone()
                    .unwrap_or(IntOrString::Int(port.port)),
            };
            let as_port = |n: i32| u16::try_from(n).ok();
            // An address two Services claim is served for neither: the API server keeps
            // them apart, and a conflict that slips by must not hand one's traffic to the
            // other.
            let mut claim = |addr: SocketAddr, route: Route| match wanted.entry(addr) {
                std::collections::hash_map::Entry::Occupied(_) => contested.push(addr),
                std::collections::hash_map::Entry::Vacant(v) => {
                    v.insert(route);
                }
            };
            if let (Some(ip), Some(p)) = (cluster_ip, as_port(port.port)) {
                claim(SocketAddr::new(ip, p), route.clone());
            }
            // Node ports only for the types that have them.
            let has_node_ports = matches!(spec.type_.as_deref(), Some("NodePort" | "LoadBalancer"));
            if let Some(p) = port.node_port.and_then(as_port).filter(|_| has_node_ports) {
                claim(SocketAddr::from(([127, 0, 0, 1], p)), route);
            }
        }
    }
    for addr in contested {
        wanted.remove(&addr);
    }
    wanted
}

/// Whether `pod` takes connections; a launcher pod only while its VMI is Ready.
fn ready(pod: &Pod, vmis: &Store<VirtualMachineInstance>) -> bool {
    let labels = pod.metadata.labels.as_ref();
    let vmi_uid = labels
        .filter(|l| l.get("kubevirt.io").map(String::as_str) == Some("virt-launcher"))
        .and_then(|l| l.get("kubevirt.io/created-by"));
    if let Some(uid) = vmi_uid {
        let vmi_ready = vmis.state().iter().any(|v| {
            v.metadata.uid.as_ref() == Some(uid)
                && v.status.as_ref().is_some_and(|s| {
                    s.conditions
                        .iter()
                        .any(|c| c.type_ == "Ready" && c.status == "True")
                })
        });
        if !vmi_ready {
            return false;
        }
    }
    pod.metadata.deletion_timestamp.is_none()
        && pod.status.as_ref().is_some_and(|s| {
            s.phase.as_deref() == Some("Running")
                && s.conditions
                    .iter()
                    .flatten()
                    .any(|c| c.type_ == "Ready" && c.status == "True")
        })
}

/// The ready pods a route sends to.
fn backends(
    pods: &Store<Pod>,
    vmis: &Store<VirtualMachineInstance>,
    route: &Route,
) -> Vec<Arc<Pod>> {
    let mut found: Vec<Arc<Pod>> = pods
        .state()
        .into_iter()
        .filter(|p| p.metadata.namespace.as_deref() == Some(route.namespace.as_str()))
        .filter(|p| {
            let labels = p.metadata.labels.clone().unwrap_or_default();
            route.selector.iter().all(|(k, v)| labels.get(k) == Some(v))
        })
        .filter(|p| ready(p, vmis))
        .collect();
    found.sort_by(|a, b| a.metadata.name.cmp(&b.metadata.name));
    found
}

/// The pod's port number for `target`.
fn port_of(pod: &Pod, target: &IntOrString) -> Option<u16> {
    match target {
        IntOrString::Int(n) => u16::try_from(*n).ok(),
        IntOrString::String(s) => s.parse().ok().or_else(|| {
            pod.spec.as_ref()?.containers.iter().find_map(|c| {
                c.ports
                    .iter()
                    .flatten()
                    .find(|p| p.name.as_deref() == Some(s.as_str()))
                    .and_then(|p| u16::try_from(p.container_port).ok())
            })
        }),
    }
}

/// Connects to `pod`'s `port`: through the launcher for a VMI's pod, else directly.
async fn dial(pod: &Pod, port: u16, run_dirs: &RunDirs) -> Result<TcpStream, String> {
    let labels = pod.metadata.labels.clone().unwrap_or_default();
    if labels.get("kubevirt.io").map(String::as_str) == Some("virt-launcher") {
        let uid = labels
            .get("kubevirt.io/created-by")
            .ok_or("the launcher pod names no VMI")?;
        let node = pod
            .spec
            .as_ref()
            .and_then(|s| s.node_name.clone())
            .unwrap_or_default();
        let launchers = run_dirs
            .get(&node)
            .ok_or_else(|| format!("node {node} is not on this machine"))?;
        // This pod's own run directory: a pod that only claims to be a VMI's launcher
        // (its labels are its namespace's to write) reaches nothing but itself.
        let pod_uid = pod.metadata.uid.as_deref().unwrap_or_default();
        let socket = launchers
            .run_dir(pod_uid)
            .ok_or_else(|| format!("the launcher pod {pod_uid} has no run directory"))?
            .socket(uid);
        let request = launcher_proto::Request::PortForward { port };
        let answer = launcher_proto::call(&socket, &request, Duration::from_secs(10))
            .await
            .map_err(|e| e.to_string())?;
        let address = match answer {
            launcher_proto::Response::Value { value } => value["address"]
                .as_str()
                .and_then(|a| a.parse::<SocketAddr>().ok())
                .ok_or("the launcher gave no address")?,
            launcher_proto::Response::Error { message, .. } => return Err(message),
            other => return Err(format!("unexpected answer {other:?}")),
        };
        return TcpStream::connect(address)
            .await
            .map_err(|e| format!("{address}: {e}"));
    }
    let ip = pod
        .status
        .as_ref()
        .and_then(|s| s.pod_ip.clone())
        .ok_or("the pod has no IP")?;
    TcpStream::connect((ip.as_str(), port))
        .await
        .map_err(|e| format!("{ip}:{port}: {e}"))
}

/// What a served address needs to pick a backend.
#[derive(Clone)]
struct Stores {
    pods: Store<Pod>,
    vmis: Store<VirtualMachineInstance>,
}

async fn serve(listener: TcpListener, route: Route, stores: Stores, run_dirs: Arc<RunDirs>) {
    let turn = Arc::new(AtomicUsize::new(0));
    while let Ok((mut client, peer)) = listener.accept().await {
        let (route, stores, run_dirs, turn) = (
            route.clone(),
            stores.clone(),
            run_dirs.clone(),
            turn.clone(),
        );
        tokio::spawn(async move {
            let candidates = backends(&stores.pods, &stores.vmis, &route);
            if candidates.is_empty() {
                debug!(service = %route.service, %peer, "no ready pod");
                return;
            }
            let pod = &candidates[turn.fetch_add(1, Ordering::Relaxed) % candidates.len()];
            let Some(port) = port_of(pod, &route.target) else {
                warn!(service = %route.service, target = ?route.target, "no such port on the pod");
                return;
            };
            match dial(pod, port, &run_dirs).await {
                Ok(mut upstream) => {
                    let _ = tokio::io::copy_bidirectional(&mut client, &mut upstream).await;
                }
                Err(e) => warn!(service = %route.service, error = %e, "reaching the pod"),
            }
        });
    }
}

/// Runs the proxy until dropped.
pub async fn run(client: kube::Client, run_dirs: RunDirs) -> anyhow::Result<()> {
    let run_dirs = Arc::new(run_dirs);
    let (services, service_writer) = reflector::store::<Service>();
    let (pods, pod_writer) = reflector::store::<Pod>();
    let service_events = watcher(
        Api::<Service>::all(client.clone()),
        watcher::Config::default(),
    )
    .default_backoff()
    .reflect(service_writer)
    .touched_objects();
    let (vmis, vmi_writer) = reflector::store::<VirtualMachineInstance>();
    let pod_events = watcher(Api::<Pod>::all(client.clone()), watcher::Config::default())
        .default_backoff()
        .reflect(pod_writer)
        .touched_objects();
    let vmi_events = watcher(
        Api::<VirtualMachineInstance>::all(client),
        watcher::Config::default(),
    )
    .default_backoff()
    .reflect(vmi_writer)
    .touched_objects();
    tokio::spawn(pod_events.for_each(|_| async {}));
    tokio::spawn(vmi_events.for_each(|_| async {}));
    let stores = Stores { pods, vmis };
    let mut service_events = std::pin::pin!(service_events);
    let mut serving: HashMap<SocketAddr, (Route, JoinHandle<()>)> = HashMap::new();
    while let Some(event) = service_events.next().await {
        if let Err(e) = event {
            debug!(error = %e, "service watch");
            continue;
        }
        let wanted = routes(&services.state());
        serving.retain(|addr, (route, task)| {
            let keep = wanted.get(addr) == Some(route);
            if !keep {
                task.abort();
                info!(%addr, service = %route.service, "no longer serving");
            }
            keep
        });
        for (addr, route) in wanted {
            if serving.contains_key(&addr) {
                continue;
            }
            match TcpListener::bind(addr).await {
                Ok(listener) => {
                    info!(%addr, service = %route.service, namespace = %route.namespace, "serving");
                    let task = tokio::spawn(serve(
                        listener,
                        route.clone(),
                        stores.clone(),
                        run_dirs.clone(),
                    ));
                    serving.insert(addr, (route, task));
                }
                // An in-process server's own Service (virt-api's): it serves itself.
                Err(e) if e.kind() == std::io::ErrorKind::AddrInUse => {
                    debug!(%addr, service = %route.service, "in use already");
                }
                Err(e) => warn!(%addr, service = %route.service, error = %e, "cannot serve"),
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use serde_json::json;

    use super::*;

    #[test]
    fn services_are_served_at_their_cluster_ip_and_node_ports() {
        let svc: Service = serde_json::from_value(json!({
            "metadata": {"name": "web", "namespace": "default"},
            "spec": {"type": "NodePort", "clusterIP": "127.10.0.7", "selector": {"app": "web"},
                "ports": [{"port": 80, "targetPort": 8080, "nodePort": 30080, "protocol": "TCP"},
                          {"port": 53, "protocol": "UDP"}]}}))
        .unwrap();
        let headless: Service = serde_json::from_value(json!({
            "metadata": {"name": "db", "namespace": "default"},
            "spec": {"clusterIP": "None", "selector": {"app": "db"}, "ports": [{"port": 5432}]}}))
        .unwrap();
        let unselected: Service = serde_json::from_value(json!({
            "metadata": {"name": "ext", "namespace": "default"},
            "spec": {"clusterIP": "127.10.0.8", "ports": [{"port": 443}]}}))
        .unwrap();
        let got = routes(&[Arc::new(svc), Arc::new(headless), Arc::new(unselected)]);
        let mut addrs: Vec<String> = got.keys().map(ToString::to_string).collect();
        addrs.sort();
        assert_eq!(addrs, ["127.0.0.1:30080", "127.10.0.7:80"]);
        let route = &got[&"127.10.0.7:80".parse().unwrap()];
        assert_eq!(route.target, IntOrString::Int(8080));
    }

    #[test]
    fn a_contested_address_or_a_stray_node_port_is_served_for_nobody() {
        let service = |name: &str, spec: serde_json::Value| -> Arc<Service> {
            let mut spec = spec;
            spec["selector"] = json!({"app": name});
            Arc::new(
                serde_json::from_value(
                    json!({"metadata": {"name": name, "namespace": "t"}, "spec": spec}),
                )
                .unwrap(),
            )
        };
        let got = routes(&[
            service(
                "a",
                json!({"clusterIP": "127.10.0.9", "ports": [{"port": 80}]}),
            ),
            service(
                "b",
                json!({"clusterIP": "127.10.0.9", "ports": [{"port": 80}]}),
            ),
            service(
                "c",
                json!({"clusterIP": "127.10.0.10", "ports": [{"port": 80, "nodePort": 30999}]}),
            ),
        ]);
        let mut addrs: Vec<String> = got.keys().map(ToString::to_string).collect();
        addrs.sort();
        assert_eq!(addrs, ["127.10.0.10:80"]);
    }

    #[test]
    fn a_launcher_pod_takes_connections_only_while_its_vmi_is_ready() {
        let pod: Pod = serde_json::from_value(json!({
            "metadata": {"name": "virt-launcher-web-abcde", "namespace": "default",
                "labels": {"kubevirt.io": "virt-launcher", "kubevirt.io/created-by": "u1"}},
            "status": {"phase": "Running", "conditions": [{"type": "Ready", "status": "True"}]}}))
        .unwrap();
        let vmi = |ready: &str| -> VirtualMachineInstance {
            serde_json::from_value(json!({
                "apiVersion": "kubevirt.io/v1", "kind": "VirtualMachineInstance",
                "metadata": {"name": "web", "namespace": "default", "uid": "u1"},
                "spec": {"domain": {"devices": {}}},
                "status": {"phase": "Running", "conditions": [{"type": "Ready", "status": ready}]}}))
            .unwrap()
        };
        let (vmis, mut writer) = reflector::store::<VirtualMachineInstance>();
        assert!(!ready(&pod, &vmis), "no VMI known");
        writer.apply_watcher_event(&watcher::Event::Apply(vmi("False")));
        assert!(!ready(&pod, &vmis), "VMI not ready");
        writer.apply_watcher_event(&watcher::Event::Apply(vmi("True")));
        assert!(ready(&pod, &vmis));
        let mut plain = pod.clone();
        plain.metadata.labels = None;
        let (none, _) = reflector::store::<VirtualMachineInstance>();
        assert!(
            ready(&plain, &none),
            "other pods go by their own Ready condition"
        );
    }
}
