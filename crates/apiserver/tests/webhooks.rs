//! Admission webhooks over HTTPS: a test webhook (its own CA, served with rustls) mutates
//! and validates VirtualMachines through webhook configurations, as virt-api will.

#![allow(clippy::unwrap_used)]

use std::sync::{Arc, Mutex};

use axum::Router;
use base64::Engine;
use serde_json::{Value, json};

mod common;

/// The test webhook; returns its URL, its CA bundle and the reviews it received.
async fn webhook() -> (String, String, Arc<Mutex<Vec<Value>>>) {
    let seen = Arc::new(Mutex::new(Vec::new()));
    let record = seen.clone();
    let answer = move |path: &'static str| {
        let record = record.clone();
        move |axum::Json(review): axum::Json<Value>| async move {
            record
                .lock()
                .unwrap()
                .push(json!({"path": path, "request": review["request"]}));
            let request = &review["request"];
            let uid = request["uid"].clone();
            let name = request["name"].as_str().unwrap_or_default();
            let response = match path {
                "mutate" => {
                    let patch = json!([{"op": "add", "path": "/metadata/labels/mutated-by", "value": "test-webhook"}]);
                    json!({"uid": uid, "allowed": true, "patchType": "JSONPatch",
                           "patch": base64::engine::general_purpose::STANDARD.encode(patch.to_string())})
                }
                _ if name.starts_with("deny-") => json!({"uid": uid, "allowed": false, "status": {
                    "code": 422, "reason": "Invalid", "message": "names starting with deny- are refused",
                    "details": {"causes": [{"type": "FieldValueInvalid", "field": "metadata.name", "message": "refused"}]}}}),
                _ => json!({"uid": uid, "allowed": true}),
            };
            axum::Json(
                json!({"apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview", "response": response}),
            )
        }
    };
    let app = Router::new()
        .route("/mutate", axum::routing::post(answer("mutate")))
        .route("/validate", axum::routing::post(answer("validate")))
        .route(
            "/slow",
            axum::routing::post(|| async {
                tokio::time::sleep(std::time::Duration::from_secs(5)).await;
                "too late"
            }),
        );
    let (port, ca_pem) = common::https(app, &[]).await;
    (format!("https://127.0.0.1:{port}"), ca_pem, seen)
}

async fn send(app: &Router, method: &str, uri: &str, body: Value) -> (u16, Value) {
    common::send(
        app,
        method,
        uri,
        "application/json",
        body.to_string().into_bytes(),
    )
    .await
}

fn vm(name: &str, labels: Value) -> Value {
    json!({"apiVersion": "kubevirt.io/v1", "kind": "VirtualMachine", "metadata": {"name": name, "labels": labels},
           "spec": {"runStrategy": "Halted", "template": {"spec": {"domain": {"devices": {}, "memory": {"guest": "64Mi"}}}}}})
}

fn configuration(kind: &str, name: &str, url: &str, ca: &str, failure: &str) -> Value {
    json!({
        "apiVersion": "admissionregistration.k8s.io/v1", "kind": kind, "metadata": {"name": name},
        "webhooks": [{
            "name": format!("{name}.example.com"),
            "clientConfig": {"url": url, "caBundle": base64::engine::general_purpose::STANDARD.encode(ca)},
            "rules": [{"operations": ["CREATE", "UPDATE"], "apiGroups": ["kubevirt.io"], "apiVersions": ["v1"], "resources": ["virtualmachines"]}],
            "objectSelector": {"matchExpressions": [{"key": "skip-webhooks", "operator": "DoesNotExist"}]},
            "failurePolicy": failure, "sideEffects": "None", "admissionReviewVersions": ["v1"],
        }],
    })
}

const VMS: &str = "/apis/kubevirt.io/v1/namespaces/default/virtualmachines";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn webhooks_mutate_validate_and_fail_as_configured() {
    let (url, ca, seen) = webhook().await;
    let state = apiserver::AppState::start(Arc::new(store::MemStore::new()))
        .await
        .unwrap();
    let app = apiserver::router(state);
    let mutating = "/apis/admissionregistration.k8s.io/v1/mutatingwebhookconfigurations";
    let validating = "/apis/admissionregistration.k8s.io/v1/validatingwebhookconfigurations";
    let (code, _) = send(
        &app,
        "POST",
        mutating,
        configuration(
            "MutatingWebhookConfiguration",
            "mutate",
            &format!("{url}/mutate"),
            &ca,
            "Fail",
        ),
    )
    .await;
    assert_eq!(code, 201);
    let (code, _) = send(
        &app,
        "POST",
        validating,
        configuration(
            "ValidatingWebhookConfiguration",
            "validate",
            &format!("{url}/validate"),
            &ca,
            "Fail",
        ),
    )
    .await;
    assert_eq!(code, 201);

    let (code, created) = send(&app, "POST", VMS, vm("allowed", json!({}))).await;
    assert_eq!(code, 201, "{created}");
    assert_eq!(created["metadata"]["labels"]["mutated-by"], "test-webhook");
    {
        let seen = seen.lock().unwrap();
        let paths: Vec<&str> = seen.iter().map(|r| r["path"].as_str().unwrap()).collect();
        assert_eq!(paths, ["mutate", "validate"]);
        let request = &seen[1]["request"];
        assert_eq!(request["operation"], "CREATE");
        assert_eq!(request["userInfo"]["username"], "system:unsecured");
        assert_eq!(
            request["object"]["metadata"]["labels"]["mutated-by"],
            "test-webhook"
        );
        assert_eq!(
            request["kind"],
            json!({"group": "kubevirt.io", "version": "v1", "kind": "VirtualMachine"})
        );
    }

    let (code, status) = send(&app, "POST", VMS, vm("deny-me", json!({}))).await;
    assert_eq!(code, 422, "{status}");
    assert_eq!(status["reason"], "Invalid");
    assert!(status["message"].as_str().unwrap().contains("admission webhook \"validate.example.com\" denied the request: names starting with deny- are refused"));
    assert_eq!(status["details"]["causes"][0]["field"], "metadata.name");
    let (code, _) = send(&app, "GET", &format!("{VMS}/deny-me"), Value::Null).await;
    assert_eq!(code, 404, "a denied object is not stored");

    // The object selector keeps the webhooks out.
    let before = seen.lock().unwrap().len();
    let (code, created) = send(
        &app,
        "POST",
        VMS,
        vm("deny-skipped", json!({"skip-webhooks": "yes"})),
    )
    .await;
    assert_eq!(code, 201, "{created}");
    assert_eq!(seen.lock().unwrap().len(), before);

    // The namespace selector: a webhook for labelled namespaces only.
    let mut scoped = configuration(
        "ValidatingWebhookConfiguration",
        "scoped",
        &format!("{url}/validate"),
        &ca,
        "Fail",
    );
    scoped["webhooks"][0]["namespaceSelector"] = json!({"matchLabels": {"webhooks": "on"}});
    scoped["webhooks"][0]["objectSelector"] = Value::Null;
    let (code, _) = send(&app, "POST", validating, scoped).await;
    assert_eq!(code, 201);
    for (ns, labels) in [("plain", json!({})), ("guarded", json!({"webhooks": "on"}))] {
        let body = json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": ns, "labels": labels}});
        assert_eq!(send(&app, "POST", "/api/v1/namespaces", body).await.0, 201);
    }
    let before = seen.lock().unwrap().len();
    let in_ns = |ns: &str| format!("/apis/kubevirt.io/v1/namespaces/{ns}/virtualmachines");
    let (code, _) = send(
        &app,
        "POST",
        &in_ns("plain"),
        vm("deny-plain", json!({"skip-webhooks": "yes"})),
    )
    .await;
    assert_eq!(code, 201, "not selected: the namespace lacks the label");
    let (code, _) = send(
        &app,
        "POST",
        &in_ns("guarded"),
        vm("deny-guarded", json!({"skip-webhooks": "yes"})),
    )
    .await;
    assert_eq!(code, 422, "selected through the namespace's label");
    assert_eq!(seen.lock().unwrap().len(), before + 1);
    let (code, current) = send(&app, "GET", &format!("{validating}/scoped"), Value::Null).await;
    assert_eq!(code, 200);
    let name = current["metadata"]["name"].as_str().unwrap().to_owned();
    assert_eq!(
        send(&app, "DELETE", &format!("{validating}/{name}"), Value::Null)
            .await
            .0,
        200
    );

    // A webhook slower than its timeout fails the request in that time.
    let mut slow = configuration(
        "ValidatingWebhookConfiguration",
        "slow",
        &format!("{url}/slow"),
        &ca,
        "Fail",
    );
    slow["webhooks"][0]["timeoutSeconds"] = json!(1);
    assert_eq!(send(&app, "POST", validating, slow).await.0, 201);
    let started = std::time::Instant::now();
    let (code, status) = send(&app, "POST", VMS, vm("timed", json!({}))).await;
    assert_eq!(code, 500, "{status}");
    assert!(
        started.elapsed() < std::time::Duration::from_secs(3),
        "{:?}",
        started.elapsed()
    );
    assert_eq!(
        send(&app, "DELETE", &format!("{validating}/slow"), Value::Null)
            .await
            .0,
        200
    );

    // An unreachable webhook fails the request under Fail, and is skipped under Ignore.
    let dead = "https://127.0.0.1:9/validate";
    for (failure, want) in [("Fail", 500), ("Ignore", 201)] {
        let config = configuration(
            "ValidatingWebhookConfiguration",
            "validate",
            dead,
            &ca,
            failure,
        );
        let (code, current) =
            send(&app, "GET", &format!("{validating}/validate"), Value::Null).await;
        assert_eq!(code, 200);
        let mut config = config;
        config["metadata"]["resourceVersion"] = current["metadata"]["resourceVersion"].clone();
        let (code, _) = send(&app, "PUT", &format!("{validating}/validate"), config).await;
        assert_eq!(code, 200);
        let (code, status) = send(
            &app,
            "POST",
            VMS,
            vm(&format!("dead-{}", failure.to_lowercase()), json!({})),
        )
        .await;
        assert_eq!(code, want, "{failure}: {status}");
        if want == 500 {
            assert!(
                status["message"]
                    .as_str()
                    .unwrap()
                    .contains("failed calling webhook \"validate.example.com\""),
                "{status}"
            );
        }
    }
}
