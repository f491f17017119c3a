//! `virtctl create vm`: a VirtualMachine manifest on stdout, in upstream's shape, that the
//! API server accepts as it is.

use serde_json::{Value, json};

use crate::cli::{CreateKind, CreateVm};
use crate::conn::Error;

/// Memory a VM gets without an instancetype, as upstream's `create vm`.
const DEFAULT_MEMORY: &str = "512Mi";

/// The manifest as YAML.
pub fn vm_yaml(kind: &CreateKind) -> Result<String, Error> {
    let CreateKind::Vm(args) = kind;
    let vm = vm(args, &random_suffix())?;
    serde_saphyr::to_string(&vm).map_err(|e| Error::Usage(e.to_string()))
}

fn random_suffix() -> String {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or_default();
    let alphabet = b"bcdfghjklmnpqrstvwxz2456789";
    let mut n = nanos ^ std::process::id().rotate_left(16);
    (0..5)
        .map(|_| {
            let c = alphabet[(n % alphabet.len() as u32) as usize] as char;
            n /= alphabet.len() as u32;
            c
        })
        .collect()
}

/// `KIND/NAME` or `NAME`, with `default_kind`.
fn reference(value: &str, flag: &str, kinds: [&str; 2]) -> Result<Value, Error> {
    let (kind, name) = match value.split_once('/') {
        Some((kind, name)) => (Some(kind.to_ascii_lowercase()), name),
        None => (None, value),
    };
    if name.is_empty() {
        return Err(Error::Usage(format!("--{flag}: a name is needed")));
    }
    let mut r = json!({"name": name});
    match kind.as_deref() {
        None => {}
        Some(k) if k == kinds[0].to_ascii_lowercase() || k == kinds[1].to_ascii_lowercase() => {
            let kind = if k == kinds[0].to_ascii_lowercase() {
                kinds[0]
            } else {
                kinds[1]
            };
            r["kind"] = json!(kind);
        }
        Some(k) => {
            return Err(Error::Usage(format!(
                "--{flag}: unknown kind {k:?}; use {} or {}",
                kinds[0].to_ascii_lowercase(),
                kinds[1].to_ascii_lowercase()
            )));
        }
    }
    Ok(r)
}

/// `src:IMAGE[,name:NAME][,bootorder:N]`.
fn container_disk(params: &str, vm: &str, index: usize) -> Result<(Value, Value), Error> {
    let mut image = None;
    let mut name = format!("{vm}-containerdisk-{index}");
    let mut boot_order = None;
    for part in params.split(',') {
        let (k, v) = part.split_once(':').ok_or_else(|| {
            Error::Usage(format!(
                "--volume-containerdisk {params:?}: expected key:value pairs"
            ))
        })?;
        match k {
            "src" => image = Some(v.to_owned()),
            "name" => name = v.to_owned(),
            "bootorder" => {
                boot_order = Some(v.parse::<u32>().map_err(|_| {
                    Error::Usage(format!(
                        "--volume-containerdisk: bootorder {v:?} is not a number"
                    ))
                })?)
            }
            other => {
                return Err(Error::Usage(format!(
                    "--volume-containerdisk: unknown parameter {other:?} (src, name, bootorder)"
                )));
            }
        }
    }
    let image =
        image.ok_or_else(|| Error::Usage("--volume-containerdisk: src:IMAGE is needed".into()))?;
    let mut disk = json!({"name": name, "disk": {"bus": "virtio"}});
    if let Some(order) = boot_order {
        disk["bootOrder"] = json!(order);
    }
    Ok((
        disk,
        json!({"name": name, "containerDisk": {"image": image}}),
    ))
}

fn vm(args: &CreateVm, suffix: &str) -> Result<Value, Error> {
    let name = args.name.clone().unwrap_or_else(|| format!("vm-{suffix}"));
    api::validate::dns1123_subdomain(&name)
        .map_err(|e| Error::Usage(format!("--name {name:?}: {e}")))?;
    let mut disks = Vec::new();
    let mut volumes = Vec::new();
    for (i, params) in args.container_disks.iter().enumerate() {
        let (disk, volume) = container_disk(params, &name, i)?;
        disks.push(disk);
        volumes.push(volume);
    }
    if let Some(user_data) = &args.cloud_init_user_data {
        disks.push(json!({"name": "cloudinitdisk", "disk": {"bus": "virtio"}}));
        volumes.push(json!({"name": "cloudinitdisk", "cloudInitNoCloud": {"userData": user_data}}));
    }
    let mut domain = json!({"devices": {}, "resources": {}});
    if !disks.is_empty() {
        domain["devices"]["disks"] = json!(disks);
    }
    match (&args.instancetype, &args.memory) {
        (Some(_), Some(_)) => {
            return Err(Error::Usage(
                "--memory and --instancetype exclude each other: the instancetype sets the memory"
                    .into(),
            ));
        }
        (None, memory) => {
            domain["memory"] = json!({"guest": memory.as_deref().unwrap_or(DEFAULT_MEMORY)});
        }
        (Some(_), None) => {}
    }
    let mut template_spec =
        json!({"domain": domain, "terminationGracePeriodSeconds": args.termination_grace_period});
    if !volumes.is_empty() {
        template_spec["volumes"] = json!(volumes);
    }
    let mut spec = json!({
        "runStrategy": args.run_strategy,
        "template": {"metadata": {"creationTimestamp": null}, "spec": template_spec},
    });
    if let Some(it) = &args.instancetype {
        spec["instancetype"] = reference(
            it,
            "instancetype",
            [
                "VirtualMachineInstancetype",
                "VirtualMachineClusterInstancetype",
            ],
        )?;
    }
    if let Some(p) = &args.preference {
        spec["preference"] = reference(
            p,
            "preference",
            [
                "VirtualMachinePreference",
                "VirtualMachineClusterPreference",
            ],
        )?;
    }
    let vm = json!({
        "apiVersion": "kubevirt.io/v1",
        "kind": "VirtualMachine",
        "metadata": {"creationTimestamp": null, "name": name},
        "spec": spec,
        "status": {},
    });
    // What we print must be what the API server accepts.
    let object = api::parse::parse_object(vm.clone()).map_err(|e| Error::Usage(e.to_string()))?;
    if let Some(cause) = api::validate::validate(&object).first() {
        return Err(Error::Usage(cause.to_string()));
    }
    Ok(vm)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    fn args(extra: &[&str]) -> CreateVm {
        use clap::Parser;
        let cli = crate::cli::Cli::try_parse_from([&["virtctl", "create", "vm"], extra].concat())
            .unwrap();
        match cli.command {
            crate::cli::Command::Create(CreateKind::Vm(a)) => a,
            _ => unreachable!(),
        }
    }

    #[test]
    fn a_plain_vm_has_upstreams_defaults() {
        let vm = vm(&args(&[]), "abcde").unwrap();
        assert_eq!(vm["metadata"]["name"], "vm-abcde");
        assert_eq!(vm["spec"]["runStrategy"], "Always");
        assert_eq!(
            vm["spec"]["template"]["spec"]["domain"]["memory"]["guest"],
            "512Mi"
        );
        assert_eq!(
            vm["spec"]["template"]["spec"]["terminationGracePeriodSeconds"],
            180
        );
    }

    #[test]
    fn instancetypes_preferences_and_container_disks() {
        let vm = vm(
            &args(&[
                "--name",
                "web",
                "--instancetype",
                "u1.small",
                "--preference",
                "virtualmachinepreference/virtio",
                "--volume-containerdisk",
                "src:registry:5000/kubevirt/cirros-container-disk-demo:devel,bootorder:1",
            ]),
            "x",
        )
        .unwrap();
        let spec = &vm["spec"];
        assert_eq!(spec["instancetype"], json!({"name": "u1.small"}));
        assert_eq!(
            spec["preference"],
            json!({"name": "virtio", "kind": "VirtualMachinePreference"})
        );
        let t = &spec["template"]["spec"];
        assert!(t["domain"].get("memory").is_none());
        assert_eq!(
            t["volumes"][0]["containerDisk"]["image"],
            "registry:5000/kubevirt/cirros-container-disk-demo:devel"
        );
        assert_eq!(
            t["domain"]["devices"]["disks"][0],
            json!({"name": "web-containerdisk-0", "disk": {"bus": "virtio"}, "bootOrder": 1})
        );
        let yaml = vm_yaml(&CreateKind::Vm(args(&["--name", "web"]))).unwrap();
        assert!(yaml.contains("kind: VirtualMachine"), "{yaml}");
    }

    #[test]
    fn bad_flags_say_which() {
        let err = |a: &[&str]| vm(&args(a), "x").unwrap_err().to_string();
        assert!(err(&["--name", "Not_Valid"]).starts_with("--name \"Not_Valid\""));
        assert!(err(&["--volume-containerdisk", "image"]).contains("key:value"));
        assert!(err(&["--volume-containerdisk", "name:x"]).contains("src:IMAGE is needed"));
        assert!(err(&["--preference", "pod/x"]).contains("unknown kind"));
        assert!(err(&["--instancetype", "a", "--memory", "1Gi"]).contains("exclude each other"));
        assert!(err(&["--memory", "lots"]).contains("memory"));
    }
}
