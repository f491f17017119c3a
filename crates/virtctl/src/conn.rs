//! The connection to the API server, from the kubeconfig: plain requests through kube-rs,
//! websockets over rustls with the same credentials.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use kube::client::ConfigExt;
use kube::config::{KubeConfigOptions, Kubeconfig};
use secrecy::ExposeSecret;
use serde_json::Value;
use tokio::net::TcpStream;
use tokio_rustls::client::TlsStream;
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;

/// The websocket subprotocol of KubeVirt's console and VNC streams.
pub const PROTOCOL: &str = "plain.kubevirt.io";

/// What goes wrong, worded for the one line virtctl prints.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("{0}")]
    Usage(String),
    #[error("kubeconfig: {0}")]
    Kubeconfig(String),
    /// The server's answer (a Kubernetes Status message).
    #[error("{0}")]
    Api(String),
    #[error("{0}")]
    Connection(String),
    #[error("{0}")]
    Io(#[from] std::io::Error),
}

impl From<kube::Error> for Error {
    fn from(e: kube::Error) -> Self {
        match e {
            kube::Error::Api(status) if !status.message.is_empty() => {
                Error::Api(status.message.clone())
            }
            kube::Error::Api(status) => Error::Api(format!("the server answered {}", status.code)),
            other => Error::Connection(format!("cannot reach the API server: {other}")),
        }
    }
}

/// A websocket to the API server.
pub type Socket = WebSocketStream<TlsStream<TcpStream>>;

/// The API server, as the kubeconfig describes it.
pub struct Conn {
    client: kube::Client,
    config: kube::Config,
    pub namespace: String,
}

impl std::fmt::Debug for Conn {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Conn")
            .field("namespace", &self.namespace)
            .finish_non_exhaustive()
    }
}

impl Conn {
    /// Reads `kubeconfig` (else `$KUBECONFIG`, else `~/.kube/config`).
    pub async fn new(kubeconfig: Option<&Path>, namespace: Option<&str>) -> Result<Self, Error> {
        let _ = rustls::crypto::ring::default_provider().install_default();
        let fail = |e: &dyn std::fmt::Display| Error::Kubeconfig(e.to_string());
        let config = match kubeconfig {
            Some(path) => {
                let file = Kubeconfig::read_from(path).map_err(|e| fail(&e))?;
                kube::Config::from_custom_kubeconfig(file, &KubeConfigOptions::default())
                    .await
                    .map_err(|e| fail(&e))?
            }
            None => kube::Config::infer().await.map_err(|e| fail(&e))?,
        };
        let client = kube::Client::try_from(config.clone()).map_err(|e| fail(&e))?;
        let namespace = namespace.map_or_else(|| config.default_namespace.clone(), str::to_owned);
        Ok(Self {
            client,
            config,
            namespace,
        })
    }

    /// The path of a subresource of this namespace's `rel` (`virtualmachines/NAME/start`).
    pub fn path(&self, rel: &str) -> String {
        format!(
            "{}/namespaces/{}/{rel}",
            crate::SUBRESOURCES,
            self.namespace
        )
    }

    async fn send(&self, request: http::Request<Vec<u8>>) -> Result<Value, Error> {
        let text = self.client.request_text(request).await?;
        Ok(serde_json::from_str(&text).unwrap_or(Value::Null))
    }

    pub async fn put(&self, path: &str, body: Value) -> Result<Value, Error> {
        let request = http::Request::put(path)
            .header("content-type", "application/json")
            .body(serde_json::to_vec(&body).unwrap_or_default())
            .map_err(|e| Error::Usage(e.to_string()))?;
        self.send(request).await
    }

    pub async fn get(&self, path: &str) -> Result<Value, Error> {
        let request = http::Request::get(path)
            .body(Vec::new())
            .map_err(|e| Error::Usage(e.to_string()))?;
        self.send(request).await
    }

    /// Waits up to `minutes` for VMI `name` to be Running; fails at once when it has
    /// ended.
    pub async fn wait_running(&self, name: &str, minutes: u64) -> Result<(), Error> {
        let path = format!(
            "/apis/kubevirt.io/v1/namespaces/{}/virtualmachineinstances/{name}",
            self.namespace
        );
        let deadline = tokio::time::Instant::now() + Duration::from_secs(minutes * 60);
        loop {
            let phase = match self.get(&path).await {
                Ok(vmi) => vmi["status"]["phase"]
                    .as_str()
                    .unwrap_or_default()
                    .to_owned(),
                Err(Error::Api(m)) if m.contains("not found") => String::new(),
                Err(e) => return Err(e),
            };
            match phase.as_str() {
                "Running" => return Ok(()),
                "Succeeded" | "Failed" => {
                    return Err(Error::Api(format!(
                        "VMI {name} is not running (phase {phase})"
                    )));
                }
                _ => {}
            }
            if tokio::time::Instant::now() >= deadline {
                let why = if phase.is_empty() {
                    "does not exist".to_owned()
                } else {
                    format!("is {phase}")
                };
                return Err(Error::Api(format!(
                    "VMI {name} {why}; it did not start within {minutes} minute(s)"
                )));
            }
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
    }

    /// Opens a websocket to `path` with KubeVirt's subprotocol.
    pub async fn websocket(&self, path: &str) -> Result<Socket, Error> {
        let url = &self.config.cluster_url;
        if url.scheme_str() != Some("https") {
            return Err(Error::Kubeconfig(format!(
                "{url}: only https servers are supported"
            )));
        }
        let host = url
            .host()
            .unwrap_or("localhost")
            .trim_start_matches('[')
            .trim_end_matches(']')
            .to_owned();
        let port = url.port_u16().unwrap_or(443);
        let tcp = TcpStream::connect((host.as_str(), port))
            .await
            .map_err(|e| {
                Error::Connection(format!("cannot reach the API server at {host}:{port}: {e}"))
            })?;
        let mut tls = self
            .config
            .rustls_client_config()
            .map_err(|e| Error::Kubeconfig(e.to_string()))?;
        tls.alpn_protocols = vec![b"http/1.1".to_vec()];
        let name = rustls::pki_types::ServerName::try_from(host.clone())
            .map_err(|e| Error::Kubeconfig(format!("server name {host}: {e}")))?;
        let stream = tokio_rustls::TlsConnector::from(Arc::new(tls))
            .connect(name, tcp)
            .await
            .map_err(|e| Error::Connection(format!("TLS with the API server: {e}")))?;
        let mut request = format!("wss://{host}:{port}{path}")
            .into_client_request()
            .map_err(|e| Error::Usage(e.to_string()))?;
        let headers = request.headers_mut();
        headers.insert(
            "Sec-WebSocket-Protocol",
            http::HeaderValue::from_static(PROTOCOL),
        );
        if let Some(token) = &self.config.auth_info.token
            && let Ok(v) = http::HeaderValue::from_str(&format!("Bearer {}", token.expose_secret()))
        {
            headers.insert("Authorization", v);
        }
        match tokio_tungstenite::client_async(request, stream).await {
            Ok((socket, _)) => Ok(socket),
            Err(tokio_tungstenite::tungstenite::Error::Http(response)) => {
                let body = response.body().as_deref().unwrap_or_default();
                let message = serde_json::from_slice::<Value>(body)
                    .ok()
                    .and_then(|s| s["message"].as_str().map(str::to_owned))
                    .unwrap_or_else(|| format!("the server answered {}", response.status()));
                Err(Error::Api(message))
            }
            Err(e) => Err(Error::Connection(format!("websocket: {e}"))),
        }
    }
}
