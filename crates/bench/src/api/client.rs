//! Talking to the server under test: the admin kubeconfig it writes (server URL, CA, bearer
//! token), TLS trusting only that CA (rustls on ring), and a small HTTPS client.
//!
//! Each [`Client`] is its own connection pool, so N concurrent clients are N TLS
//! connections (HTTP/2 by ALPN), as N controllers would be.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, bail};
use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use reqwest::Method;
use reqwest::header::CONTENT_TYPE;
use rustls::pki_types::CertificateDer;
use rustls::pki_types::pem::PemObject;
use serde::Deserialize;
use serde::de::DeserializeOwned;

/// A whole request, body included, may take this long before it counts as failed.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(60);
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// The part of the admin kubeconfig the benchmark uses; the rest is ignored.
#[derive(Debug, Deserialize)]
struct Kubeconfig {
    clusters: Vec<NamedCluster>,
    users: Vec<NamedUser>,
}

#[derive(Debug, Deserialize)]
struct NamedCluster {
    cluster: Cluster,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "kebab-case")]
struct Cluster {
    server: String,
    certificate_authority_data: String,
}

#[derive(Debug, Deserialize)]
struct NamedUser {
    user: AuthInfo,
}

#[derive(Debug, Deserialize)]
struct AuthInfo {
    token: Option<String>,
}

/// Where the server is and how to reach it: what every [`Client`] is made from.
#[derive(Debug, Clone)]
pub struct Endpoint {
    base: String,
    token: Arc<str>,
    tls: rustls::ClientConfig,
}

impl Endpoint {
    /// Reads the server URL, the CA and the bearer token from a kubeconfig.
    pub fn from_kubeconfig(path: &Path) -> anyhow::Result<Self> {
        let text =
            std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
        let config: Kubeconfig =
            serde_saphyr::from_str(&text).with_context(|| format!("parsing {}", path.display()))?;
        let cluster = &config
            .clusters
            .first()
            .context("the kubeconfig names no cluster")?
            .cluster;
        let token = config
            .users
            .iter()
            .find_map(|u| u.user.token.clone())
            .context("the kubeconfig has no bearer token")?;
        let ca = STANDARD
            .decode(cluster.certificate_authority_data.trim())
            .context("certificate-authority-data is not base64")?;
        Ok(Self {
            base: cluster.server.trim_end_matches('/').to_owned(),
            token: token.into(),
            tls: tls_config(&ca)?,
        })
    }

    /// A client on a connection of its own, for requests that end.
    pub fn client(&self) -> anyhow::Result<Client> {
        self.build(Some(REQUEST_TIMEOUT))
    }

    /// A client without a whole-request timeout, for watches, whose bodies do not end.
    pub fn streaming_client(&self) -> anyhow::Result<Client> {
        self.build(None)
    }

    fn build(&self, timeout: Option<Duration>) -> anyhow::Result<Client> {
        let mut builder = reqwest::Client::builder()
            .tls_backend_preconfigured(self.tls.clone())
            .connect_timeout(CONNECT_TIMEOUT);
        if let Some(t) = timeout {
            builder = builder.timeout(t);
        }
        Ok(Client {
            http: builder.build().context("building an HTTPS client")?,
            base: self.base.clone(),
            token: self.token.clone(),
        })
    }
}

/// Trusts only `ca_pem`; offers HTTP/2 first, as client-go does.
fn tls_config(ca_pem: &[u8]) -> anyhow::Result<rustls::ClientConfig> {
    let mut roots = rustls::RootCertStore::empty();
    for cert in CertificateDer::pem_slice_iter(ca_pem) {
        roots.add(cert.context("the CA is not PEM")?)?;
    }
    if roots.is_empty() {
        bail!("the kubeconfig's CA holds no certificate");
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()?
        .with_root_certificates(roots)
        .with_no_client_auth();
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(config)
}

/// An HTTPS client of the server, authenticated with the admin bearer token.
#[derive(Debug, Clone)]
pub struct Client {
    http: reqwest::Client,
    base: String,
    token: Arc<str>,
}

impl Client {
    /// Sends `body` (JSON) with `method` to `path` and decodes a 2xx answer as `T`; any
    /// other answer is an error carrying the server's message.
    pub async fn call<T: DeserializeOwned>(
        &self,
        method: Method,
        path: &str,
        body: Option<Vec<u8>>,
    ) -> anyhow::Result<T> {
        let response = self.send(method.clone(), path, body).await?;
        let bytes = response
            .bytes()
            .await
            .with_context(|| format!("{method} {path}: reading the answer"))?;
        serde_json::from_slice(&bytes).with_context(|| format!("{method} {path}: decoding"))
    }

    /// GET `path`, decoded as `T`.
    pub async fn get<T: DeserializeOwned>(&self, path: &str) -> anyhow::Result<T> {
        self.call(Method::GET, path, None).await
    }

    /// Sends a request and returns the answer once its status is a success, with its body
    /// still to read (a watch's goes on).
    pub async fn send(
        &self,
        method: Method,
        path: &str,
        body: Option<Vec<u8>>,
    ) -> anyhow::Result<reqwest::Response> {
        let mut request = self
            .http
            .request(method.clone(), format!("{}{path}", self.base))
            .bearer_auth(&*self.token);
        if let Some(body) = body {
            request = request.header(CONTENT_TYPE, "application/json").body(body);
        }
        let response = request
            .send()
            .await
            .with_context(|| format!("{method} {path}"))?;
        let status = response.status();
        if !status.is_success() {
            let text = response.text().await.unwrap_or_default();
            bail!("{method} {path}: {status}: {}", text.trim());
        }
        Ok(response)
    }

    /// Creates namespace `name`.
    pub async fn create_namespace(&self, name: &str) -> anyhow::Result<()> {
        let body = serde_json::json!({
            "apiVersion": "v1",
            "kind": "Namespace",
            "metadata": {"name": name},
        });
        self.call::<serde::de::IgnoredAny>(
            Method::POST,
            "/api/v1/namespaces",
            Some(serde_json::to_vec(&body)?),
        )
        .await?;
        Ok(())
    }
}

/// `n` clients, each with its connection already open (a GET of `warm_path`), so that
/// TLS handshakes stay out of what is timed.
pub async fn connected(
    endpoint: &Endpoint,
    n: usize,
    warm_path: &str,
) -> anyhow::Result<Vec<Client>> {
    let mut clients = Vec::with_capacity(n);
    for _ in 0..n {
        let client = endpoint.client()?;
        client.get::<serde::de::IgnoredAny>(warm_path).await?;
        clients.push(client);
    }
    Ok(clients)
}
