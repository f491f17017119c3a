//! The connection to the API server: kubeconfig, namespace, subresource calls and the
//! websocket upgrade (done here rather than with kube's `connect`, which only speaks the
//! `*.channel.k8s.io` subprotocols).

use std::path::Path;

use http_body_util::BodyExt;
use hyper_util::rt::TokioIo;
use kube::config::{KubeConfigOptions, Kubeconfig};
use serde_json::Value;
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::protocol::Role;

use crate::Error;

pub const SUBRESOURCES: &str = "/apis/subresources.kubevirt.io/v1";
pub const PLAIN_PROTOCOL: &str = "plain.kubevirt.io";

pub type Socket = WebSocketStream<TokioIo<hyper::upgrade::Upgraded>>;

/// A client and the namespace commands act in.
#[derive(Clone)]
pub struct Ctx {
    pub client: kube::Client,
    pub namespace: String,
}

impl std::fmt::Debug for Ctx {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Ctx")
            .field("namespace", &self.namespace)
            .finish_non_exhaustive()
    }
}

impl Ctx {
    pub async fn new(kubeconfig: Option<&Path>, namespace: Option<String>) -> Result<Self, Error> {
        let mut config = match kubeconfig {
            Some(path) => {
                let kc = Kubeconfig::read_from(path)
                    .map_err(|e| Error::Config(format!("{}: {e}", path.display())))?;
                kube::Config::from_custom_kubeconfig(kc, &KubeConfigOptions::default())
                    .await
                    .map_err(|e| Error::Config(format!("{}: {e}", path.display())))?
            }
            None => kube::Config::infer()
                .await
                .map_err(|e| Error::Config(e.to_string()))?,
        };
        // A CLI answers at once; kube's default retries a 503 for minutes.
        config.default_retry = false;
        let namespace = namespace.unwrap_or_else(|| config.default_namespace.clone());
        let client = kube::Client::try_from(config).map_err(|e| Error::Config(e.to_string()))?;
        Ok(Self { client, namespace })
    }

    /// `.../namespaces/{ns}/{plural}/{name}/{sub}` of the aggregated API.
    pub fn path(&self, plural: &str, name: &str, sub: &str) -> String {
        format!(
            "{SUBRESOURCES}/namespaces/{}/{plural}/{name}/{sub}",
            self.namespace
        )
    }

    pub async fn put(&self, path: &str, body: &Value) -> Result<(), Error> {
        let req = http::Request::put(path)
            .header("content-type", "application/json")
            .body(body.to_string().into_bytes())
            .map_err(|e| Error::Usage(e.to_string()))?;
        self.client
            .request_text(req)
            .await
            .map(|_| ())
            .map_err(Error::kube(format!("PUT {path}")))
    }

    pub async fn get(&self, path: &str) -> Result<String, Error> {
        let req = http::Request::get(path)
            .body(Vec::new())
            .map_err(|e| Error::Usage(e.to_string()))?;
        self.client
            .request_text(req)
            .await
            .map_err(Error::kube(format!("GET {path}")))
    }

    /// The raw body of `GET path` (an image, say).
    pub async fn get_bytes(&self, path: &str) -> Result<Vec<u8>, Error> {
        use futures_util::AsyncReadExt;
        let req = http::Request::get(path)
            .body(Vec::new())
            .map_err(|e| Error::Usage(e.to_string()))?;
        let mut body = self
            .client
            .request_stream(req)
            .await
            .map_err(Error::kube(format!("GET {path}")))?;
        let mut bytes = Vec::new();
        body.read_to_end(&mut bytes)
            .await
            .map_err(Error::io(format!("reading GET {path}")))?;
        Ok(bytes)
    }

    /// A websocket to `path` with the `plain.kubevirt.io` subprotocol.
    pub async fn websocket(&self, path: &str) -> Result<Socket, Error> {
        let key = tokio_tungstenite::tungstenite::handshake::client::generate_key();
        let req = http::Request::get(path)
            .header(http::header::CONNECTION, "Upgrade")
            .header(http::header::UPGRADE, "websocket")
            .header(http::header::SEC_WEBSOCKET_VERSION, "13")
            .header(http::header::SEC_WEBSOCKET_KEY, &key)
            .header(http::header::SEC_WEBSOCKET_PROTOCOL, PLAIN_PROTOCOL)
            .body(kube::client::Body::from(Vec::new()))
            .map_err(|e| Error::Usage(e.to_string()))?;
        let resp = self
            .client
            .send(req)
            .await
            .map_err(Error::kube(format!("GET {path}")))?;
        if resp.status() != http::StatusCode::SWITCHING_PROTOCOLS {
            let code = resp.status().as_u16();
            let body = resp
                .into_body()
                .collect()
                .await
                .map(|b| b.to_bytes())
                .unwrap_or_default();
            let message = serde_json::from_slice::<Value>(&body)
                .ok()
                .and_then(|s| s["message"].as_str().map(str::to_owned))
                .unwrap_or_else(|| format!("GET {path}: the server answered {code}"));
            return Err(Error::Api { code, message });
        }
        let accept = tokio_tungstenite::tungstenite::handshake::derive_accept_key(key.as_bytes());
        if resp
            .headers()
            .get(http::header::SEC_WEBSOCKET_ACCEPT)
            .is_none_or(|v| v.as_bytes() != accept.as_bytes())
        {
            return Err(Error::WebSocket(
                "the server's handshake does not match".into(),
            ));
        }
        let upgraded = hyper::upgrade::on(resp)
            .await
            .map_err(|e| Error::WebSocket(e.to_string()))?;
        Ok(WebSocketStream::from_raw_socket(TokioIo::new(upgraded), Role::Client, None).await)
    }
}
