//! Who is calling: the requestheader scheme of aggregated API servers.
//!
//! [`crate::serve`] verifies a client certificate against the configured CA and puts it
//! in the request's extensions as [`PeerCertificate`]. Because that CA also signs user
//! certificates (see the `server` crate), a verified chain is not enough: only the name
//! [`FRONT_PROXY_USER`] may speak for others through `X-Remote-User` and
//! `X-Remote-Group`. Anything else is unauthenticated.

use axum::extract::FromRequestParts;
use http::request::Parts;
use rustls::pki_types::CertificateDer;

use crate::StatusError;

/// The common name of the API server's front-proxy client certificate.
pub const FRONT_PROXY_USER: &str = "front-proxy-client";

/// The verified TLS client certificate of the connection a request came on.
#[derive(Debug, Clone)]
pub struct PeerCertificate(pub CertificateDer<'static>);

/// The user the front proxy vouches for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Caller {
    pub user: String,
    pub groups: Vec<String>,
}

/// The certificate's subject common name.
fn common_name(cert: &CertificateDer<'_>) -> Option<String> {
    let (_, parsed) = x509_parser::parse_x509_certificate(cert.as_ref()).ok()?;
    let cn = parsed.subject().iter_common_name().next()?;
    cn.as_str().ok().map(str::to_owned)
}

impl Caller {
    /// The caller of a request, if the front proxy sent it and named a user.
    pub fn of(parts: &Parts) -> Option<Self> {
        let cert = parts.extensions.get::<PeerCertificate>()?;
        if common_name(&cert.0).as_deref() != Some(FRONT_PROXY_USER) {
            return None;
        }
        let values = |name: &str| -> Vec<String> {
            parts
                .headers
                .get_all(name)
                .iter()
                .filter_map(|v| v.to_str().ok())
                .map(str::to_owned)
                .collect()
        };
        let user = values("x-remote-user").into_iter().next()?;
        Some(Self {
            user,
            groups: values("x-remote-group"),
        })
    }
}

/// Webhooks are the API server's to call: only its front-proxy client certificate may
/// post reviews (a review is trusted as written, and the eviction interceptor acts on it).
pub async fn api_server_only(
    req: axum::extract::Request,
    next: axum::middleware::Next,
) -> axum::response::Response {
    use axum::response::IntoResponse;
    let from_api_server = req
        .extensions()
        .get::<PeerCertificate>()
        .is_some_and(|c| common_name(&c.0).as_deref() == Some(FRONT_PROXY_USER));
    if from_api_server {
        next.run(req).await
    } else {
        StatusError::unauthorized().into_response()
    }
}

impl<S: Send + Sync> FromRequestParts<S> for Caller {
    type Rejection = StatusError;

    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Self, StatusError> {
        Self::of(parts).ok_or_else(StatusError::unauthorized)
    }
}
