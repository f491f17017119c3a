//! What a pod asks this node to run, decided without I/O: each container's program,
//! arguments and environment, or why it cannot start.
//!
//! Owns: the image -> program mapping, `command`/`args` (the first word of `command`
//! names the image's program and is replaced by the mapped binary), and the environment
//! (the runner's own variables, `POD_*`, then the container's `env`, which wins except
//! over the runner's `KUBEVIRT_RS_*`), with
//! Kubernetes' `$(VAR)` references expanded ([`expand`]): in an `env` value to the
//! container's variables defined before it, in `command` and `args` to all of them.
//! Does not own: starting anything ([`crate::process`]).

use std::collections::BTreeMap;
use std::path::PathBuf;

use k8s_openapi::api::core::v1::{Container, EnvVar, Pod};

/// `PATH` for processes when the runner's own variables have none.
const DEFAULT_PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

/// One container, ready to start.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Launch {
    pub container: String,
    pub image: String,
    /// The local binary the image maps to.
    pub program: PathBuf,
    /// Everything after the program on its command line.
    pub args: Vec<String>,
    pub env: Vec<(String, String)>,
    pub working_dir: PathBuf,
}

/// Why a container cannot start: its waiting reason and message.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Refusal {
    #[error(
        "image {image:?} is not available on node {node}: the pod runner runs only the images its configuration maps to local programs"
    )]
    ImageNotMapped { image: String, node: String },
    #[error(
        "environment variable {name}: the pod runner supports plain values and fieldRef to metadata.name, metadata.namespace, metadata.uid, spec.nodeName, status.hostIP and status.podIP"
    )]
    UnsupportedEnv { name: String },
    /// The container's configuration cannot be given here (see [`crate::oci`]).
    #[error("{0}")]
    Config(String),
    /// The image could not be pulled.
    #[error("{0}")]
    Pull(String),
}

impl Refusal {
    /// The container's waiting reason, as the kubelet names the same situations.
    pub fn reason(&self) -> &'static str {
        match self {
            Self::ImageNotMapped { .. } => "ErrImageNeverPull",
            Self::UnsupportedEnv { .. } | Self::Config(_) => "CreateContainerConfigError",
            Self::Pull(_) => "ErrImagePull",
        }
    }
}

/// What the node contributes to every plan.
#[derive(Debug, Clone)]
pub struct Host<'a> {
    pub node_name: &'a str,
    pub node_ip: &'a str,
    pub images: &'a BTreeMap<String, PathBuf>,
    /// The runner's own variables (`KUBEVIRT_RS_*`, `PATH`), given to every process.
    pub env: &'a BTreeMap<String, String>,
}

/// Why the pod as a whole cannot run here.
pub fn unsupported(pod: &Pod) -> Option<&'static str> {
    let spec = pod.spec.as_ref()?;
    if spec.init_containers.as_ref().is_some_and(|c| !c.is_empty()) {
        return Some("init containers are not supported by the kubevirt-rs pod runner");
    }
    if spec.containers.is_empty() {
        return Some("the pod has no containers");
    }
    // A container's name names its files on the node (`<name>.log`): Kubernetes' rule,
    // a DNS-1123 label, keeps it one plain file name.
    if spec
        .containers
        .iter()
        .any(|c| api::validate::dns1123_label(&c.name).is_err())
    {
        return Some(
            "a container name is not a DNS-1123 label (lower-case alphanumerics and '-', at most 63 characters)",
        );
    }
    // A volume's name names its directory on the node too (`volumes/.../<name>`).
    if spec
        .volumes
        .iter()
        .flatten()
        .any(|v| api::validate::dns1123_label(&v.name).is_err())
    {
        return Some(
            "a volume name is not a DNS-1123 label (lower-case alphanumerics and '-', at most 63 characters)",
        );
    }
    None
}

/// Each container of `pod` in order, with its launch or why it cannot start.
pub fn plan(pod: &Pod, host: &Host<'_>) -> Vec<(String, Result<Launch, Refusal>)> {
    let containers = pod.spec.as_ref().map(|s| s.containers.as_slice());
    containers
        .unwrap_or_default()
        .iter()
        .map(|c| (c.name.clone(), launch(pod, c, host)))
        .collect()
}

fn launch(pod: &Pod, c: &Container, host: &Host<'_>) -> Result<Launch, Refusal> {
    let image = c.image.clone().unwrap_or_default();
    let program = host
        .images
        .get(&image)
        .ok_or_else(|| Refusal::ImageNotMapped {
            image: image.clone(),
            node: host.node_name.to_owned(),
        })?
        .clone();
    let mut args: Vec<String> = c.command.iter().flatten().skip(1).cloned().collect();
    args.extend(c.args.iter().flatten().cloned());
    let meta = &pod.metadata;
    let mut base: BTreeMap<String, String> = host.env.clone();
    base.entry("PATH".to_owned())
        .or_insert_with(|| DEFAULT_PATH.to_owned());
    for (k, v) in [
        ("POD_NAME", &meta.name),
        ("POD_NAMESPACE", &meta.namespace),
        ("POD_UID", &meta.uid),
    ] {
        base.insert(k.to_owned(), v.clone().unwrap_or_default());
    }
    let (mut ordered, defined) = environment(pod, c, host, &base)?;
    // The node's own settings are not the pod's to change: a host process runs with the
    // runner's `KUBEVIRT_RS_*` whatever its `env` says (in a sandbox the pod's `env` sets
    // them for itself, such as its run directory on a volume).
    for (k, v) in host
        .env
        .iter()
        .filter(|(k, _)| k.starts_with("KUBEVIRT_RS_"))
    {
        ordered.retain(|(name, _)| name != k);
        ordered.push((k.clone(), v.clone()));
    }
    let args = args
        .iter()
        .map(|a| expand(a, |n| defined.get(n).cloned()))
        .collect();
    Ok(Launch {
        container: c.name.clone(),
        image,
        program,
        args,
        env: ordered,
        working_dir: c.working_dir.clone().unwrap_or_else(|| "/".into()).into(),
    })
}

/// A container's environment: `base`, then its `env` in order (a variable named again
/// replaces the earlier one); also the container's own variables, which `$(VAR)` in its
/// command and arguments sees.
pub type Environment = (Vec<(String, String)>, BTreeMap<String, String>);

/// The environment of `c`: `base` overlaid with the container's `env`, each value's
/// `$(VAR)` expanded to the container's variables defined before it.
pub fn environment(
    pod: &Pod,
    c: &Container,
    host: &Host<'_>,
    base: &BTreeMap<String, String>,
) -> Result<Environment, Refusal> {
    let mut ordered: Vec<(String, String)> = base.clone().into_iter().collect();
    let mut defined: BTreeMap<String, String> = BTreeMap::new();
    for var in c.env.iter().flatten() {
        let value = match &var.value_from {
            None => expand(var.value.as_deref().unwrap_or_default(), |n| {
                defined.get(n).cloned()
            }),
            Some(_) => env_value(pod, var, host)?,
        };
        defined.insert(var.name.clone(), value.clone());
        ordered.retain(|(k, _)| *k != var.name);
        ordered.push((var.name.clone(), value));
    }
    Ok((ordered, defined))
}

/// Kubernetes' variable references: `$(NAME)` becomes `lookup(NAME)`, or stays as written
/// when that has no value; `$$` is a `$`.
pub fn expand(input: &str, lookup: impl Fn(&str) -> Option<String>) -> String {
    let mut out = String::with_capacity(input.len());
    let mut rest = input;
    while let Some(at) = rest.find('$') {
        out.push_str(&rest[..at]);
        let after = &rest[at + 1..];
        if let Some(tail) = after.strip_prefix('$') {
            out.push('$');
            rest = tail;
        } else if let Some(inner) = after.strip_prefix('(')
            && let Some(close) = inner.find(')')
        {
            let name = &inner[..close];
            match lookup(name) {
                Some(value) => out.push_str(&value),
                None => {
                    out.push_str("$(");
                    out.push_str(name);
                    out.push(')');
                }
            }
            rest = &inner[close + 1..];
        } else {
            out.push('$');
            rest = after;
        }
    }
    out.push_str(rest);
    out
}

fn env_value(pod: &Pod, var: &EnvVar, host: &Host<'_>) -> Result<String, Refusal> {
    let Some(from) = &var.value_from else {
        return Ok(var.value.clone().unwrap_or_default());
    };
    let unsupported = || Refusal::UnsupportedEnv {
        name: var.name.clone(),
    };
    let path = from
        .field_ref
        .as_ref()
        .map(|f| f.field_path.as_str())
        .ok_or_else(unsupported)?;
    let meta = &pod.metadata;
    let value = match path {
        "metadata.name" => meta.name.clone(),
        "metadata.namespace" => meta.namespace.clone(),
        "metadata.uid" => meta.uid.clone(),
        "spec.nodeName" => Some(host.node_name.to_owned()),
        "status.hostIP" | "status.podIP" => Some(host.node_ip.to_owned()),
        _ => return Err(unsupported()),
    };
    Ok(value.unwrap_or_default())
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use serde_json::json;

    use super::*;

    fn pod(container: serde_json::Value) -> Pod {
        serde_json::from_value(json!({
            "metadata": {"name": "p", "namespace": "ns", "uid": "u1"},
            "spec": {"containers": [container]},
        }))
        .unwrap()
    }

    fn host_plan(pod: &Pod) -> Result<Launch, Refusal> {
        let images = BTreeMap::from([("img:1".to_owned(), PathBuf::from("/opt/bin/tool"))]);
        let env = BTreeMap::from([("KUBEVIRT_RS_RUN_DIR".to_owned(), "/run/k".to_owned())]);
        let host = Host {
            node_name: "n1",
            node_ip: "127.0.0.1",
            images: &images,
            env: &env,
        };
        plan(pod, &host).remove(0).1
    }

    #[test]
    fn the_mapped_binary_replaces_the_first_word_of_the_command() {
        let l = host_plan(&pod(json!({"name": "compute", "image": "img:1",
            "command": ["tool", "serve"], "args": ["--name", "x"]})))
        .unwrap();
        assert_eq!(l.program, PathBuf::from("/opt/bin/tool"));
        assert_eq!(l.args, ["serve", "--name", "x"]);
        assert_eq!(l.working_dir, PathBuf::from("/"));
        let l = host_plan(&pod(json!({"name": "c", "image": "img:1", "args": ["a"]}))).unwrap();
        assert_eq!(l.args, ["a"]);
    }

    #[test]
    fn variable_references_expand_as_kubernetes_expands_them() {
        let vars = |n: &str| (n == "A").then(|| "1".to_owned());
        for (input, want) in [
            ("$(A)", "1"),
            ("x-$(A)-y", "x-1-y"),
            ("$(B)", "$(B)"),
            ("$$(A)", "$(A)"),
            ("$$", "$"),
            ("cost $5", "cost $5"),
            ("$(A", "$(A"),
            ("", ""),
        ] {
            assert_eq!(expand(input, vars), want, "{input}");
        }
        let l = host_plan(&pod(json!({"name": "c", "image": "img:1",
            "command": ["tool", "--who=$(WHO)"], "args": ["$(GREETING)", "$(NONE)"],
            "env": [{"name": "WHO", "value": "vm"},
                    {"name": "GREETING", "value": "hello $(WHO)"},
                    {"name": "EARLY", "value": "$(LATE)"},
                    {"name": "LATE", "value": "late"}]})))
        .unwrap();
        assert_eq!(l.args, ["--who=vm", "hello vm", "$(NONE)"]);
        let env: BTreeMap<_, _> = l.env.iter().cloned().collect();
        assert_eq!(env["GREETING"], "hello vm");
        assert_eq!(
            env["EARLY"], "$(LATE)",
            "only variables defined before are seen"
        );
    }

    #[test]
    fn the_environment_is_the_runners_then_the_pods_then_the_containers() {
        let l = host_plan(&pod(json!({"name": "c", "image": "img:1", "env": [
            {"name": "A", "value": "1"},
            {"name": "NS", "valueFrom": {"fieldRef": {"fieldPath": "metadata.namespace"}}},
            {"name": "POD_NAME", "value": "mine"},
            {"name": "KUBEVIRT_RS_RUN_DIR", "value": "/var/run/mine"},
        ]})))
        .unwrap();
        let env: BTreeMap<_, _> = l.env.iter().cloned().collect();
        assert_eq!(
            env["KUBEVIRT_RS_RUN_DIR"], "/run/k",
            "the node's setting stays"
        );
        assert_eq!(
            l.env
                .iter()
                .filter(|(k, _)| k == "KUBEVIRT_RS_RUN_DIR")
                .count(),
            1
        );
        assert_eq!(env["POD_UID"], "u1");
        assert_eq!(env["POD_NAMESPACE"], "ns");
        assert_eq!(env["NS"], "ns");
        assert_eq!(env["A"], "1");
        assert_eq!(env["POD_NAME"], "mine");
    }

    #[test]
    fn refusals_name_the_image_or_the_variable() {
        let err = host_plan(&pod(json!({"name": "c", "image": "img:2"}))).unwrap_err();
        assert_eq!(err.reason(), "ErrImageNeverPull");
        assert!(err.to_string().contains("\"img:2\""), "{err}");
        let err = host_plan(&pod(json!({"name": "c", "image": "img:1", "env": [
            {"name": "S", "valueFrom": {"secretKeyRef": {"name": "s", "key": "k"}}}]})))
        .unwrap_err();
        assert_eq!(err.reason(), "CreateContainerConfigError");
        assert!(err.to_string().contains("variable S"), "{err}");
    }

    #[test]
    fn container_names_that_are_not_plain_file_names_are_refused() {
        for bad in ["../../../../etc/cron.d/x", "a/b", "Upper", ""] {
            let p = pod(json!({"name": bad, "image": "img:1"}));
            assert!(unsupported(&p).unwrap().contains("DNS-1123"), "{bad}");
        }
    }

    #[test]
    fn volume_names_that_are_not_plain_file_names_are_refused() {
        for bad in ["/", "../../etc", "a/b", "Upper", ""] {
            let mut p = pod(json!({"name": "c", "image": "img:1"}));
            p.spec.as_mut().unwrap().volumes = Some(vec![
                serde_json::from_value(json!({"name": bad, "emptyDir": {}})).unwrap(),
            ]);
            assert!(unsupported(&p).unwrap().contains("volume name"), "{bad}");
        }
    }

    #[test]
    fn init_containers_are_refused() {
        let mut p = pod(json!({"name": "c", "image": "img:1"}));
        assert_eq!(unsupported(&p), None);
        p.spec.as_mut().unwrap().init_containers = p.spec.as_ref().map(|s| s.containers.clone());
        assert!(unsupported(&p).unwrap().contains("init containers"));
    }
}
