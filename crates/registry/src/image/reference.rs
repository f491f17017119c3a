//! Image references, normalised as container runtimes do: `kubevirt/cirros` is
//! `docker.io/kubevirt/cirros:latest`, `alpine` is `docker.io/library/alpine:latest`.
//!
//! Hand-written rather than the registry client's parser, which compiles a large regular
//! expression into a process-wide static (about 15 MiB of heap kept for the launcher's
//! whole life, measured with massif).

use std::fmt;

/// A parsed image reference.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ImageRef {
    pub registry: String,
    pub repository: String,
    pub tag: Option<String>,
    pub digest: Option<String>,
}

impl ImageRef {
    pub fn parse(s: &str) -> Option<Self> {
        if s.is_empty() || s.len() > 4096 || s.chars().any(|c| c.is_whitespace()) {
            return None;
        }
        let (rest, digest) = match s.split_once('@') {
            Some((r, d)) => (r, Some(d.to_owned())),
            None => (s, None),
        };
        if let Some(d) = &digest {
            let (algo, hex) = d.split_once(':')?;
            let ok = !algo.is_empty()
                && algo
                    .chars()
                    .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || "+._-".contains(c))
                && hex.len() >= 32
                && hex.chars().all(|c| c.is_ascii_hexdigit());
            if !ok {
                return None;
            }
        }
        // A tag follows the last ':' that comes after the last '/'.
        let last_slash = rest.rfind('/').map_or(0, |i| i + 1);
        let (name, tag) = match rest[last_slash..].rfind(':') {
            Some(i) => (
                &rest[..last_slash + i],
                Some(rest[last_slash + i + 1..].to_owned()),
            ),
            None => (rest, None),
        };
        if let Some(t) = &tag {
            let ok = !t.is_empty()
                && t.len() <= 128
                && t.chars()
                    .next()
                    .is_some_and(|c| c.is_ascii_alphanumeric() || c == '_')
                && t.chars()
                    .all(|c| c.is_ascii_alphanumeric() || "_.-".contains(c));
            if !ok {
                return None;
            }
        }
        let (registry, repository) = match name.split_once('/') {
            Some((first, path)) if first.contains(['.', ':']) || first == "localhost" => {
                (first.to_owned(), path.to_owned())
            }
            _ => ("docker.io".to_owned(), name.to_owned()),
        };
        let repository = if registry == "docker.io" && !repository.contains('/') {
            format!("library/{repository}")
        } else {
            repository
        };
        let component_ok = |c: &str| {
            !c.is_empty()
                && c.chars()
                    .all(|ch| ch.is_ascii_lowercase() || ch.is_ascii_digit() || "._-".contains(ch))
                && c.starts_with(|ch: char| ch.is_ascii_alphanumeric())
                && c.ends_with(|ch: char| ch.is_ascii_alphanumeric())
        };
        let registry_ok = match registry.rsplit_once(':') {
            Some((host, port)) => {
                !host.is_empty() && !port.is_empty() && port.chars().all(|c| c.is_ascii_digit())
            }
            None => !registry.is_empty(),
        };
        if !repository.split('/').all(component_ok) || !registry_ok {
            return None;
        }
        let tag = if tag.is_none() && digest.is_none() {
            Some("latest".to_owned())
        } else {
            tag
        };
        Some(Self {
            registry,
            repository,
            tag,
            digest,
        })
    }
}

impl fmt::Display for ImageRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.registry, self.repository)?;
        if let Some(t) = &self.tag {
            write!(f, ":{t}")?;
        }
        if let Some(d) = &self.digest {
            write!(f, "@{d}")?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(s: &str) -> String {
        ImageRef::parse(s)
            .map(|r| r.to_string())
            .unwrap_or_else(|| "invalid".into())
    }

    #[test]
    fn normalises_like_container_runtimes() {
        assert_eq!(
            p("kubevirt/cirros-registry-disk-demo"),
            "docker.io/kubevirt/cirros-registry-disk-demo:latest"
        );
        assert_eq!(p("alpine"), "docker.io/library/alpine:latest");
        assert_eq!(
            p("registry:5000/kubevirt/cirros-container-disk-demo:devel"),
            "registry:5000/kubevirt/cirros-container-disk-demo:devel"
        );
        assert_eq!(p("localhost/a/b"), "localhost/a/b:latest");
        assert_eq!(
            p(
                "quay.io/kubevirt/x@sha256:0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef"
            ),
            "quay.io/kubevirt/x@sha256:0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef"
        );
        assert_eq!(p("127.0.0.1:5000/x:v1.2_3"), "127.0.0.1:5000/x:v1.2_3");
    }

    #[test]
    fn refuses_what_a_registry_would() {
        for bad in [
            "",
            "UPPER/case",
            "a b",
            "x:",
            "x:-tag",
            "x@sha256:short",
            "/x",
            "x//y",
            "x/-y",
            "x:t/a",
        ] {
            assert_eq!(p(bad), "invalid", "{bad:?}");
        }
    }
}
