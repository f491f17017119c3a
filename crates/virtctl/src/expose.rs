//! `virtctl expose`: a Service for a VM, VMI or VMI ReplicaSet, selecting its launcher
//! pods by the labels they inherit, as upstream's does.

use std::collections::BTreeMap;

use api::v1::{VirtualMachine, VirtualMachineInstance, VirtualMachineInstanceReplicaSet};
use k8s_openapi::api::core::v1::{Service, ServicePort, ServiceSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use kube::Api;
use kube::api::PostParams;

use crate::Error;
use crate::client::Ctx;

/// What `virtctl expose` exposes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Exposable {
    Vm,
    Vmi,
    Vmirs,
}

/// The flags of `virtctl expose`.
#[derive(Debug, Clone, clap::Args)]
pub struct ExposeArgs {
    pub kind: Exposable,
    pub name: String,
    /// The Service's name.
    #[arg(long = "name", value_name = "NAME")]
    pub service: String,
    /// The port the Service serves.
    #[arg(long)]
    pub port: i32,
    /// The guest's port (default: --port); a number or a port name.
    #[arg(long = "target-port")]
    pub target_port: Option<String>,
    /// ClusterIP, NodePort or LoadBalancer.
    #[arg(long = "type", default_value = "ClusterIP")]
    pub service_type: String,
    #[arg(long, default_value = "TCP")]
    pub protocol: String,
    #[arg(long = "port-name")]
    pub port_name: Option<String>,
    /// Labels the Service selects instead of the object's (key=value,...).
    #[arg(long)]
    pub selector: Option<String>,
    #[arg(long = "cluster-ip")]
    pub cluster_ip: Option<String>,
}

/// Labels that name where a VMI runs, not what it is: never part of a selector.
const PLACEMENT: [&str; 2] = [
    "kubevirt.io/nodeName",
    "kubevirt.io/migrationTargetNodeName",
];

fn kind_name(kind: Exposable) -> &'static str {
    match kind {
        Exposable::Vm => "VirtualMachine",
        Exposable::Vmi => "VirtualMachineInstance",
        Exposable::Vmirs => "VirtualMachineInstanceReplicaSet",
    }
}

/// The labels of the object's VMIs.
async fn labels_of(
    ctx: &Ctx,
    kind: Exposable,
    name: &str,
) -> Result<BTreeMap<String, String>, Error> {
    let what = format!("getting {} {name}", kind_name(kind));
    let labels = match kind {
        Exposable::Vmi => {
            let api: Api<VirtualMachineInstance> =
                Api::namespaced(ctx.client.clone(), &ctx.namespace);
            api.get(name)
                .await
                .map_err(Error::kube(what))?
                .metadata
                .labels
        }
        Exposable::Vm => {
            let api: Api<VirtualMachine> = Api::namespaced(ctx.client.clone(), &ctx.namespace);
            let vm = api.get(name).await.map_err(Error::kube(what))?;
            vm.spec.template.metadata.and_then(|m| m.labels)
        }
        Exposable::Vmirs => {
            let api: Api<VirtualMachineInstanceReplicaSet> =
                Api::namespaced(ctx.client.clone(), &ctx.namespace);
            let rs = api.get(name).await.map_err(Error::kube(what))?;
            rs.spec.template.metadata.and_then(|m| m.labels)
        }
    };
    let mut labels = labels.unwrap_or_default();
    for key in PLACEMENT {
        labels.remove(key);
    }
    Ok(labels)
}

fn parse_selector(text: &str) -> Result<BTreeMap<String, String>, Error> {
    text.split(',')
        .filter(|p| !p.is_empty())
        .map(|pair| {
            pair.split_once('=')
                .map(|(k, v)| (k.trim().to_owned(), v.trim().to_owned()))
                .ok_or_else(|| Error::Usage(format!("--selector: {pair:?} is not key=value")))
        })
        .collect()
}

/// The Service `args` asks for, selecting `selector`.
pub fn service(args: &ExposeArgs, namespace: &str, selector: BTreeMap<String, String>) -> Service {
    let target = args
        .target_port
        .as_deref()
        .map_or(IntOrString::Int(args.port), |t| {
            t.parse()
                .map_or_else(|_| IntOrString::String(t.to_owned()), IntOrString::Int)
        });
    Service {
        metadata: ObjectMeta {
            name: Some(args.service.clone()),
            namespace: Some(namespace.to_owned()),
            ..ObjectMeta::default()
        },
        spec: Some(ServiceSpec {
            type_: Some(args.service_type.clone()),
            cluster_ip: args.cluster_ip.clone(),
            selector: Some(selector),
            ports: Some(vec![ServicePort {
                name: args.port_name.clone(),
                port: args.port,
                protocol: Some(args.protocol.clone()),
                target_port: Some(target),
                ..ServicePort::default()
            }]),
            ..ServiceSpec::default()
        }),
        status: None,
    }
}

pub async fn expose(ctx: &Ctx, args: &ExposeArgs) -> Result<(), Error> {
    if !matches!(
        args.service_type.as_str(),
        "ClusterIP" | "NodePort" | "LoadBalancer"
    ) {
        return Err(Error::Usage(format!(
            "--type {}: must be ClusterIP, NodePort or LoadBalancer",
            args.service_type
        )));
    }
    if !(1..=65535).contains(&args.port) {
        return Err(Error::Usage(format!(
            "--port {}: must be 1 to 65535",
            args.port
        )));
    }
    let selector = match &args.selector {
        Some(s) => parse_selector(s)?,
        None => labels_of(ctx, args.kind, &args.name).await?,
    };
    if selector.is_empty() {
        return Err(Error::Usage(format!(
            "cannot expose {} without any label: {}",
            kind_name(args.kind),
            args.name
        )));
    }
    let api: Api<Service> = Api::namespaced(ctx.client.clone(), &ctx.namespace);
    api.create(
        &PostParams::default(),
        &service(args, &ctx.namespace, selector),
    )
    .await
    .map_err(Error::kube(format!("creating service {}", args.service)))?;
    let kind = match args.kind {
        Exposable::Vm => "vm",
        Exposable::Vmi => "vmi",
        Exposable::Vmirs => "vmirs",
    };
    println!(
        "Service {} successfully exposed for {kind} {}",
        args.service, args.name
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    fn args(target: Option<&str>) -> ExposeArgs {
        ExposeArgs {
            kind: Exposable::Vmi,
            name: "web".into(),
            service: "web-svc".into(),
            port: 80,
            target_port: target.map(str::to_owned),
            service_type: "NodePort".into(),
            protocol: "TCP".into(),
            port_name: None,
            selector: None,
            cluster_ip: None,
        }
    }

    #[test]
    fn the_service_selects_the_labels_and_maps_the_ports() {
        let selector = BTreeMap::from([("special".to_owned(), "web".to_owned())]);
        let svc = service(&args(Some("8080")), "default", selector.clone());
        let spec = svc.spec.unwrap();
        assert_eq!(spec.selector, Some(selector));
        assert_eq!(spec.type_.as_deref(), Some("NodePort"));
        let port = &spec.ports.unwrap()[0];
        assert_eq!(
            (port.port, port.target_port.clone()),
            (80, Some(IntOrString::Int(8080)))
        );
        let named = service(&args(Some("http")), "default", BTreeMap::new());
        assert_eq!(
            named.spec.unwrap().ports.unwrap()[0].target_port,
            Some(IntOrString::String("http".into()))
        );
        let same = service(&args(None), "default", BTreeMap::new());
        assert_eq!(
            same.spec.unwrap().ports.unwrap()[0].target_port,
            Some(IntOrString::Int(80))
        );
    }

    #[test]
    fn selectors_parse_or_say_why_not() {
        assert_eq!(parse_selector("a=1,b=2").unwrap().len(), 2);
        assert!(
            parse_selector("a")
                .unwrap_err()
                .to_string()
                .contains("not key=value")
        );
    }
}
