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

fn allocated(state: &AppState) -> Result<(HashSet<String>, HashSet<u64>), ApiError> {
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

/// Defaults and allocates on `svc`, a Service being created.
pub fn allocate(state: &AppState, svc: &mut Value) -> Result<(), ApiError> {
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
    if kind == "ExternalName" {
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
    let invalid =
        |field: &str, message: &str| ApiError::unprocessable("Service", &name, field, message);
    match spec["clusterIP"].as_str() {
        Some("None") => {}
        // Given: kept as it is. In-process servers (virt-api) share 127.0.0.1 on their
        // own ports, so a given address is not required to be unused.
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
