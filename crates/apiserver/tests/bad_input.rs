//! Bad requests get a 4xx `Status` naming the problem, and the server keeps serving.
//! Ends with a fuzz run: random methods, paths, queries, content types and (mutated)
//! bodies must never produce a 5xx, a panic, or an error that is not a Status.

#![allow(clippy::unwrap_used)]

use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::body::Body;
use axum::http::Request;
use proptest::prelude::*;
use serde_json::{Value, json};
use tower::ServiceExt;

async fn server() -> Router {
    let state = apiserver::AppState::start(Arc::new(store::MemStore::new()))
        .await
        .unwrap();
    apiserver::router(state)
}

use common::send;

mod common;

/// Method, URI, content type, body, expected code, and what the message must mention.
type Case = (
    &'static str,
    String,
    &'static str,
    Vec<u8>,
    u16,
    &'static str,
);

const VMS: &str = "/apis/kubevirt.io/v1/namespaces/default/virtualmachines";

fn vm(name: &str) -> Value {
    json!({"apiVersion": "kubevirt.io/v1", "kind": "VirtualMachine", "metadata": {"name": name},
           "spec": {"runStrategy": "Halted", "template": {"spec": {"domain": {"devices": {}, "memory": {"guest": "64Mi"}}}}}})
}

fn assert_status(code: u16, body: &Value, want: u16, mentions: &str, case: &str) {
    assert_eq!(code, want, "{case}: {body}");
    assert_eq!(body["kind"], "Status", "{case}: {body}");
    assert_eq!(body["code"], want, "{case}: {body}");
    let text = body.to_string();
    assert!(
        text.contains(mentions),
        "{case}: {mentions:?} not in {text}"
    );
}

#[tokio::test]
async fn every_bad_request_is_a_4xx_status_and_nothing_is_lost() {
    let app = server().await;
    let (code, _) = send(
        &app,
        "POST",
        VMS,
        "application/json",
        vm("keep").to_string().into_bytes(),
    )
    .await;
    assert_eq!(code, 201);
    let big = format!("{{\"data\": \"{}\"}}", "x".repeat(4 << 20));
    let wrong_kind = json!({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "p"}});
    let cases: Vec<Case> = vec![
        (
            "POST",
            VMS.into(),
            "application/json",
            b"{\"apiVersion\": ".to_vec(),
            400,
            "not valid JSON",
        ),
        (
            "POST",
            VMS.into(),
            "application/yaml",
            b"a: [b\n".to_vec(),
            400,
            "not valid YAML",
        ),
        (
            "POST",
            VMS.into(),
            "application/json",
            wrong_kind.to_string().into_bytes(),
            400,
            "do not match",
        ),
        (
            "POST",
            VMS.into(),
            "application/json",
            big.clone().into_bytes(),
            413,
            "larger than",
        ),
        (
            "POST",
            "/apis/authorization.k8s.io/v1/subjectaccessreviews".into(),
            "application/json",
            big.clone().into_bytes(),
            413,
            "larger than",
        ),
        (
            "POST",
            VMS.into(),
            "application/json",
            vm("Bad_Name").to_string().into_bytes(),
            422,
            "metadata.name",
        ),
        (
            "POST",
            VMS.into(),
            "application/cbor",
            b"\xa0".to_vec(),
            415,
            "unknown format",
        ),
        (
            "POST",
            VMS.into(),
            "application/vnd.kubernetes.protobuf",
            b"k8s\0\x0a".to_vec(),
            400,
            "protobuf",
        ),
        (
            "GET",
            format!("{VMS}?labelSelector=a%20in%20b"),
            "",
            vec![],
            400,
            "unable to parse requirement",
        ),
        (
            "GET",
            format!("{VMS}?fieldSelector=spec.x%3D1"),
            "",
            vec![],
            400,
            "field label not supported",
        ),
        (
            "GET",
            format!("{VMS}?limit=-1"),
            "",
            vec![],
            400,
            "invalid limit",
        ),
        (
            "GET",
            format!("{VMS}?continue=%%%"),
            "",
            vec![],
            400,
            "continue",
        ),
        (
            "GET",
            format!("{VMS}?continue=bm90LWpzb24"),
            "",
            vec![],
            400,
            "continue",
        ),
        (
            "GET",
            format!("{VMS}?watch=true&resourceVersion=abc"),
            "",
            vec![],
            400,
            "resourceVersion",
        ),
        (
            "GET",
            "/apis/kubevirt.io/v1/nothings".into(),
            "",
            vec![],
            404,
            "could not find",
        ),
        (
            "GET",
            "/apis/kubevirt.io/v1/namespaces/default/virtualmachineclusterinstancetypes".into(),
            "",
            vec![],
            404,
            "could not find",
        ),
        (
            "GET",
            format!("{VMS}/keep/console"),
            "",
            vec![],
            404,
            "could not find",
        ),
        (
            "PATCH",
            format!("{VMS}/keep"),
            "text/plain",
            b"{}".to_vec(),
            415,
            "unknown format",
        ),
        (
            "PATCH",
            format!("{VMS}/keep"),
            "application/strategic-merge-patch+json",
            b"{}".to_vec(),
            415,
            "unknown format",
        ),
        (
            "PATCH",
            format!("{VMS}/keep"),
            "application/json-patch+json",
            b"{\"op\": 1}".to_vec(),
            400,
            "list of operations",
        ),
        (
            "PATCH",
            format!("{VMS}/keep"),
            "application/json-patch+json",
            b"[{\"op\": \"jump\"}]".to_vec(),
            400,
            "invalid JSON patch",
        ),
        (
            "PATCH",
            format!("{VMS}/keep"),
            "application/merge-patch+json",
            b"{\"spec\": {\"runStrategy\": \"Sometimes\"}}".to_vec(),
            422,
            "runStrategy",
        ),
        (
            "PATCH",
            format!("{VMS}/keep"),
            "application/merge-patch+json",
            b"{\"spec\": {\"bogus\": 1}}".to_vec(),
            400,
            "unknown field",
        ),
        (
            "PUT",
            format!("{VMS}/keep"),
            "application/json",
            vm("other").to_string().into_bytes(),
            400,
            "does not match",
        ),
        (
            "DELETE",
            format!("{VMS}/keep"),
            "application/json",
            b"{\"propagationPolicy\": \"Sideways\"}".to_vec(),
            422,
            "propagationPolicy",
        ),
        (
            "DELETE",
            format!("{VMS}/keep"),
            "application/json",
            b"{\"preconditions\": {\"uid\": \"nope\"}}".to_vec(),
            409,
            "Conflict",
        ),
        (
            "PUT",
            VMS.into(),
            "application/json",
            b"{}".to_vec(),
            405,
            "MethodNotAllowed",
        ),
        (
            "POST",
            "/api/v1/namespaces/nowhere/configmaps".into(),
            "application/json",
            json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "c"}})
                .to_string()
                .into_bytes(),
            404,
            "nowhere",
        ),
    ];
    for (method, uri, ct, body, want, mentions) in cases {
        let case = format!("{method} {uri} ({ct})");
        let (code, status) = send(&app, method, &uri, ct, body).await;
        assert_status(code, &status, want, mentions, &case);
    }
    // Nothing was lost or changed, and the server still serves.
    let (code, kept) = send(&app, "GET", &format!("{VMS}/keep"), "", vec![]).await;
    assert_eq!(
        (code, &kept["spec"]["runStrategy"]),
        (200, &json!("Halted"))
    );
    assert_eq!(kept["metadata"]["generation"], 1);
    let (code, _) = send(&app, "GET", "/healthz", "", vec![]).await;
    assert_eq!(code, 200);
}

fn segment() -> impl Strategy<Value = String> {
    prop_oneof![
        Just("api".to_owned()),
        Just("apis".to_owned()),
        Just("v1".to_owned()),
        Just("kubevirt.io".to_owned()),
        Just("namespaces".to_owned()),
        Just("default".to_owned()),
        Just("virtualmachines".to_owned()),
        Just("configmaps".to_owned()),
        Just("status".to_owned()),
        Just("scale".to_owned()),
        Just("keep".to_owned()),
        "[a-zA-Z0-9._~%-]{0,12}",
    ]
}

/// A query string with random values for the parameters the server reads: numbers far
/// out of range, negative, empty, malformed selectors, unknown enum values.
fn query() -> impl Strategy<Value = String> {
    let param = prop_oneof![
        Just("watch".to_owned()),
        Just("resourceVersion".to_owned()),
        Just("resourceVersionMatch".to_owned()),
        Just("labelSelector".to_owned()),
        Just("fieldSelector".to_owned()),
        Just("limit".to_owned()),
        Just("continue".to_owned()),
        Just("timeoutSeconds".to_owned()),
        Just("allowWatchBookmarks".to_owned()),
        Just("sendInitialEvents".to_owned()),
        Just("dryRun".to_owned()),
        Just("fieldManager".to_owned()),
        Just("fieldValidation".to_owned()),
        Just("force".to_owned()),
        Just("propagationPolicy".to_owned()),
        Just("gracePeriodSeconds".to_owned()),
        Just("orphanDependents".to_owned()),
        Just("container".to_owned()),
        Just("follow".to_owned()),
        Just("tailLines".to_owned()),
        Just("limitBytes".to_owned()),
        Just("sinceSeconds".to_owned()),
        "[a-zA-Z]{1,8}".prop_map(|s| s),
    ];
    let value = prop_oneof![
        Just("true".to_owned()),
        Just("0".to_owned()),
        "-?[0-9]{1,25}",
        "[0-9a-zA-Z=!(),.%~-]{0,12}",
    ];
    proptest::collection::vec((param, value), 0..6).prop_map(|pairs| {
        pairs
            .iter()
            .map(|(k, v)| format!("{k}={v}"))
            .collect::<Vec<_>>()
            .join("&")
    })
}

fn body() -> impl Strategy<Value = Vec<u8>> {
    let valid = vm("fuzz").to_string();
    prop_oneof![
        proptest::collection::vec(any::<u8>(), 0..64),
        (0..valid.len(), any::<u8>()).prop_map(move |(i, b)| {
            let mut v = valid.clone().into_bytes();
            v[i] = b;
            v
        }),
        (0..vm("fuzz").to_string().len())
            .prop_map(|cut| vm("fuzz").to_string().into_bytes()[..cut].to_vec()),
        Just(b"[{\"op\":\"add\",\"path\":\"/metadata/labels/a\",\"value\":\"b\"}]".to_vec()),
        Just(b"k8s\0\x0a\x02\x0a\x00\x12\x03abc".to_vec()),
    ]
}

#[test]
fn fuzz_requests_never_fail_the_server() {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let app = rt.block_on(server());
    let strategy = (
        prop_oneof![
            Just("GET"),
            Just("POST"),
            Just("PUT"),
            Just("PATCH"),
            Just("DELETE")
        ],
        proptest::collection::vec(segment(), 1..8),
        query(),
        prop_oneof![
            Just("application/json"),
            Just("application/yaml"),
            Just("application/merge-patch+json"),
            Just("application/json-patch+json"),
            Just("application/apply-patch+yaml"),
            Just("application/vnd.kubernetes.protobuf"),
            Just("text/plain"),
        ],
        body(),
    );
    let config = ProptestConfig {
        cases: 2000,
        failure_persistence: None,
        ..ProptestConfig::default()
    };
    let mut runner = proptest::test_runner::TestRunner::new(config);
    let result = runner.run(&strategy, |(method, segments, query, ct, body)| {
        rt.block_on(async {
            send(
                &app,
                "POST",
                VMS,
                "application/json",
                vm("keep").to_string().into_bytes(),
            )
            .await;
            let uri = format!("/{}?{query}", segments.join("/"));
            let req = Request::builder()
                .method(method)
                .uri(&uri)
                .header("content-type", ct)
                .body(Body::from(body));
            let Ok(req) = req else {
                return Ok(());
            };
            let resp = app.clone().oneshot(req).await.unwrap();
            let code = resp.status().as_u16();
            prop_assert!(code < 500, "{method} {uri} ({ct}): {code}");
            // A watch with a long timeout is a fine answer: its first events are enough.
            let read = axum::body::to_bytes(resp.into_body(), usize::MAX);
            let Ok(bytes) = tokio::time::timeout(Duration::from_millis(100), read).await else {
                prop_assert!(code == 200, "{method} {uri}: a {code} that does not end");
                return Ok(());
            };
            let bytes = bytes.unwrap();
            if code >= 400 {
                let status: Value = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
                prop_assert_eq!(&status["kind"], "Status", "{} {}: {}", method, uri, status);
            }
            let (code, _) = send(&app, "GET", "/healthz", "", vec![]).await;
            prop_assert_eq!(code, 200);
            Ok(())
        })
    });
    if let Err(e) = result {
        panic!("{e}");
    }
}
