//! Authorization of the subresource calls, as upstream's virt-api does it on top of the
//! API server's own check: a SubjectAccessReview for the caller the front proxy names.
//!
//! The API server reads only the first segment after the name as the subresource
//! (`virtualmachineinstances/vnc` for `.../vnc/screenshot`); this check names it whole
//! (`vnc/screenshot`, which only `kubevirt.io:admin` grants), except `portforward`,
//! whose port and protocol are not part of it. A request through the API server has
//! passed that check already, so this one only refuses what the path's whole
//! subresource is not granted for.

use axum::extract::{Request, State};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use k8s_openapi::api::authorization::v1::{
    ResourceAttributes, SubjectAccessReview, SubjectAccessReviewSpec,
};
use kube::api::{Api, PostParams};

use crate::identity::Caller;
use crate::{AppState, StatusError};

/// The attributes of `PATH` under `/apis/{group}/{version}/namespaces/{ns}/{resource}/{name}/...`
/// for a request with `method`; None for other paths.
pub fn attributes(method: &http::Method, path: &str) -> Option<ResourceAttributes> {
    let parts: Vec<&str> = path.split('/').collect();
    // "", "apis", group, version, "namespaces", ns, resource, name, sub...
    if parts.len() < 9 || parts[1] != "apis" || parts[4] != "namespaces" {
        return None;
    }
    let subresource = if parts[8] == "portforward" {
        "portforward".to_owned()
    } else {
        parts[8..].join("/")
    };
    let verb = match *method {
        http::Method::PUT => "update",
        http::Method::POST => "create",
        http::Method::PATCH => "patch",
        http::Method::DELETE => "delete",
        _ => "get",
    };
    Some(ResourceAttributes {
        group: Some(parts[2].to_owned()),
        version: Some(parts[3].to_owned()),
        namespace: Some(parts[5].to_owned()),
        resource: Some(parts[6].to_owned()),
        name: Some(parts[7].to_owned()),
        subresource: Some(subresource),
        verb: Some(verb.to_owned()),
        ..ResourceAttributes::default()
    })
}

/// The layer on the subresource routes: the caller must be allowed the subresource.
pub async fn check(State(state): State<AppState>, req: Request, next: Next) -> Response {
    let (parts, body) = req.into_parts();
    let Some(caller) = Caller::of(&parts) else {
        return StatusError::unauthorized().into_response();
    };
    let Some(attrs) = attributes(&parts.method, parts.uri.path()) else {
        return StatusError::not_found_path(parts.uri.path()).into_response();
    };
    let review = SubjectAccessReview {
        spec: SubjectAccessReviewSpec {
            user: Some(caller.user.clone()),
            groups: Some(caller.groups.clone()),
            resource_attributes: Some(attrs.clone()),
            ..SubjectAccessReviewSpec::default()
        },
        ..SubjectAccessReview::default()
    };
    let reviews: Api<SubjectAccessReview> = Api::all(state.client.clone());
    let answer = match reviews.create(&PostParams::default(), &review).await {
        Ok(answer) => answer,
        Err(e) => {
            tracing::warn!(error = %e, "SubjectAccessReview failed");
            return StatusError::internal(format!("checking authorization: {e}")).into_response();
        }
    };
    if answer.status.is_some_and(|s| s.allowed) {
        return next.run(Request::from_parts(parts, body)).await;
    }
    let text = |v: &Option<String>| v.clone().unwrap_or_default();
    StatusError::forbidden(format!(
        "User \"{}\" cannot {} resource \"{}/{}\" in API group \"{}\" in the namespace \"{}\"",
        caller.user,
        text(&attrs.verb),
        text(&attrs.resource),
        text(&attrs.subresource),
        text(&attrs.group),
        text(&attrs.namespace),
    ))
    .into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_read_as_upstreams_authorizer_reads_them() {
        let base = "/apis/subresources.kubevirt.io/v1/namespaces/ns1";
        let a = attributes(
            &http::Method::GET,
            &format!("{base}/virtualmachineinstances/v/vnc/screenshot"),
        )
        .unwrap();
        assert_eq!(
            (
                a.verb.as_deref(),
                a.resource.as_deref(),
                a.subresource.as_deref(),
                a.name.as_deref()
            ),
            (
                Some("get"),
                Some("virtualmachineinstances"),
                Some("vnc/screenshot"),
                Some("v")
            )
        );
        let a = attributes(
            &http::Method::GET,
            &format!("{base}/virtualmachines/v/portforward/22/tcp"),
        )
        .unwrap();
        assert_eq!(a.subresource.as_deref(), Some("portforward"));
        let a = attributes(
            &http::Method::PUT,
            &format!("{base}/virtualmachines/v/start"),
        )
        .unwrap();
        assert_eq!(
            (a.verb.as_deref(), a.namespace.as_deref()),
            (Some("update"), Some("ns1"))
        );
        assert!(
            attributes(
                &http::Method::GET,
                "/apis/subresources.kubevirt.io/v1/version"
            )
            .is_none()
        );
    }
}
