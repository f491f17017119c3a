//! A CRD with two versions and a conversion webhook: objects are stored in the storage
//! version and read in the version asked for, through ConversionReviews.

#![allow(clippy::unwrap_used)]

use std::sync::{Arc, Mutex};

use axum::Router;
use base64::Engine;
use serde_json::{Value, json};

mod common;

/// v1 has `spec.size`; v2 calls it `spec.count`.
fn convert(obj: &Value, desired: &str) -> Value {
    let mut out = obj.clone();
    let spec = out["spec"].as_object_mut().unwrap();
    match desired {
        "example.com/v2" => {
            if let Some(size) = spec.remove("size") {
                spec.insert("count".into(), size);
            }
        }
        _ => {
            if let Some(count) = spec.remove("count") {
                spec.insert("size".into(), count);
            }
        }
    }
    out["apiVersion"] = json!(desired);
    out
}

async fn webhook(calls: Arc<Mutex<usize>>) -> (u16, String) {
    let app = Router::new().route(
        "/convert",
        axum::routing::post(move |axum::Json(review): axum::Json<Value>| {
            let calls = calls.clone();
            async move {
                *calls.lock().unwrap() += 1;
                let request = &review["request"];
                let desired = request["desiredAPIVersion"].as_str().unwrap();
                let converted: Vec<Value> = request["objects"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .map(|o| convert(o, desired))
                    .collect();
                axum::Json(json!({"apiVersion": "apiextensions.k8s.io/v1", "kind": "ConversionReview",
                    "response": {"uid": request["uid"], "convertedObjects": converted, "result": {"status": "Success"}}}))
            }
        }),
    );
    common::https(app, &[]).await
}

fn crd(port: u16, ca: &str) -> Value {
    let schema = |field: &str| {
        json!({"openAPIV3Schema": {"type": "object", "properties": {"spec": {"type": "object",
            "properties": {field: {"type": "integer"}}}}}})
    };
    json!({"apiVersion": "apiextensions.k8s.io/v1", "kind": "CustomResourceDefinition",
        "metadata": {"name": "gadgets.example.com"},
        "spec": {"group": "example.com", "scope": "Namespaced",
            "names": {"plural": "gadgets", "singular": "gadget", "kind": "Gadget"},
            "versions": [
                {"name": "v1", "served": true, "storage": true, "schema": schema("size")},
                {"name": "v2", "served": true, "storage": false, "schema": schema("count")},
            ],
            "conversion": {"strategy": "Webhook", "webhook": {"conversionReviewVersions": ["v1"],
                "clientConfig": {"url": format!("https://127.0.0.1:{port}/convert"),
                                 "caBundle": base64::engine::general_purpose::STANDARD.encode(ca)}}}}})
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn objects_are_converted_by_the_crds_webhook() {
    let calls = Arc::new(Mutex::new(0));
    let (port, ca) = webhook(calls.clone()).await;
    let state = apiserver::AppState::start(Arc::new(store::MemStore::new()))
        .await
        .unwrap();
    let app = apiserver::router(state);
    let send = |method: &'static str, uri: String, body: Value| {
        let app = app.clone();
        async move {
            common::send(
                &app,
                method,
                &uri,
                "application/json",
                body.to_string().into_bytes(),
            )
            .await
        }
    };
    let (code, _) = send(
        "POST",
        "/apis/apiextensions.k8s.io/v1/customresourcedefinitions".into(),
        crd(port, &ca),
    )
    .await;
    assert_eq!(code, 201);
    let v1 = "/apis/example.com/v1/namespaces/default/gadgets";
    let v2 = "/apis/example.com/v2/namespaces/default/gadgets";

    // Written in v2, stored in v1, read in either.
    let gadget = json!({"apiVersion": "example.com/v2", "kind": "Gadget", "metadata": {"name": "g"}, "spec": {"count": 4}});
    let (code, created) = send("POST", v2.into(), gadget).await;
    assert_eq!(
        (code, &created["spec"], &created["apiVersion"]),
        (201, &json!({"count": 4}), &json!("example.com/v2"))
    );
    let (_, old) = send("GET", format!("{v1}/g"), Value::Null).await;
    assert_eq!(
        (&old["spec"], &old["apiVersion"]),
        (&json!({"size": 4}), &json!("example.com/v1"))
    );
    let (_, list) = send("GET", v2.into(), Value::Null).await;
    assert_eq!(list["items"][0]["spec"], json!({"count": 4}));

    // A merge patch in v2 applies to the v2 form.
    let req = common::send(
        &app,
        "PATCH",
        &format!("{v2}/g"),
        "application/merge-patch+json",
        br#"{"spec":{"count":5}}"#.to_vec(),
    )
    .await;
    assert_eq!((req.0, &req.1["spec"]), (200, &json!({"count": 5})));
    let (_, old) = send("GET", format!("{v1}/g"), Value::Null).await;
    assert_eq!(old["spec"], json!({"size": 5}));
    assert!(*calls.lock().unwrap() >= 5);

    // Reading in the storage version needs no webhook.
    let before = *calls.lock().unwrap();
    send("GET", format!("{v1}/g"), Value::Null).await;
    assert_eq!(*calls.lock().unwrap(), before);
}
