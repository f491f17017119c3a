//! HTTPS serving of the API router: TLS 1.2/1.3 with rustls on ring, HTTP/1.1 and HTTP/2
//! by ALPN, one service per connection carrying that connection's client certificate.
//!
//! A request, step by step:
//! 1. The TLS handshake asks for a client certificate but does not require one; one that
//!    is given must chain to our CA. Handshakes get [`HANDSHAKE_TIMEOUT`].
//! 2. [`Authenticator`] turns the certificate or the bearer token into an
//!    [`apiserver::User`] in the request's extensions, or answers 401 itself.
//! 3. The router answers; a watch's body streams until the watch ends or the server stops.
//!
//! Stopping: the listener closes, every connection is told to finish (HTTP/1 closes after
//! its current response, HTTP/2 sends GOAWAY), watch bodies end at once, and what is still
//! busy after [`DRAIN_TIMEOUT`] is cut.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use apiserver::User;
use axum::Router;
use axum::body::Body;
use futures_util::StreamExt;
use http::{Request, Response, Uri};
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use rustls::server::WebPkiClientVerifier;
use rustls::{RootCertStore, ServerConfig};
use tokio::net::{TcpListener, TcpStream};
use tokio_rustls::TlsAcceptor;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tower::ServiceExt;
use tracing::{debug, warn};

use crate::auth::{self, Authenticator};
use crate::pki::Pki;

pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// How long a client may take to send a request's head, or stay idle between requests
/// (a slow-header attack holds a connection and a task forever otherwise).
pub const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(30);
pub const DRAIN_TIMEOUT: Duration = Duration::from_secs(5);
/// Pause after a failed accept (out of descriptors, say), so the loop does not spin.
const ACCEPT_BACKOFF: Duration = Duration::from_millis(100);

#[derive(Debug, thiserror::Error)]
pub enum TlsConfigError {
    #[error("TLS configuration")]
    Rustls(#[from] rustls::Error),
    #[error("client certificate verifier")]
    Verifier(#[from] rustls::server::VerifierBuilderError),
}

/// The server's TLS configuration: our certificate, client certificates optional but
/// verified against our CA when given, `h2` preferred over `http/1.1`.
pub fn tls_config(pki: &Pki) -> Result<Arc<ServerConfig>, TlsConfigError> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut roots = RootCertStore::empty();
    roots.add(pki.ca.clone())?;
    let verifier = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider.clone())
        .allow_unauthenticated()
        .build()?;
    let mut config = ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()?
        .with_client_cert_verifier(verifier)
        .with_single_cert(vec![pki.server_cert.clone()], pki.server_key.clone_key())?;
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(Arc::new(config))
}

/// What every connection shares.
struct Shared {
    app: Router,
    auth: Authenticator,
    /// Cancelled when the server stops.
    stopping: CancellationToken,
}

/// Serves `app` on `listener` until `shutdown` completes, then drains (see the module
/// docs).
pub async fn serve(
    listener: TcpListener,
    tls: Arc<ServerConfig>,
    app: Router,
    auth: Authenticator,
    shutdown: impl Future<Output = ()>,
) {
    let acceptor = TlsAcceptor::from(tls);
    let shared = Arc::new(Shared {
        app,
        auth,
        stopping: CancellationToken::new(),
    });
    let connections = TaskTracker::new();
    tokio::pin!(shutdown);
    loop {
        tokio::select! {
            () = &mut shutdown => break,
            accepted = listener.accept() => match accepted {
                Ok((tcp, peer)) => {
                    connections.spawn(connection(tcp, peer, acceptor.clone(), shared.clone()));
                }
                Err(e) => {
                    warn!(error = %e, "accepting a connection failed");
                    tokio::time::sleep(ACCEPT_BACKOFF).await;
                }
            },
        }
    }
    drop(listener);
    shared.stopping.cancel();
    connections.close();
    if tokio::time::timeout(DRAIN_TIMEOUT, connections.wait())
        .await
        .is_err()
    {
        warn!(
            connections = connections.len(),
            "cutting connections still busy"
        );
    }
}

async fn connection(tcp: TcpStream, peer: SocketAddr, acceptor: TlsAcceptor, shared: Arc<Shared>) {
    // Watch events are small writes that should leave at once.
    let _ = tcp.set_nodelay(true);
    let stopping = shared.stopping.clone();
    let handshake = tokio::select! {
        done = tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(tcp)) => done,
        () = stopping.cancelled() => return,
    };
    let tls = match handshake {
        Ok(Ok(tls)) => tls,
        Ok(Err(e)) => {
            debug!(%peer, error = %e, "TLS handshake failed");
            return;
        }
        Err(_) => {
            debug!(%peer, "TLS handshake timed out");
            return;
        }
    };
    let user = tls
        .get_ref()
        .1
        .peer_certificates()
        .and_then(|chain| chain.first())
        .and_then(|cert| auth::certificate_user(cert));
    let service = hyper::service::service_fn(move |req| {
        let shared = shared.clone();
        let user = user.clone();
        async move { Ok::<_, Infallible>(shared.handle(req, user.as_ref()).await) }
    });
    let mut builder = auto::Builder::new(TokioExecutor::new());
    // A client that never finishes its request head loses the connection.
    builder
        .http1()
        .timer(hyper_util::rt::TokioTimer::new())
        .header_read_timeout(HEADER_READ_TIMEOUT);
    let conn = builder.serve_connection_with_upgrades(TokioIo::new(tls), service);
    tokio::pin!(conn);
    let ended = tokio::select! {
        ended = conn.as_mut() => ended,
        () = stopping.cancelled() => {
            conn.as_mut().graceful_shutdown();
            conn.await
        }
    };
    if let Err(e) = ended {
        debug!(%peer, error = %e, "connection ended with an error");
    }
}

impl Shared {
    async fn handle(&self, req: Request<Incoming>, peer: Option<&User>) -> Response<Body> {
        let user = match self
            .auth
            .authenticate(peer, req.headers(), req.uri().path())
        {
            Ok(user) => user,
            Err(refusal) => {
                debug!(?refusal, path = req.uri().path(), "unauthorized");
                return auth::unauthorized();
            }
        };
        let watch = is_watch(req.uri());
        let mut req = req.map(Body::new);
        req.extensions_mut().insert(user);
        let Ok(response) = self.app.clone().oneshot(req).await;
        if !watch {
            return response;
        }
        let stopped = self.stopping.clone().cancelled_owned();
        response.map(|body| Body::from_stream(body.into_data_stream().take_until(stopped)))
    }
}

/// Whether the request is a watch, whose response lasts until cut.
fn is_watch(uri: &Uri) -> bool {
    uri.query().is_some_and(|query| {
        query
            .split('&')
            .any(|pair| pair == "watch=true" || pair == "watch=1")
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn watches_are_recognised_by_their_query() {
        for (uri, watch) in [
            ("/apis/kubevirt.io/v1/virtualmachines?watch=true", true),
            (
                "/apis/kubevirt.io/v1/virtualmachines?labelSelector=a&watch=1",
                true,
            ),
            ("/apis/kubevirt.io/v1/virtualmachines?watch=false", false),
            (
                "/apis/kubevirt.io/v1/virtualmachines?allowWatchBookmarks=true",
                false,
            ),
            ("/apis/kubevirt.io/v1/virtualmachines", false),
        ] {
            assert_eq!(is_watch(&uri.parse().unwrap()), watch, "{uri}");
        }
    }
}
