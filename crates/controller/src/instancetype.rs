//! Instancetypes and preferences for a VM's new VMI: fetched by reference at creation and
//! expanded into the VMI spec with `api::expand::expand`.
//!
//! A reference without `kind` means the cluster-wide kind, as upstream defaults it; kinds
//! are matched case-insensitively in their singular and plural forms. The VMI carries the
//! names in upstream's annotations (`kubevirt.io/instancetype-name`,
//! `kubevirt.io/cluster-instancetype-name`, and the preference pair). Revisions
//! (`revisionName`, ControllerRevisions) are not kept: every start reads the current
//! object.

use api::instancetype::{
    InstancetypeSpec, PreferenceSpec, VirtualMachineClusterInstancetype,
    VirtualMachineClusterPreference, VirtualMachineInstancetype, VirtualMachinePreference,
};
use api::v1::{VirtualMachine, VirtualMachineInstance};
use kube::Client;
use kube::api::Api;

use crate::error::Error;

/// Where a referenced object lives.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scope {
    Namespaced,
    Cluster,
}

/// The scope `kind` names for an instancetype (`preference = false`) or a preference.
pub fn scope(kind: Option<&str>, preference: bool) -> Result<Scope, String> {
    let kind = kind.unwrap_or_default().to_ascii_lowercase();
    let (namespaced, cluster) = if preference {
        (
            "virtualmachinepreference",
            "virtualmachineclusterpreference",
        )
    } else {
        (
            "virtualmachineinstancetype",
            "virtualmachineclusterinstancetype",
        )
    };
    match kind.strip_suffix('s').unwrap_or(&kind) {
        "" => Ok(Scope::Cluster),
        k if k == namespaced => Ok(Scope::Namespaced),
        k if k == cluster => Ok(Scope::Cluster),
        _ => Err(format!("unknown kind {kind:?}")),
    }
}

fn annotation(scope: Scope, preference: bool) -> &'static str {
    match (scope, preference) {
        (Scope::Namespaced, false) => "kubevirt.io/instancetype-name",
        (Scope::Cluster, false) => "kubevirt.io/cluster-instancetype-name",
        (Scope::Namespaced, true) => "kubevirt.io/preference-name",
        (Scope::Cluster, true) => "kubevirt.io/cluster-preference-name",
    }
}

/// Why a VMI cannot be made: a user-facing message.
pub type Missing = String;

/// Expands `vmi` (made from `vm`'s template) with the VM's instancetype and preference.
/// `Ok(Err(message))` when a reference cannot be resolved; `Err` when the API failed.
/// On success, the expansion's warnings.
pub async fn expand(
    client: &Client,
    vm: &VirtualMachine,
    vmi: &mut VirtualMachineInstance,
) -> Result<Result<Vec<String>, Missing>, Error> {
    let namespace = vm.metadata.namespace.clone().unwrap_or_default();
    let mut annotations = Vec::new();
    let mut instancetype = None;
    if let Some(m) = &vm.spec.instancetype {
        let found = match resolve(m.kind.as_deref(), m.name.as_deref(), false) {
            Ok((scope, name)) => {
                annotations.push((annotation(scope, false), name.to_owned()));
                fetch_instancetype(client, scope, &namespace, name).await?
            }
            Err(message) => return Ok(Err(format!("instancetype: {message}"))),
        };
        match found {
            Some(spec) => instancetype = Some(spec),
            None => {
                return Ok(Err(missing(
                    "instancetype",
                    m.kind.as_deref(),
                    m.name.as_deref(),
                )));
            }
        }
    }
    let mut preference = None;
    if let Some(m) = &vm.spec.preference {
        let found = match resolve(m.kind.as_deref(), m.name.as_deref(), true) {
            Ok((scope, name)) => {
                annotations.push((annotation(scope, true), name.to_owned()));
                fetch_preference(client, scope, &namespace, name).await?
            }
            Err(message) => return Ok(Err(format!("preference: {message}"))),
        };
        match found {
            Some(spec) => preference = Some(spec),
            None => {
                return Ok(Err(missing(
                    "preference",
                    m.kind.as_deref(),
                    m.name.as_deref(),
                )));
            }
        }
    }
    if instancetype.is_none() && preference.is_none() {
        return Ok(Ok(Vec::new()));
    }
    let expansion = api::expand::expand(
        &vmi.spec,
        "spec.template.spec",
        instancetype.as_ref(),
        preference.as_ref(),
    );
    vmi.spec = expansion.spec;
    let meta = vmi
        .metadata
        .annotations
        .get_or_insert_with(Default::default);
    for (k, v) in annotations {
        meta.insert(k.into(), v);
    }
    let extra = instancetype
        .iter()
        .flat_map(|i| &i.annotations)
        .chain(preference.iter().flat_map(|p| &p.annotations));
    for (k, v) in extra {
        meta.entry(k.clone()).or_insert_with(|| v.clone());
    }
    Ok(Ok(expansion.warnings))
}

fn resolve<'a>(
    kind: Option<&str>,
    name: Option<&'a str>,
    preference: bool,
) -> Result<(Scope, &'a str), String> {
    let scope = scope(kind, preference)?;
    let name = name.filter(|n| !n.is_empty()).ok_or("no name given")?;
    Ok((scope, name))
}

fn missing(what: &str, kind: Option<&str>, name: Option<&str>) -> String {
    let kind = match scope(kind, what == "preference") {
        Ok(Scope::Cluster) if what == "preference" => "VirtualMachineClusterPreference",
        Ok(Scope::Cluster) => "VirtualMachineClusterInstancetype",
        _ if what == "preference" => "VirtualMachinePreference",
        _ => "VirtualMachineInstancetype",
    };
    format!("{what} {kind} {:?} not found", name.unwrap_or_default())
}

async fn fetch_instancetype(
    client: &Client,
    scope: Scope,
    namespace: &str,
    name: &str,
) -> Result<Option<InstancetypeSpec>, Error> {
    let err = Error::api("get", "VirtualMachineInstancetype", name);
    Ok(match scope {
        Scope::Namespaced => {
            Api::<VirtualMachineInstancetype>::namespaced(client.clone(), namespace)
                .get_opt(name)
                .await
                .map_err(err)?
                .map(|o| o.spec)
        }
        Scope::Cluster => Api::<VirtualMachineClusterInstancetype>::all(client.clone())
            .get_opt(name)
            .await
            .map_err(err)?
            .map(|o| o.spec.spec),
    })
}

async fn fetch_preference(
    client: &Client,
    scope: Scope,
    namespace: &str,
    name: &str,
) -> Result<Option<PreferenceSpec>, Error> {
    let err = Error::api("get", "VirtualMachinePreference", name);
    Ok(match scope {
        Scope::Namespaced => Api::<VirtualMachinePreference>::namespaced(client.clone(), namespace)
            .get_opt(name)
            .await
            .map_err(err)?
            .map(|o| o.spec),
        Scope::Cluster => Api::<VirtualMachineClusterPreference>::all(client.clone())
            .get_opt(name)
            .await
            .map_err(err)?
            .map(|o| o.spec.spec),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kinds_default_to_cluster_and_match_loosely() {
        assert_eq!(scope(None, false), Ok(Scope::Cluster));
        assert_eq!(
            scope(Some("VirtualMachineInstancetype"), false),
            Ok(Scope::Namespaced)
        );
        assert_eq!(
            scope(Some("virtualmachineclusterpreferences"), true),
            Ok(Scope::Cluster)
        );
        assert!(scope(Some("VirtualMachinePreference"), false).is_err());
        assert_eq!(
            missing("instancetype", None, Some("u1.small")),
            "instancetype VirtualMachineClusterInstancetype \"u1.small\" not found"
        );
    }
}
