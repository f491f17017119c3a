//! Authentication: who a request comes from, as Kubernetes' authenticators decide it.
//!
//! 1. A client certificate verified against our CA during the TLS handshake makes the
//!    user its Common Name, in the groups of its Organizations.
//! 2. Otherwise `Authorization: Bearer <token>` equal to the admin token makes the user
//!    `admin` in `system:masters`. Any other bearer token is refused, even on open paths.
//! 3. Otherwise the request is anonymous: allowed only on the paths Kubernetes' default
//!    RBAC opens to everyone ([`OPEN_PATHS`]), refused elsewhere.
//!
//! Every authenticated user is also in `system:authenticated`. Refusals are 401 with a
//! `metav1.Status` body. Does not own: authorization (RBAC, [`apiserver::rbac`]) or TLS
//! itself.

use std::path::Path;

use apiserver::User;
use axum::response::{IntoResponse, Response};
use http::{HeaderMap, StatusCode, header};

use crate::files::{self, FileError};
use crate::pki;

/// Paths anyone may read, as the `system:public-info-viewer` role allows.
pub const OPEN_PATHS: &[&str] = &["/healthz", "/livez", "/readyz", "/version", "/version/"];

const AUTHENTICATED: &str = "system:authenticated";

#[derive(Debug, thiserror::Error)]
pub enum TokenError {
    #[error("{} holds no token", path.display())]
    Empty { path: std::path::PathBuf },
    #[error("no randomness for a token")]
    Random(#[source] getrandom::Error),
    #[error(transparent)]
    File(#[from] FileError),
}

/// Reads the admin token at `path`, or makes one: 32 random bytes, hex.
pub fn load_or_create_token(path: &Path) -> Result<String, TokenError> {
    if let Some(bytes) = files::read_if_exists(path)? {
        let token = String::from_utf8_lossy(&bytes).trim().to_owned();
        if token.is_empty() || token.contains(char::is_whitespace) {
            return Err(TokenError::Empty {
                path: path.to_owned(),
            });
        }
        return Ok(token);
    }
    let mut random = [0u8; 32];
    getrandom::fill(&mut random).map_err(TokenError::Random)?;
    let token = hex::encode(random);
    files::write_atomic(path, format!("{token}\n").as_bytes(), files::PRIVATE)?;
    Ok(token)
}

/// The credentials the server accepts.
#[derive(Clone)]
pub struct Authenticator {
    admin_token: String,
}

impl std::fmt::Debug for Authenticator {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Authenticator").finish_non_exhaustive()
    }
}

/// Why a request was refused; the response says only "Unauthorized".
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    BadToken,
    NoCredentials,
}

impl Authenticator {
    pub fn new(admin_token: String) -> Self {
        Self { admin_token }
    }

    /// The user making a request to `path` with `headers`, on a connection whose client
    /// certificate (if any) made `peer`.
    pub fn authenticate(
        &self,
        peer: Option<&User>,
        headers: &HeaderMap,
        path: &str,
    ) -> Result<User, Refusal> {
        if let Some(user) = peer {
            return Ok(user.clone());
        }
        match bearer(headers) {
            Some(token) if constant_time_eq(token.as_bytes(), self.admin_token.as_bytes()) => {
                Ok(admin())
            }
            Some(_) => Err(Refusal::BadToken),
            None if OPEN_PATHS.contains(&path) => Ok(anonymous()),
            None => Err(Refusal::NoCredentials),
        }
    }
}

/// The user a verified client certificate names, if it names one.
pub fn certificate_user(der: &[u8]) -> Option<User> {
    let subject = pki::subject(der)?;
    let name = subject.common_name.filter(|n| !n.is_empty())?;
    let mut groups = subject.organizations;
    groups.push(AUTHENTICATED.to_owned());
    Some(User { name, groups })
}

fn admin() -> User {
    User {
        name: pki::ADMIN_USER.to_owned(),
        groups: vec![pki::ADMIN_GROUP.to_owned(), AUTHENTICATED.to_owned()],
    }
}

fn anonymous() -> User {
    User {
        name: "system:anonymous".to_owned(),
        groups: vec!["system:unauthenticated".to_owned()],
    }
}

fn bearer(headers: &HeaderMap) -> Option<&str> {
    let value = headers.get(header::AUTHORIZATION)?.to_str().ok()?;
    let (scheme, token) = value.split_once(' ')?;
    scheme
        .eq_ignore_ascii_case("bearer")
        .then(|| token.trim())
        .filter(|t| !t.is_empty())
}

/// Compares without stopping at the first difference, so timing reveals nothing of the
/// token but its length.
fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// The 401 response: a `metav1.Status`, as kube-apiserver sends it.
pub fn unauthorized() -> Response {
    let body = serde_json::json!({
        "kind": "Status",
        "apiVersion": "v1",
        "metadata": {},
        "status": "Failure",
        "message": "Unauthorized",
        "reason": "Unauthorized",
        "code": 401,
    });
    (StatusCode::UNAUTHORIZED, axum::Json(body)).into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(authorization: Option<&str>) -> HeaderMap {
        let mut h = HeaderMap::new();
        if let Some(v) = authorization {
            h.insert(header::AUTHORIZATION, v.parse().unwrap());
        }
        h
    }

    fn auth() -> Authenticator {
        Authenticator::new("s3cret".into())
    }

    #[test]
    fn the_admin_token_makes_the_admin() {
        let user = auth()
            .authenticate(None, &headers(Some("Bearer s3cret")), "/apis")
            .unwrap();
        assert_eq!(user.name, "admin");
        assert_eq!(user.groups, ["system:masters", "system:authenticated"]);
        let lower = auth().authenticate(None, &headers(Some("bearer s3cret")), "/apis");
        assert_eq!(lower.map(|u| u.name).as_deref(), Ok("admin"));
    }

    #[test]
    fn a_wrong_token_is_refused_even_where_anonymous_would_pass() {
        for token in ["Bearer s3cre", "Bearer s3cret2", "Bearer S3CRET"] {
            for path in ["/apis", "/healthz"] {
                let got = auth().authenticate(None, &headers(Some(token)), path);
                assert_eq!(got, Err(Refusal::BadToken), "{token:?} on {path}");
            }
        }
    }

    #[test]
    fn an_empty_bearer_or_another_scheme_is_no_credentials() {
        for value in ["Bearer ", "Basic YWRtaW46czNjcmV0"] {
            let got = auth().authenticate(None, &headers(Some(value)), "/apis");
            assert_eq!(got, Err(Refusal::NoCredentials), "{value:?}");
            let open = auth().authenticate(None, &headers(Some(value)), "/healthz");
            assert_eq!(open.map(|u| u.name).as_deref(), Ok("system:anonymous"));
        }
    }

    #[test]
    fn anonymous_requests_reach_only_the_open_paths() {
        for path in OPEN_PATHS {
            let user = auth().authenticate(None, &headers(None), path).unwrap();
            assert_eq!(user.groups, ["system:unauthenticated"]);
        }
        for path in ["/api", "/apis/kubevirt.io/v1/virtualmachines", "/healthz/x"] {
            let got = auth().authenticate(None, &headers(None), path);
            assert_eq!(got, Err(Refusal::NoCredentials), "{path}");
        }
    }

    #[test]
    fn a_verified_certificate_wins_over_a_bad_token() {
        let peer = User {
            name: "alice".into(),
            groups: vec!["dev".into(), AUTHENTICATED.into()],
        };
        let got = auth().authenticate(Some(&peer), &headers(Some("Bearer nope")), "/api");
        assert_eq!(got, Ok(peer));
    }

    #[test]
    fn a_certificate_user_is_its_common_name_in_its_organizations() {
        let dir = tempfile::tempdir().unwrap();
        let pki = pki::ensure(
            dir.path(),
            &pki::ServerNames::local(),
            time::OffsetDateTime::now_utc(),
        )
        .unwrap();
        let der = x509_parser::pem::parse_x509_pem(pki.admin_cert_pem.as_bytes())
            .unwrap()
            .1
            .contents;
        assert_eq!(certificate_user(&der), Some(admin()));
        let server = certificate_user(&pki.server_cert).unwrap();
        assert_eq!(
            server.groups,
            [AUTHENTICATED],
            "no O, only the implied group"
        );
    }

    #[test]
    fn tokens_are_made_once_and_kept() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("token");
        let token = load_or_create_token(&path).unwrap();
        assert_eq!(token.len(), 64);
        assert_eq!(load_or_create_token(&path).unwrap(), token);
        std::fs::write(&path, "\n").unwrap();
        assert!(matches!(
            load_or_create_token(&path),
            Err(TokenError::Empty { .. })
        ));
    }
}
