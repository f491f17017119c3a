//! What a reconcile can fail with. Every failure is logged with its chain and requeued
//! with backoff; none stops a controller.

/// A failed step of a reconcile.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// An API call failed.
    #[error("{verb} {kind} {name}")]
    Api {
        verb: &'static str,
        kind: &'static str,
        name: String,
        #[source]
        source: kube::Error,
    },
}

impl Error {
    pub(crate) fn api(
        verb: &'static str,
        kind: &'static str,
        name: &str,
    ) -> impl FnOnce(kube::Error) -> Self {
        let name = name.to_owned();
        move |source| Self::Api {
            verb,
            kind,
            name,
            source,
        }
    }
}

/// The HTTP status of a failed API call, if the server answered.
pub(crate) fn status_code(err: &kube::Error) -> Option<u16> {
    match err {
        kube::Error::Api(status) => Some(status.code),
        _ => None,
    }
}

pub(crate) fn is_not_found(err: &kube::Error) -> bool {
    status_code(err) == Some(404)
}

pub(crate) fn is_conflict(err: &kube::Error) -> bool {
    status_code(err) == Some(409)
}

/// The error and its causes on one line, for logs and event messages.
pub(crate) fn chain(err: &(dyn std::error::Error + 'static)) -> String {
    let mut out = err.to_string();
    let mut source = err.source();
    while let Some(e) = source {
        out.push_str(": ");
        out.push_str(&e.to_string());
        source = e.source();
    }
    out
}
