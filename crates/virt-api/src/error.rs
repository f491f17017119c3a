//! Errors as Kubernetes `metav1.Status`, with the codes, reasons and messages
//! kube-apiserver (and upstream virt-api) use.

use axum::response::{IntoResponse, Response};
use serde_json::{Value, json};

/// An error answered as a `Status` object.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("{message}")]
pub struct StatusError {
    pub code: u16,
    pub reason: String,
    pub message: String,
    pub details: Option<Value>,
}

impl StatusError {
    fn new(code: u16, reason: &str, message: impl Into<String>) -> Self {
        Self {
            code,
            reason: reason.to_owned(),
            message: message.into(),
            details: None,
        }
    }

    fn about(mut self, kind: &str, name: &str) -> Self {
        self.details = Some(json!({"name": name, "group": api::GROUP, "kind": kind}));
        self
    }

    /// `virtualmachine.kubevirt.io "x" not found`.
    pub fn not_found(kind: &str, name: &str) -> Self {
        Self::new(
            404,
            "NotFound",
            format!("{kind}.{} \"{name}\" not found", api::GROUP),
        )
        .about(kind, name)
    }

    pub fn not_found_path(path: &str) -> Self {
        Self::new(404, "NotFound", format!("the path {path:?} was not found"))
    }

    /// `Operation cannot be fulfilled on virtualmachine.kubevirt.io "x": why`.
    pub fn conflict(kind: &str, name: &str, why: &str) -> Self {
        Self::new(
            409,
            "Conflict",
            format!(
                "Operation cannot be fulfilled on {kind}.{} \"{name}\": {why}",
                api::GROUP
            ),
        )
        .about(kind, name)
    }

    pub fn bad_request(message: impl Into<String>) -> Self {
        Self::new(400, "BadRequest", message)
    }

    pub fn unauthorized() -> Self {
        Self::new(401, "Unauthorized", "Unauthorized")
    }

    pub fn forbidden(message: impl Into<String>) -> Self {
        Self::new(403, "Forbidden", message)
    }

    pub fn internal(message: impl std::fmt::Display) -> Self {
        Self::new(
            500,
            "InternalError",
            format!("Internal error occurred: {message}"),
        )
    }

    pub fn unavailable(message: impl Into<String>) -> Self {
        Self::new(503, "ServiceUnavailable", message)
    }

    /// An error of the API server passed on as it came; transport errors are internal.
    pub fn from_kube(e: kube::Error) -> Self {
        match e {
            kube::Error::Api(s) if s.code >= 400 => Self {
                code: s.code,
                reason: s.reason.clone(),
                message: s.message.clone(),
                details: s
                    .details
                    .as_ref()
                    .and_then(|d| serde_json::to_value(d).ok()),
            },
            other => Self::internal(other),
        }
    }

    /// The `Status` object.
    pub fn to_status(&self) -> Value {
        let mut status = json!({
            "kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
            "message": self.message, "reason": self.reason, "code": self.code,
        });
        if let Some(d) = &self.details {
            status["details"] = d.clone();
        }
        status
    }
}

impl IntoResponse for StatusError {
    fn into_response(self) -> Response {
        let code = http::StatusCode::from_u16(self.code)
            .unwrap_or(http::StatusCode::INTERNAL_SERVER_ERROR);
        (code, axum::Json(self.to_status())).into_response()
    }
}

/// Reads `kind name` from the API server; `None` when it does not exist.
pub(crate) async fn get_opt<K>(api: &kube::Api<K>, name: &str) -> Result<Option<K>, StatusError>
where
    K: Clone + serde::de::DeserializeOwned + std::fmt::Debug,
{
    api.get_opt(name).await.map_err(StatusError::from_kube)
}
