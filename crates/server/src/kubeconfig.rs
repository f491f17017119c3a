//! The admin kubeconfig, `DIR/kubeconfig`: cluster `kubevirt-rs` with our CA, user `admin`
//! with both the bearer token and the client certificate (each works alone), context
//! `kubevirt-rs`. Rewritten atomically at every start, since the port or a certificate
//! may have changed.

use std::path::Path;

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use serde::{Deserialize, Serialize};

use crate::files::{self, FileError};

pub const NAME: &str = "kubevirt-rs";

#[derive(Debug, thiserror::Error)]
pub enum KubeconfigError {
    #[error("encoding the kubeconfig")]
    Encode(#[source] serde_saphyr::SerializeError),
    #[error(transparent)]
    File(#[from] FileError),
}

/// A kubeconfig with what we write in it; other fields are ignored when reading.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub struct Kubeconfig {
    #[serde(rename = "apiVersion")]
    pub api_version: String,
    pub kind: String,
    pub clusters: Vec<NamedCluster>,
    pub users: Vec<NamedUser>,
    pub contexts: Vec<NamedContext>,
    pub current_context: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NamedCluster {
    pub name: String,
    pub cluster: Cluster,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub struct Cluster {
    pub server: String,
    pub certificate_authority_data: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NamedUser {
    pub name: String,
    pub user: AuthInfo,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub struct AuthInfo {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub token: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub client_certificate_data: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub client_key_data: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NamedContext {
    pub name: String,
    pub context: Context,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Context {
    pub cluster: String,
    pub user: String,
}

/// What the admin kubeconfig is made of.
#[derive(Debug, Clone, Copy)]
pub struct AdminCredentials<'a> {
    pub ca_pem: &'a str,
    pub token: &'a str,
    pub cert_pem: &'a str,
    pub key_pem: &'a str,
}

impl Kubeconfig {
    /// The admin's kubeconfig for the server at `url`.
    pub fn admin(url: &str, creds: AdminCredentials<'_>) -> Self {
        let b64 = |pem: &str| STANDARD.encode(pem);
        Self {
            api_version: "v1".into(),
            kind: "Config".into(),
            clusters: vec![NamedCluster {
                name: NAME.into(),
                cluster: Cluster {
                    server: url.into(),
                    certificate_authority_data: b64(creds.ca_pem),
                },
            }],
            users: vec![NamedUser {
                name: crate::pki::ADMIN_USER.into(),
                user: AuthInfo {
                    token: Some(creds.token.into()),
                    client_certificate_data: Some(b64(creds.cert_pem)),
                    client_key_data: Some(b64(creds.key_pem)),
                },
            }],
            contexts: vec![NamedContext {
                name: NAME.into(),
                context: Context {
                    cluster: NAME.into(),
                    user: crate::pki::ADMIN_USER.into(),
                },
            }],
            current_context: NAME.into(),
        }
    }

    /// The kubeconfig of an in-process component authenticating with its certificate.
    pub fn component(url: &str, ca_pem: &str, user: &str, cert_pem: &str, key_pem: &str) -> Self {
        let mut config = Self::admin(
            url,
            AdminCredentials {
                ca_pem,
                token: "",
                cert_pem,
                key_pem,
            },
        );
        config.users[0].name = user.into();
        config.users[0].user.token = None;
        config.contexts[0].context.user = user.into();
        config
    }

    /// Plain scalars, one line each, as kubectl writes them (no folded `>-` blocks).
    pub fn to_yaml(&self) -> Result<String, KubeconfigError> {
        let mut options = serde_saphyr::SerializerOptions::default();
        options.prefer_block_scalars = false;
        serde_saphyr::to_string_with_options(self, options).map_err(KubeconfigError::Encode)
    }

    /// Writes it to `path`, mode 0600, replacing any file there in one rename.
    pub fn write(&self, path: &Path) -> Result<(), KubeconfigError> {
        files::write_atomic(path, self.to_yaml()?.as_bytes(), files::PRIVATE)?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> Kubeconfig {
        Kubeconfig::admin(
            "https://127.0.0.1:6443",
            AdminCredentials {
                ca_pem: "-----BEGIN CERTIFICATE-----\nCA\n-----END CERTIFICATE-----\n",
                // All digits: must stay a string in YAML.
                token: "0123456789",
                cert_pem: "CERT, long enough to pass the folding threshold of 80 characters",
                key_pem: "KEY",
            },
        )
    }

    #[test]
    fn yaml_reads_back_the_same() {
        let yaml = sample().to_yaml().unwrap();
        let back: Kubeconfig = serde_saphyr::from_str(&yaml).unwrap();
        assert_eq!(back, sample());
    }

    #[test]
    fn yaml_has_kubectl_field_names() {
        let yaml = sample().to_yaml().unwrap();
        for field in [
            "apiVersion: v1",
            "kind: Config",
            "current-context: kubevirt-rs",
            "certificate-authority-data: ",
            "client-certificate-data: Q0VSVCwg",
            "client-key-data: S0VZ",
            "server: https://127.0.0.1:6443",
        ] {
            assert!(yaml.contains(field), "{field:?} missing from:\n{yaml}");
        }
        assert!(!yaml.contains(">-"), "no folded scalars:\n{yaml}");
    }
}
