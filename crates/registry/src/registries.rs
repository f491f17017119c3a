//! Registry mirrors and rewrites, in the shape of k3s's `registries.yaml`:
//!
//! ```yaml
//! mirrors:
//!   "registry:5000":                      # the registry named in image references
//!     endpoint: ["http://127.0.0.1:5000"] # tried in order, then the registry itself
//!     rewrite:                            # optional, regex on the repository path
//!       "^kubevirt/(.*)": "mirror/$1"
//! configs:
//!   "registry.example:5000":
//!     insecure: true                      # plain HTTP allowed for this host
//! ```
//!
//! A `*` mirror applies to every registry without its own entry. Plain HTTP is used for an
//! endpoint written `http://`, for hosts marked `insecure`, and for loopback hosts; all
//! others speak HTTPS.

use std::collections::BTreeMap;
use std::path::Path;

use regex::Regex;
use serde::Deserialize;

#[derive(Debug, thiserror::Error)]
pub enum RegistriesError {
    #[error("read {path}")]
    Read {
        path: String,
        source: std::io::Error,
    },
    #[error("{path}: {message}")]
    Parse { path: String, message: String },
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct File {
    #[serde(default)]
    mirrors: BTreeMap<String, MirrorEntry>,
    #[serde(default)]
    configs: BTreeMap<String, ConfigEntry>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct MirrorEntry {
    #[serde(default)]
    endpoint: Vec<String>,
    #[serde(default)]
    rewrite: BTreeMap<String, String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct ConfigEntry {
    #[serde(default)]
    insecure: bool,
}

/// One place to try pulling an image from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Endpoint {
    /// `host[:port]` as the registry client addresses it.
    pub host: String,
    pub plain_http: bool,
    pub repository: String,
}

/// Parsed mirror configuration.
#[derive(Debug, Default)]
pub struct Registries {
    mirrors: BTreeMap<String, Mirror>,
    insecure: Vec<String>,
}

#[derive(Debug)]
struct Mirror {
    endpoints: Vec<(String, bool)>,
    rewrites: Vec<(Regex, String)>,
}

impl Registries {
    /// Loads the file at `path`; a missing file means no mirrors.
    pub fn load(path: &Path) -> Result<Self, RegistriesError> {
        match std::fs::read_to_string(path) {
            Ok(text) => Self::parse(&text).map_err(|message| RegistriesError::Parse {
                path: path.display().to_string(),
                message,
            }),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Self::default()),
            Err(source) => Err(RegistriesError::Read {
                path: path.display().to_string(),
                source,
            }),
        }
    }

    /// Parses the YAML text, reporting every bad value at once.
    pub fn parse(text: &str) -> Result<Self, String> {
        let file: File = if text.trim().is_empty() {
            File::default()
        } else {
            serde_saphyr::from_str(text).map_err(|e| e.to_string())?
        };
        let mut problems = Vec::new();
        let mut mirrors = BTreeMap::new();
        for (registry, entry) in file.mirrors {
            let mut endpoints = Vec::new();
            for e in &entry.endpoint {
                match split_scheme(e) {
                    Some(parsed) => endpoints.push(parsed),
                    None => problems.push(format!(
                        "mirrors.{registry}.endpoint: {e:?} is not http(s)://host[:port]"
                    )),
                }
            }
            let mut rewrites = Vec::new();
            for (pattern, replacement) in entry.rewrite {
                match Regex::new(&pattern) {
                    Ok(re) => rewrites.push((re, replacement)),
                    Err(e) => {
                        problems.push(format!("mirrors.{registry}.rewrite: {pattern:?}: {e}"))
                    }
                }
            }
            mirrors.insert(
                registry,
                Mirror {
                    endpoints,
                    rewrites,
                },
            );
        }
        if !problems.is_empty() {
            return Err(problems.join("; "));
        }
        let insecure = file
            .configs
            .into_iter()
            .filter(|(_, c)| c.insecure)
            .map(|(h, _)| h)
            .collect();
        Ok(Self { mirrors, insecure })
    }

    /// Where to pull `repository` of `registry` from, in order.
    pub fn endpoints(&self, registry: &str, repository: &str) -> Vec<Endpoint> {
        let mut out = Vec::new();
        let mirror = self.mirrors.get(registry).or_else(|| self.mirrors.get("*"));
        if let Some(m) = mirror {
            let mut repo = repository.to_owned();
            if let Some((re, to)) = m.rewrites.iter().find(|(re, _)| re.is_match(repository)) {
                repo = re.replace(repository, to.as_str()).into_owned();
            }
            for (host, plain) in &m.endpoints {
                out.push(Endpoint {
                    host: host.clone(),
                    plain_http: *plain || self.plain_http(host),
                    repository: repo.clone(),
                });
            }
        }
        let host = if registry == "docker.io" {
            "index.docker.io"
        } else {
            registry
        };
        out.push(Endpoint {
            host: host.to_owned(),
            plain_http: self.plain_http(host),
            repository: repository.to_owned(),
        });
        out.dedup();
        out
    }

    fn plain_http(&self, host: &str) -> bool {
        self.insecure.iter().any(|h| h == host) || is_loopback(host)
    }
}

fn split_scheme(endpoint: &str) -> Option<(String, bool)> {
    let (rest, plain) = if let Some(r) = endpoint.strip_prefix("http://") {
        (r, true)
    } else if let Some(r) = endpoint.strip_prefix("https://") {
        (r, false)
    } else {
        (endpoint, false)
    };
    let host = rest.trim_end_matches('/');
    (!host.is_empty() && !host.contains('/')).then(|| (host.to_owned(), plain))
}

fn is_loopback(host: &str) -> bool {
    let name = host.rsplit_once(':').map_or(host, |(h, port)| {
        if port.chars().all(|c| c.is_ascii_digit()) {
            h
        } else {
            host
        }
    });
    let name = name.trim_start_matches('[').trim_end_matches(']');
    name == "localhost"
        || name
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback())
}

#[cfg(test)]
mod tests {
    use super::*;

    const CONFIG: &str = r#"
mirrors:
  "registry:5000":
    endpoint: ["http://127.0.0.1:5000"]
  "docker.io":
    endpoint: ["127.0.0.1:5000"]
    rewrite:
      "^kubevirt/cirros-registry-disk-demo$": "kubevirt/cirros-container-disk-demo"
configs:
  "quay.example:5000":
    insecure: true
"#;

    #[test]
    fn mirrors_come_first_then_the_registry_itself() {
        let r = Registries::parse(CONFIG).unwrap();
        let e = r.endpoints("registry:5000", "kubevirt/alpine");
        assert_eq!(
            e[0],
            Endpoint {
                host: "127.0.0.1:5000".into(),
                plain_http: true,
                repository: "kubevirt/alpine".into()
            }
        );
        assert_eq!(
            e[1],
            Endpoint {
                host: "registry:5000".into(),
                plain_http: false,
                repository: "kubevirt/alpine".into()
            }
        );
    }

    #[test]
    fn rewrites_apply_to_mirrors_only_and_loopback_is_plain_http() {
        let r = Registries::parse(CONFIG).unwrap();
        let e = r.endpoints("docker.io", "kubevirt/cirros-registry-disk-demo");
        assert_eq!(
            e[0],
            Endpoint {
                host: "127.0.0.1:5000".into(),
                plain_http: true,
                repository: "kubevirt/cirros-container-disk-demo".into()
            }
        );
        assert_eq!(e[1].host, "index.docker.io");
        assert_eq!(e[1].repository, "kubevirt/cirros-registry-disk-demo");
    }

    #[test]
    fn insecure_hosts_speak_http() {
        let r = Registries::parse(CONFIG).unwrap();
        assert!(r.endpoints("quay.example:5000", "x")[0].plain_http);
        assert!(!r.endpoints("quay.io", "x")[0].plain_http);
        assert!(r.endpoints("localhost:5000", "x")[0].plain_http);
    }

    #[test]
    fn every_bad_value_is_reported() {
        let err = Registries::parse(
            "mirrors:\n  a:\n    endpoint: [\"ftp://x\"]\n    rewrite: {\"(\": \"y\"}\n",
        )
        .unwrap_err();
        assert!(err.contains("ftp://x") && err.contains("rewrite"), "{err}");
        assert!(Registries::parse("mirors: {}").is_err());
    }
}
