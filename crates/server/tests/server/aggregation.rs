//! API aggregation through the real server: the backing server requires a client
//! certificate from `DIR/tls/ca.crt`, as Kubernetes' requestheader authentication does,
//! and sees the front-proxy identity with the caller's name in `X-Remote-User`.

use std::convert::Infallible;
use std::sync::Arc;

use axum::body::Body;
use base64::Engine;
use http::{Request, Response};
use hyper::body::Incoming;
use rcgen::{BasicConstraints, CertificateParams, IsCa, Issuer, KeyPair};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use serde_json::{Value, json};
use tokio::net::TcpListener;

use crate::support::{Scratch, Server, Tls, https_client};

/// A backing server on a free port: requires a client certificate chained to
/// `client_ca_pem`, answers every request with the certificate's Common Name and the
/// request headers. Returns the port and its own CA, for the APIService's `caBundle`.
async fn backend(client_ca_pem: &[u8]) -> (u16, String) {
    let ca_key = KeyPair::generate().unwrap();
    let mut ca = CertificateParams::new(Vec::<String>::new()).unwrap();
    ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    let ca_cert = ca.self_signed(&ca_key).unwrap();
    let issuer = Issuer::from_params(&ca, &ca_key);
    let key = KeyPair::generate().unwrap();
    let cert = CertificateParams::new(vec!["echo.default.svc".to_owned()])
        .unwrap()
        .signed_by(&key, &issuer)
        .unwrap();

    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut roots = rustls::RootCertStore::empty();
    for c in CertificateDer::pem_slice_iter(client_ca_pem) {
        roots.add(c.unwrap()).unwrap();
    }
    let verifier =
        rustls::server::WebPkiClientVerifier::builder_with_provider(roots.into(), provider.clone())
            .build()
            .unwrap();
    let mut config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_client_cert_verifier(verifier)
        .with_single_cert(
            vec![cert.der().clone()],
            PrivateKeyDer::from_pem_slice(key.serialize_pem().as_bytes()).unwrap(),
        )
        .unwrap();
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));

    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    tokio::spawn(async move {
        loop {
            let (tcp, _) = listener.accept().await.unwrap();
            let acceptor = acceptor.clone();
            tokio::spawn(async move {
                // A handshake without an acceptable certificate ends here, and the API
                // server answers 503.
                let Ok(tls) = acceptor.accept(tcp).await else {
                    return;
                };
                let peer = tls
                    .get_ref()
                    .1
                    .peer_certificates()
                    .and_then(|chain| chain.first())
                    .and_then(|c| server::pki::subject(c))
                    .and_then(|s| s.common_name);
                let service = hyper::service::service_fn(move |req: Request<Incoming>| {
                    let all = |name: &str| -> Vec<String> {
                        req.headers()
                            .get_all(name)
                            .iter()
                            .map(|v| v.to_str().unwrap().to_owned())
                            .collect()
                    };
                    let body = json!({
                        "peer": peer, "user": all("x-remote-user"),
                        "groups": all("x-remote-group"),
                    });
                    async move {
                        Ok::<_, Infallible>(
                            Response::builder()
                                .header("content-type", "application/json")
                                .body(Body::from(body.to_string()))
                                .unwrap(),
                        )
                    }
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(hyper_util::rt::TokioIo::new(tls), service)
                    .await;
            });
        }
    });
    (port, ca_cert.pem())
}

#[tokio::test]
async fn aggregated_servers_see_the_front_proxy_certificate_and_the_caller() {
    let scratch = Scratch::new();
    let server = Server::start(&scratch).await;
    let (port, backend_ca) = backend(&server.ca_pem()).await;
    let client = https_client(&server.ca_pem(), Tls::default());
    let token = server.token();
    let post = |path: &str, body: Value| {
        client
            .post(server.url(path))
            .bearer_auth(&token)
            .header("content-type", "application/json")
            .body(body.to_string())
            .send()
    };
    let created = post(
        "/api/v1/namespaces/default/services",
        json!({"apiVersion": "v1", "kind": "Service", "metadata": {"name": "echo"},
               "spec": {"clusterIP": "127.0.0.1", "ports": [{"port": port}]}}),
    )
    .await
    .unwrap();
    assert_eq!(created.status(), 201, "{}", created.text().await.unwrap());
    let created = post(
        "/apis/apiregistration.k8s.io/v1/apiservices",
        json!({"apiVersion": "apiregistration.k8s.io/v1", "kind": "APIService",
               "metadata": {"name": "v1.echo.example.com"},
               "spec": {"group": "echo.example.com", "version": "v1",
                        "groupPriorityMinimum": 1000, "versionPriority": 15,
                        "service": {"namespace": "default", "name": "echo", "port": port},
                        "caBundle": base64::engine::general_purpose::STANDARD.encode(backend_ca)}}),
    )
    .await
    .unwrap();
    assert_eq!(created.status(), 201, "{}", created.text().await.unwrap());

    let answer = client
        .get(server.url("/apis/echo.example.com/v1/namespaces/default/things/x"))
        .bearer_auth(&token)
        .send()
        .await
        .unwrap();
    let status = answer.status();
    let text = answer.text().await.unwrap();
    assert_eq!(status, 200, "{text}");
    let seen: Value = serde_json::from_str(&text).unwrap();
    assert_eq!(
        seen,
        json!({"peer": "front-proxy-client", "user": ["admin"],
               "groups": ["system:masters", "system:authenticated"]})
    );
}
