//! What kube-apiserver fills in on a new Service: the defaults (`type: ClusterIP`,
//! `sessionAffinity: None`, each port's `protocol: TCP` and `targetPort` = `port`), a
//! cluster IP, and node ports for NodePort and LoadBalancer services.
//!
//! Cluster IPs that are not given come from 127.10.0.0/16: on one machine every loopback address is local,
//! so the embedded service proxy can serve each Service at its own cluster IP and port,
//! as a cluster does. Node ports come from 30000-32767, as Kubernetes' default range.

use std::collections::HashSet;
use std::net::Ipv4Addr;

use serde_json::{Value, json};
use store::ListRequest;

use crate::{ApiError, AppState};

const NODE_PORTS: std::ops::RangeInclusive<u64> = 30000..=32767;

/// Whether `ip` is in the service range (127.10.0.0/16, neither network nor broadcast
/// of a /24), where users' cluster IPs must be.
fn in_service_range(ip: &str) -> bool {
    ip.parse::<Ipv4Addr>().is_ok_and(|a| {
        let [a, b, _, d] = a.octets();
        a == 127 && b == 10 && d != 0 && d != 255
    })
}

/// The identity of virt-api, whose Service shares 127.0.0.1 with the other in-process
/// servers.
const VIRT_API_USER: &str = "system:serviceaccount:kubevirt:kubevirt-apiserver";

/// Whether `user` may place a Service outside the service range: the server itself,
/// cluster admins and virt-api.
pub fn privileged(user: Option<&crate::User>) -> bool {
    user.is_none_or(|u| {
        u.groups.iter().any(|g| g == crate::rbac::MASTERS) || u.name == VIRT_API_USER
    })
}

/// Whether a Service of type `kind` has node ports (the others may not name any).
fn has_node_ports(kind: &str) -> bool {
    matches!(kind, "NodePort" | "LoadBalancer")
}

/// Refuses node ports of `svc` outside the range or held by another Service than
/// `except` (its own name and namespace on an update).
fn check_node_ports(
    state: &AppState,
    svc: &Value,
    except: Option<(&str, &str)>,
) -> Result<(), ApiError> {
    let name = svc["metadata"]["name"].as_str().unwrap_or_default();
    let (_, taken) = allocated_except(state, except)?;
    let mut mine = HashSet::new();
    for (i, p) in svc["spec"]["ports"]
        .as_array()
        .into_iter()
        .flatten()
        .enumerate()
    {
        let Some(n) = p["nodePort"].as_u64() else {
            continue;
        };
        let field = format!("spec.ports[{i}].nodePort");
        if !NODE_PORTS.contains(&n) {
            return Err(ApiError::unprocessable(
                "Service",
                name,
                &field,
                &format!(
                    "Invalid value: {n}: provided port is not in the valid range. The range of valid ports is 30000-32767"
                ),
            ));
        }
        if taken.contains(&n) || !mine.insert(n) {
            return Err(ApiError::unprocessable(
                "Service",
                name,
                &field,
                &format!("Invalid value: {n}: provided port is already allocated"),
            ));
        }
    }
    Ok(())
}

/// On an update of a Service: the cluster IP cannot change (as in Kubernetes; one left
/// out is kept), and node ports stay in range and unshared.
pub fn check_update(state: &AppState, old: &Value, new: &mut Value) -> Result<(), ApiError> {
    let name = new["metadata"]["name"]
        .as_str()
        .unwrap_or_default()
        .to_owned();
    let ns = new["metadata"]["namespace"]
        .as_str()
        .unwrap_or_default()
        .to_owned();
    let ip = |v: &Value| {
        v["spec"]["clusterIP"]
            .as_str()
            .unwrap_or_default()
            .to_owned()
    };
    if ip(new).is_empty() && !ip(old).is_empty() && new["spec"].is_object() {
        new["spec"]["clusterIP"] = old["spec"]["clusterIP"].clone();
        new["spec"]["clusterIPs"] = old["spec"]["clusterIPs"].clone();
    }
    let name = name.as_str();
    let kind = |v: &Value| v["spec"]["type"].as_str().unwrap_or("ClusterIP").to_owned();
    if kind(old) == "ExternalName" && kind(new) != "ExternalName" {
        // It has no cluster IP or node ports to keep: it is made anew, through the checks.
        return Err(ApiError::unprocessable(
            "Service",
            name,
            "spec.type",
            "an ExternalName Service cannot change its type: delete and create it",
        ));
    }
    if !has_node_ports(&kind(new)) {
        // A Service that no longer has node ports lets go of them, as Kubernetes does.
        for p in new["spec"]["ports"].as_array_mut().into_iter().flatten() {
            if let Some(p) = p.as_object_mut() {
                p.remove("nodePort");
            }
        }
    }
    if ip(new) != ip(old) {
        return Err(ApiError::unprocessable(
            "Service",
            name,
            "spec.clusterIP",
            &format!("Invalid value: {:?}: field is immutable", ip(new)),
        ));
    }
    check_node_ports(state, new, Some((&ns, name)))
}

fn allocated(state: &AppState) -> Result<(HashSet<String>, HashSet<u64>), ApiError> {
    allocated_except(state, None)
}

/// The cluster IPs and node ports Services hold, but `except` (namespace, name).
fn allocated_except(
    state: &AppState,
    except: Option<(&str, &str)>,
) -> Result<(HashSet<String>, HashSet<u64>), ApiError> {
    let page = state.store.list(&ListRequest {
        prefix: "/core/services/".into(),
        ..Default::default()
    })?;
    let mut ips = HashSet::new();
    let mut ports = HashSet::new();
    for kv in &page.items {
        let Ok(svc) = serde_json::from_slice::<Value>(&kv.value) else {
            continue;
        };
        let meta = &svc["metadata"];
        if except.is_some_and(|(ns, name)| meta["namespace"] == ns && meta["name"] == name) {
            continue;
        }
        if let Some(ip) = svc["spec"]["clusterIP"].as_str() {
            ips.insert(ip.to_owned());
        }
        for p in svc["spec"]["ports"].as_array().into_iter().flatten() {
            if let Some(n) = p["nodePort"].as_u64() {
                ports.insert(n);
            }
        }
    }
    Ok((ips, ports))
}

/// Defaults and allocates on `svc`, a Service being created; a cluster IP a user gives
/// must be in the service range and free (`privileged` callers may place one anywhere).
pub fn allocate(state: &AppState, svc: &mut Value, privileged: bool) -> Result<(), ApiError> {
    let name = svc["metadata"]["name"]
        .as_str()
        .unwrap_or_default()
        .to_owned();
    let spec = &mut svc["spec"];
    if spec["type"].as_str().is_none_or(str::is_empty) {
        spec["type"] = json!("ClusterIP");
    }
    if spec["sessionAffinity"].is_null() {
        spec["sessionAffinity"] = json!("None");
    }
    let kind = spec["type"].as_str().unwrap_or_default().to_owned();
    let invalid =
        |field: &str, message: &str| ApiError::unprocessable("Service", &name, field, message);
    if !has_node_ports(&kind) {
        for (i, p) in spec["ports"].as_array().into_iter().flatten().enumerate() {
            if !p["nodePort"].is_null() {
                return Err(invalid(
                    &format!("spec.ports[{i}].nodePort"),
                    &format!("may not be used when `type` is '{kind}'"),
                ));
            }
        }
    }
    if kind == "ExternalName" {
        if spec["clusterIP"].as_str().is_some_and(|ip| !ip.is_empty()) {
            return Err(invalid(
                "spec.clusterIP",
                "must be empty for type ExternalName",
            ));
        }
        return Ok(());
    }
    for p in spec["ports"].as_array_mut().into_iter().flatten() {
        if p["protocol"].is_null() {
            p["protocol"] = json!("TCP");
        }
        if p["targetPort"].is_null() {
            p["targetPort"] = p["port"].clone();
        }
    }
    let (ips, node_ports) = allocated(state)?;
    match spec["clusterIP"].as_str() {
        Some("None") => {}
        // Given by a user: in the range and not another Service's, or the service proxy
        // would serve one tenant's Service at another's address, or at a host address.
        Some(ip) if !ip.is_empty() && !privileged => {
            if !in_service_range(ip) {
                return Err(invalid(
                    "spec.clusterIPs",
                    &format!(
                        "Invalid value: {ip:?}: provided IP is not in the valid range. The range of valid IPs is 127.10.0.0/16"
                    ),
                ));
            }
            if ips.contains(ip) {
                return Err(invalid(
                    "spec.clusterIPs",
                    &format!("Invalid value: {ip:?}: provided IP is already allocated"),
                ));
            }
        }
        // In-process servers (virt-api) share 127.0.0.1 on their own ports.
        Some(ip) if !ip.is_empty() => {}
        _ => {
            let free = (1..=u16::MAX)
                .map(|n| Ipv4Addr::new(127, 10, (n >> 8) as u8, (n & 0xff) as u8).to_string())
                .find(|ip| !ips.contains(ip) && !ip.ends_with(".255") && !ip.ends_with(".0"))
                .ok_or_else(|| invalid("spec.clusterIPs", "no cluster IP is free"))?;
            spec["clusterIP"] = json!(free);
        }
    }
    if let Some(ip) = spec["clusterIP"].as_str().map(str::to_owned) {
        spec["clusterIPs"] = json!([ip]);
        if ip != "None" {
            spec["ipFamilies"] = json!(["IPv4"]);
            spec["ipFamilyPolicy"] = json!("SingleStack");
        }
    }
    if matches!(kind.as_str(), "NodePort" | "LoadBalancer") {
        let mut taken = node_ports;
        for (i, p) in spec["ports"]
            .as_array_mut()
            .into_iter()
            .flatten()
            .enumerate()
        {
            match p["nodePort"].as_u64() {
                Some(n) if !NODE_PORTS.contains(&n) => {
                    return Err(invalid(
                        &format!("spec.ports[{i}].nodePort"),
                        &format!(
                            "Invalid value: {n}: provided port is not in the valid range. The range of valid ports is 30000-32767"
                        ),
                    ));
                }
                Some(n) if taken.contains(&n) => {
                    return Err(invalid(
                        &format!("spec.ports[{i}].nodePort"),
                        &format!("Invalid value: {n}: provided port is already allocated"),
                    ));
                }
                Some(n) => {
                    taken.insert(n);
                }
                None => {
                    let n = NODE_PORTS
                        .clone()
                        .find(|n| !taken.contains(n))
                        .ok_or_else(|| invalid("spec.ports", "no node port is free"))?;
                    taken.insert(n);
                    p["nodePort"] = json!(n);
                }
            }
        }
    }
    Ok(())
}
