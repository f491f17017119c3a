//! API aggregation: an APIService with a `service` hands its group-version to another
//! server (virt-api's `subresources.kubevirt.io`).
//!
//! Requests under `/apis/{group}/{version}` are proxied over HTTPS to the Service's
//! `spec.clusterIP` and port, verified against the APIService's `caBundle` for the name
//! `{service}.{namespace}.svc` (or not verified with `insecureSkipTLSVerify`). The caller's
//! identity travels as `X-Remote-User` and `X-Remote-Group`, and the proxy presents the
//! server's front-proxy client certificate when it has one, as Kubernetes' requestheader
//! authentication expects. Upgrades (websockets for console and VNC) are passed through
//! byte for byte. The aggregated group shows in discovery, its resources read from the
//! backing server.

use std::sync::Arc;
use std::time::Duration;

use axum::body::Body;
use axum::http::{HeaderValue, Request, Response, StatusCode, header};
use base64::Engine;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use serde_json::Value;

use crate::{ApiError, AppState, User};

/// The client certificate the proxy presents to aggregated servers.
#[derive(Debug, Clone)]
pub struct ProxyIdentity {
    pub cert_pem: String,
    pub key_pem: String,
}

/// The APIService serving `group/version` from a service, if any.
pub fn service_for(state: &AppState, group: &str, version: &str) -> Option<Value> {
    let kv = state
        .store
        .get(&format!(
            "/apiregistration.k8s.io/apiservices/{version}.{group}"
        ))
        .ok()??;
    let apiservice: Value = serde_json::from_slice(&kv.value).ok()?;
    apiservice["spec"]["service"]
        .is_object()
        .then_some(apiservice)
}

/// Every aggregated group-version: (group, version).
pub fn aggregated(state: &AppState) -> Vec<(String, String)> {
    let Ok(page) = state.store.list(&store::ListRequest {
        prefix: "/apiregistration.k8s.io/apiservices/".to_owned(),
        ..Default::default()
    }) else {
        return Vec::new();
    };
    page.items
        .iter()
        .filter_map(|kv| serde_json::from_slice::<Value>(&kv.value).ok())
        .filter(|a| a["spec"]["service"].is_object())
        .filter_map(|a| {
            Some((
                a["spec"]["group"].as_str()?.to_owned(),
                a["spec"]["version"].as_str()?.to_owned(),
            ))
        })
        .collect()
}

/// Accepts any server certificate (`insecureSkipTLSVerify`).
#[derive(Debug)]
struct NoVerification(Arc<rustls::crypto::CryptoProvider>);

impl rustls::client::danger::ServerCertVerifier for NoVerification {
    fn verify_server_cert(
        &self,
        _: &CertificateDer<'_>,
        _: &[CertificateDer<'_>],
        _: &ServerName<'_>,
        _: &[u8],
        _: rustls::pki_types::UnixTime,
    ) -> Result<rustls::client::danger::ServerCertVerified, rustls::Error> {
        Ok(rustls::client::danger::ServerCertVerified::assertion())
    }
    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }
    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }
    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

/// A client TLS configuration: trusting `ca_bundle` (base64 PEM), or anything when
/// `insecure`, presenting the server's proxy identity when it has one.
pub(crate) fn tls_config(
    state: &AppState,
    ca_bundle: Option<&str>,
    insecure: bool,
) -> Result<rustls::ClientConfig, String> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = rustls::ClientConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .map_err(|e| e.to_string())?;
    let builder = if insecure {
        builder
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(NoVerification(provider)))
    } else {
        let mut roots = rustls::RootCertStore::empty();
        if let Some(bundle) = ca_bundle {
            let pem = base64::engine::general_purpose::STANDARD
                .decode(bundle)
                .map_err(|e| format!("caBundle is not base64: {e}"))?;
            for cert in CertificateDer::pem_slice_iter(&pem) {
                roots
                    .add(cert.map_err(|e| e.to_string())?)
                    .map_err(|e| e.to_string())?;
            }
        }
        builder.with_root_certificates(roots)
    };
    let mut config = match &state.proxy_identity {
        Some(id) => {
            let certs: Vec<CertificateDer<'static>> =
                CertificateDer::pem_slice_iter(id.cert_pem.as_bytes())
                    .collect::<Result<_, _>>()
                    .map_err(|e| e.to_string())?;
            let key =
                PrivateKeyDer::from_pem_slice(id.key_pem.as_bytes()).map_err(|e| e.to_string())?;
            builder
                .with_client_auth_cert(certs, key)
                .map_err(|e| e.to_string())?
        }
        None => builder.with_no_client_auth(),
    };
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(config)
}

/// The cluster IP of the Service `ns/name`: where the server reaches webhooks and
/// aggregated APIs named by a service reference.
pub(crate) fn service_ip(state: &AppState, ns: &str, name: &str) -> Result<String, String> {
    let service: Value = state
        .store
        .get(&format!("/core/services/{ns}/{name}"))
        .map_err(|e| e.to_string())?
        .and_then(|kv| serde_json::from_slice(&kv.value).ok())
        .ok_or_else(|| format!("service \"{ns}/{name}\" not found"))?;
    service["spec"]["clusterIP"]
        .as_str()
        .filter(|ip| !ip.is_empty() && *ip != "None")
        .map(str::to_owned)
        .ok_or_else(|| format!("service \"{ns}/{name}\" has no cluster IP"))
}

/// A connection to the APIService's backing server.
async fn connect(
    state: &AppState,
    apiservice: &Value,
) -> Result<hyper::client::conn::http1::SendRequest<Body>, String> {
    let svc = &apiservice["spec"]["service"];
    let (ns, name) = (
        svc["namespace"].as_str().unwrap_or_default(),
        svc["name"].as_str().unwrap_or_default(),
    );
    let ip = service_ip(state, ns, name)?;
    let port = u16::try_from(svc["port"].as_u64().unwrap_or(443)).map_err(|e| e.to_string())?;
    let config = tls_config(
        state,
        apiservice["spec"]["caBundle"].as_str(),
        apiservice["spec"]["insecureSkipTLSVerify"] == Value::Bool(true),
    )?;
    dial(&ip, port, &format!("{name}.{ns}.svc"), config).await
}

/// An HTTP/1.1 connection over TLS to `ip:port`, verified for `server_name`.
pub(crate) async fn dial(
    ip: &str,
    port: u16,
    server_name: &str,
    config: rustls::ClientConfig,
) -> Result<hyper::client::conn::http1::SendRequest<Body>, String> {
    let server_name = ServerName::try_from(server_name.to_owned()).map_err(|e| e.to_string())?;
    let tcp = tokio::time::timeout(
        Duration::from_secs(5),
        tokio::net::TcpStream::connect((ip, port)),
    )
    .await
    .map_err(|_| format!("connecting to {ip}:{port} timed out"))?
    .map_err(|e| format!("connecting to {ip}:{port}: {e}"))?;
    let tls = tokio_rustls::TlsConnector::from(Arc::new(config))
        .connect(server_name, tcp)
        .await
        .map_err(|e| format!("TLS with {ip}:{port}: {e}"))?;
    let (send, conn) = hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(tls))
        .await
        .map_err(|e| e.to_string())?;
    tokio::spawn(async move {
        let _ = conn.with_upgrades().await;
    });
    Ok(send)
}

const HOP_BY_HOP: [&str; 6] = [
    "keep-alive",
    "proxy-authenticate",
    "proxy-authorization",
    "te",
    "trailer",
    "transfer-encoding",
];

/// Proxies one request to the aggregated server; upgrades are spliced.
pub async fn proxy(
    state: &AppState,
    apiservice: &Value,
    mut req: Request<Body>,
    user: &User,
) -> Result<Response<Body>, ApiError> {
    let unavailable = |why: String| {
        ApiError::service_unavailable(format!(
            "the aggregated API {} is unavailable: {why}",
            apiservice["metadata"]["name"].as_str().unwrap_or_default()
        ))
    };
    let mut send = connect(state, apiservice).await.map_err(unavailable)?;
    let upgrade = req
        .headers()
        .get(header::CONNECTION)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.to_ascii_lowercase().contains("upgrade"));
    let client_upgrade = upgrade.then(|| hyper::upgrade::on(&mut req));
    let (mut parts, body) = req.into_parts();
    for h in HOP_BY_HOP {
        parts.headers.remove(h);
    }
    // A request body goes on whole, with its length: a chunked one (kubectl streams a
    // file with `replace --raw -f`) otherwise lost its framing with `transfer-encoding`.
    let body = if upgrade {
        body
    } else {
        let bytes = crate::body::read(body).await?;
        parts
            .headers
            .insert(header::CONTENT_LENGTH, HeaderValue::from(bytes.len()));
        Body::from(bytes)
    };
    if !upgrade {
        parts.headers.remove(header::CONNECTION);
        parts.headers.remove(header::UPGRADE);
    }
    for h in [header::AUTHORIZATION, header::HOST] {
        parts.headers.remove(h);
    }
    parts.headers.remove("x-remote-user");
    parts.headers.remove("x-remote-group");
    let value = |s: &str| {
        HeaderValue::from_str(s)
            .map_err(|_| ApiError::bad_request("the user name is not a valid header value"))
    };
    parts.headers.insert("x-remote-user", value(&user.name)?);
    for g in &user.groups {
        parts.headers.append("x-remote-group", value(g)?);
    }
    parts.headers.insert(
        header::HOST,
        HeaderValue::from_static("kubevirt-rs-aggregator"),
    );
    let path = parts
        .uri
        .path_and_query()
        .map(|p| p.as_str().to_owned())
        .unwrap_or_default();
    parts.uri = path
        .parse()
        .map_err(|_| ApiError::bad_request("invalid path"))?;
    let mut resp = send
        .send_request(Request::from_parts(parts, body))
        .await
        .map_err(|e| unavailable(e.to_string()))?;
    if resp.status() == StatusCode::SWITCHING_PROTOCOLS
        && let Some(client_upgrade) = client_upgrade
    {
        let server_upgrade = hyper::upgrade::on(&mut resp);
        tokio::spawn(async move {
            let (Ok(client), Ok(server)) = (client_upgrade.await, server_upgrade.await) else {
                return;
            };
            let mut client = hyper_util::rt::TokioIo::new(client);
            let mut server = hyper_util::rt::TokioIo::new(server);
            let _ = tokio::io::copy_bidirectional(&mut client, &mut server).await;
        });
        let (parts, _) = resp.into_parts();
        return Ok(Response::from_parts(parts, Body::empty()));
    }
    let (mut parts, body) = resp.into_parts();
    for h in HOP_BY_HOP {
        parts.headers.remove(h);
    }
    Ok(Response::from_parts(parts, Body::new(body)))
}

/// The aggregated server's APIResourceList for discovery; `None` when it does not answer.
pub async fn resources(state: &AppState, group: &str, version: &str) -> Option<Value> {
    let apiservice = service_for(state, group, version)?;
    let fetch = async {
        let mut send = connect(state, &apiservice).await.ok()?;
        let req = Request::get(format!("/apis/{group}/{version}"))
            .header(header::HOST, "kubevirt-rs-aggregator")
            .header(header::ACCEPT, "application/json")
            .body(Body::empty())
            .ok()?;
        let resp = send.send_request(req).await.ok()?;
        if !resp.status().is_success() {
            return None;
        }
        let bytes = http_body_util::BodyExt::collect(resp.into_body())
            .await
            .ok()?
            .to_bytes();
        serde_json::from_slice::<Value>(&bytes).ok()
    };
    tokio::time::timeout(Duration::from_secs(3), fetch)
        .await
        .ok()?
}
