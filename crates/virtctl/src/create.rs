//! `create vm`: a VirtualMachine manifest shaped as upstream's `virtctl create vm`
//! prints it, checked by the api crate's strict parsing and validation before printing.

use serde_json::{Value, json};

use crate::Error;
use crate::cli::CreateVm;

/// Upstream's guest memory when neither an instancetype nor `--memory` says.
const DEFAULT_MEMORY: &str = "512Mi";

/// `[kind/]name` of an instancetype or preference; kinds as the API spells them.
fn matcher(value: &str, namespaced: &str, cluster: &str, flag: &str) -> Result<Value, Error> {
    let (kind, name) = match value.split_once('/') {
        Some((kind, name)) => (Some(kind), name),
        None => (None, value),
    };
    if name.is_empty() {
        return Err(Error::Usage(format!("--{flag}: a name is needed")));
    }
    let kind = match kind.map(str::to_ascii_lowercase).as_deref() {
        None => return Ok(json!({"name": name})),
        Some(k) if k == namespaced.to_ascii_lowercase() => namespaced,
        Some(k) if k == cluster.to_ascii_lowercase() => cluster,
        Some(other) => {
            return Err(Error::Usage(format!(
                "--{flag}: unknown kind {other:?} (use {namespaced} or {cluster})"
            )));
        }
    };
    Ok(json!({"kind": kind, "name": name}))
}

/// `src:IMAGE[,name:NAME]`.
fn containerdisk(spec: &str, default_name: String) -> Result<Value, Error> {
    let (mut image, mut name) = (None, default_name);
    for param in spec.split(',') {
        match param.split_once(':') {
            Some(("src", v)) if !v.is_empty() => image = Some(v.to_owned()),
            Some(("name", v)) if !v.is_empty() => name = v.to_owned(),
            _ => {
                return Err(Error::Usage(format!(
                    "--volume-containerdisk {spec:?}: expected src:IMAGE[,name:NAME]"
                )));
            }
        }
    }
    let image = image.ok_or_else(|| {
        Error::Usage(format!(
            "--volume-containerdisk {spec:?}: src:IMAGE is required"
        ))
    })?;
    Ok(json!({"name": name, "containerDisk": {"image": image}}))
}

fn random_suffix() -> String {
    const CHARS: &[u8] = b"abcdefghijklmnopqrstuvwxyz0123456789";
    let mut bytes = [0u8; 5];
    let _ = getrandom::fill(&mut bytes);
    bytes
        .iter()
        .map(|b| char::from(CHARS[usize::from(*b) % CHARS.len()]))
        .collect()
}

/// The manifest as a value.
pub fn vm_manifest(args: &CreateVm) -> Result<Value, Error> {
    let name = args
        .name
        .clone()
        .unwrap_or_else(|| format!("vm-{}", random_suffix()));
    let volumes = args
        .volume_containerdisk
        .iter()
        .enumerate()
        .map(|(i, v)| containerdisk(v, format!("{name}-containerdisk-{i}")))
        .collect::<Result<Vec<_>, _>>()?;
    let mut domain = json!({"devices": {}, "resources": {}});
    if args.instancetype.is_none() || args.memory.is_some() {
        let memory = args.memory.as_deref().unwrap_or(DEFAULT_MEMORY);
        domain["memory"] = json!({"guest": memory});
    }
    let mut template_spec = json!({
        "domain": domain,
        "terminationGracePeriodSeconds": args.termination_grace_period,
    });
    if !volumes.is_empty() {
        template_spec["volumes"] = json!(volumes);
    }
    let mut spec = json!({"runStrategy": args.run_strategy, "template": {"metadata": {}, "spec": template_spec}});
    if let Some(it) = &args.instancetype {
        spec["instancetype"] = matcher(
            it,
            "VirtualMachineInstancetype",
            "VirtualMachineClusterInstancetype",
            "instancetype",
        )?;
    }
    if let Some(p) = &args.preference {
        spec["preference"] = matcher(
            p,
            "VirtualMachinePreference",
            "VirtualMachineClusterPreference",
            "preference",
        )?;
    }
    Ok(
        json!({"apiVersion": "kubevirt.io/v1", "kind": "VirtualMachine", "metadata": {"name": name}, "spec": spec}),
    )
}

/// The manifest as YAML, refused with the first problem the api crate finds.
pub fn vm_yaml(args: &CreateVm) -> Result<String, Error> {
    let manifest = vm_manifest(args)?;
    let object = api::parse_object(manifest.clone()).map_err(|e| Error::Usage(e.to_string()))?;
    if let Some(cause) = api::validate::validate(&object).first() {
        return Err(Error::Usage(cause.to_string()));
    }
    serde_saphyr::to_string(&manifest).map_err(|e| Error::Usage(e.to_string()))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    #[test]
    fn flags_become_upstream_shaped_fields() {
        let args = CreateVm {
            name: Some("web".into()),
            instancetype: Some("virtualmachineinstancetype/small".into()),
            preference: Some("fedora".into()),
            volume_containerdisk: vec!["src:quay.io/containerdisks/fedora:41".into()],
            run_strategy: "Halted".into(),
            termination_grace_period: 180,
            ..CreateVm::default()
        };
        let vm = vm_manifest(&args).unwrap();
        assert_eq!(
            vm["spec"]["instancetype"],
            json!({"kind": "VirtualMachineInstancetype", "name": "small"})
        );
        assert_eq!(vm["spec"]["preference"], json!({"name": "fedora"}));
        assert_eq!(
            vm["spec"]["template"]["spec"]["volumes"],
            json!([{"name": "web-containerdisk-0", "containerDisk": {"image": "quay.io/containerdisks/fedora:41"}}])
        );
        assert!(vm["spec"]["template"]["spec"]["domain"]["memory"].is_null());
        let yaml = vm_yaml(&args).unwrap();
        assert!(yaml.contains("runStrategy: Halted"), "{yaml}");
    }

    #[test]
    fn bad_flags_are_one_line_errors() {
        for bad in ["image-only", "src:", "name:x", "src:a,bogus:1"] {
            let args = CreateVm {
                volume_containerdisk: vec![bad.into()],
                run_strategy: "Always".into(),
                ..CreateVm::default()
            };
            let e = vm_yaml(&args).unwrap_err().to_string();
            assert!(!e.contains('\n'), "{e}");
        }
        let args = CreateVm {
            run_strategy: "Sometimes".into(),
            ..CreateVm::default()
        };
        assert!(vm_yaml(&args).is_err());
    }
}
