//! What a request path names, read the way the real server reads it.
//!
//! `/api/v1/...` is the core group, `/apis/{group}/{version}/...` the others. After the
//! group-version: `namespaces/{ns}/{plural}[/{name}[/{subresource}]]` for namespaced
//! objects, `{plural}[/{name}[/{subresource}]]` otherwise. `namespaces/{ns}/status` and
//! `namespaces/{ns}/finalize` are the namespace's own subresources, not resources in it.

use crate::ApiError;

/// A request for resources, as opposed to discovery.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Target {
    pub group: String,
    pub version: String,
    pub namespace: Option<String>,
    pub plural: String,
    pub name: Option<String>,
    pub subresource: Option<String>,
}

/// What a path under `/api` or `/apis` asks for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Request {
    /// `/api`
    CoreVersions,
    /// `/apis`
    Groups,
    /// `/apis/{group}`
    Group(String),
    /// `/api/v1`, `/apis/{group}/{version}`
    Resources {
        group: String,
        version: String,
    },
    Target(Target),
}

impl Request {
    pub fn parse(path: &str) -> Result<Self, ApiError> {
        let parts: Vec<&str> = path.trim_matches('/').split('/').collect();
        if parts.iter().skip(1).any(|p| p.is_empty()) {
            return Err(not_found(path));
        }
        let (group, version, rest) = match parts.as_slice() {
            ["api"] => return Ok(Self::CoreVersions),
            ["apis"] => return Ok(Self::Groups),
            ["apis", group] => return Ok(Self::Group((*group).to_owned())),
            ["api", version, rest @ ..] => ("", *version, rest),
            ["apis", group, version, rest @ ..] => (*group, *version, rest),
            _ => return Err(not_found(path)),
        };
        let mut target = Target {
            group: group.to_owned(),
            version: version.to_owned(),
            ..Target::default()
        };
        let rest = match rest {
            [] => {
                return Ok(Self::Resources {
                    group: target.group,
                    version: target.version,
                });
            }
            ["namespaces", ns, sub, more @ ..] if !matches!(*sub, "status" | "finalize") => {
                target.namespace = Some((*ns).to_owned());
                let mut rest = vec![*sub];
                rest.extend_from_slice(more);
                rest
            }
            other => other.to_vec(),
        };
        match rest.as_slice() {
            [plural] => target.plural = (*plural).to_owned(),
            [plural, name] => {
                target.plural = (*plural).to_owned();
                target.name = Some((*name).to_owned());
            }
            [plural, name, sub] => {
                target.plural = (*plural).to_owned();
                target.name = Some((*name).to_owned());
                target.subresource = Some((*sub).to_owned());
            }
            _ => return Err(not_found(path)),
        }
        Ok(Self::Target(target))
    }
}

fn not_found(path: &str) -> ApiError {
    ApiError::not_found_path(path)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn target(path: &str) -> Target {
        match Request::parse(path) {
            Ok(Request::Target(t)) => t,
            other => panic!("{path}: {other:?}"),
        }
    }

    #[test]
    fn paths_name_what_the_real_server_reads() {
        let t = target("/api/v1/namespaces/ns1/pods/p/log");
        assert_eq!(
            (t.group.as_str(), t.namespace.as_deref(), t.plural.as_str()),
            ("", Some("ns1"), "pods")
        );
        assert_eq!(
            (t.name.as_deref(), t.subresource.as_deref()),
            (Some("p"), Some("log"))
        );
        let t = target("/api/v1/namespaces/ns1");
        assert_eq!(
            (t.namespace, t.plural.as_str(), t.name.as_deref()),
            (None, "namespaces", Some("ns1"))
        );
        let t = target("/api/v1/namespaces/ns1/finalize");
        assert_eq!(
            (t.plural.as_str(), t.subresource.as_deref()),
            ("namespaces", Some("finalize"))
        );
        let t = target("/apis/kubevirt.io/v1/virtualmachines");
        assert_eq!((t.namespace, t.name), (None, None));
        let t =
            target("/apis/kubevirt.io/v1/namespaces/a/virtualmachineinstancereplicasets/r/scale");
        assert_eq!(t.subresource.as_deref(), Some("scale"));
        assert_eq!(Request::parse("/apis").unwrap(), Request::Groups);
        assert_eq!(
            Request::parse("/api/v1").unwrap(),
            Request::Resources {
                group: String::new(),
                version: "v1".into()
            }
        );
        assert!(Request::parse("/apis/kubevirt.io/v1/a/b/c/d").is_err());
        assert!(Request::parse("/apis/kubevirt.io//x").is_err());
    }
}
