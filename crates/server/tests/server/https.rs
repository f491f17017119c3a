//! Authentication and protocols as a plain HTTPS client sees them.

use serde_json::json;

use crate::support::{Scratch, Server, Tls, https_client};

const VMS: &str = "/apis/kubevirt.io/v1/virtualmachines";

#[tokio::test]
async fn requests_without_valid_credentials_get_a_401_status() {
    let scratch = Scratch::new();
    let server = Server::start(&scratch).await;
    let client = https_client(&server.ca_pem(), Tls::default());
    let unauthorized = json!({
        "kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
        "message": "Unauthorized", "reason": "Unauthorized", "code": 401,
    });

    for (what, request) in [
        ("no credentials", client.get(server.url(VMS))),
        ("no credentials on /api", client.get(server.url("/api"))),
        (
            "a bad token",
            client.get(server.url(VMS)).bearer_auth("nope"),
        ),
        (
            "a bad token on /healthz",
            client.get(server.url("/healthz")).bearer_auth("nope"),
        ),
        (
            "the token with a character more",
            client
                .get(server.url(VMS))
                .bearer_auth(format!("{}0", server.token())),
        ),
    ] {
        let response = request.send().await.unwrap();
        assert_eq!(response.status(), 401, "{what}");
        let content_type = response.headers()["content-type"].to_str().unwrap();
        assert_eq!(content_type, "application/json", "{what}");
        let body: serde_json::Value =
            serde_json::from_slice(&response.bytes().await.unwrap()).unwrap();
        assert_eq!(body, unauthorized, "{what}");
    }
}

#[tokio::test]
async fn health_and_version_are_open_and_the_admin_token_opens_the_rest() {
    let scratch = Scratch::new();
    let server = Server::start(&scratch).await;
    let client = https_client(&server.ca_pem(), Tls::default());
    for path in ["/healthz", "/livez", "/readyz", "/version"] {
        let response = client.get(server.url(path)).send().await.unwrap();
        assert_eq!(response.status(), 200, "{path}");
    }
    let response = client
        .get(server.url(VMS))
        .bearer_auth(server.token())
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    let list: serde_json::Value = serde_json::from_slice(&response.bytes().await.unwrap()).unwrap();
    assert_eq!(list["kind"], "VirtualMachineList");
}

#[tokio::test]
async fn http2_and_http1_are_both_served() {
    let scratch = Scratch::new();
    let server = Server::start(&scratch).await;
    for (http1_only, version) in [
        (false, reqwest::Version::HTTP_2),
        (true, reqwest::Version::HTTP_11),
    ] {
        let client = https_client(
            &server.ca_pem(),
            Tls {
                http1_only,
                ..Tls::default()
            },
        );
        let response = client
            .get(server.url("/api"))
            .bearer_auth(server.token())
            .send()
            .await
            .unwrap();
        assert_eq!(
            (response.status().as_u16(), response.version()),
            (200, version)
        );
    }
}

#[tokio::test]
async fn a_client_certificate_from_another_ca_is_refused() {
    let scratch = Scratch::new();
    let server = Server::start(&scratch).await;
    let foreign = server::pki::ensure(
        &scratch.path("foreign-tls"),
        &server::pki::ServerNames::local(),
        time::OffsetDateTime::now_utc(),
    )
    .unwrap();
    let client = https_client(
        &server.ca_pem(),
        Tls {
            identity: Some((&foreign.admin_cert_pem, &foreign.admin_key_pem)),
            ..Tls::default()
        },
    );
    let err = client
        .get(server.url("/healthz"))
        .send()
        .await
        .expect_err("a certificate our CA did not sign fails the handshake");
    assert!(err.is_connect() || err.is_request(), "{err:?}");

    let admin = server.kubeconfig();
    let own = &admin.users[0].user;
    let decode = |b64: &Option<String>| {
        use base64::Engine;
        String::from_utf8(
            base64::engine::general_purpose::STANDARD
                .decode(b64.as_deref().unwrap())
                .unwrap(),
        )
        .unwrap()
    };
    let (cert, key) = (
        decode(&own.client_certificate_data),
        decode(&own.client_key_data),
    );
    let client = https_client(
        &server.ca_pem(),
        Tls {
            identity: Some((&cert, &key)),
            ..Tls::default()
        },
    );
    let response = client.get(server.url(VMS)).send().await.unwrap();
    assert_eq!(
        response.status(),
        200,
        "our own admin certificate is accepted"
    );
}

#[tokio::test]
async fn watches_stream_over_both_protocols() {
    let scratch = Scratch::new();
    let server = Server::start(&scratch).await;
    let vms: kube::Api<api::v1::VirtualMachine> = kube::Api::namespaced(
        crate::support::kube_client(&server.kubeconfig_path()).await,
        "default",
    );
    for (http1_only, name) in [(false, "over-h2"), (true, "over-http1")] {
        let client = https_client(
            &server.ca_pem(),
            Tls {
                http1_only,
                ..Tls::default()
            },
        );
        let mut watch = client
            .get(server.url(&format!(
                "/apis/kubevirt.io/v1/namespaces/default/virtualmachines?watch=true&fieldSelector=metadata.name%3D{name}"
            )))
            .bearer_auth(server.token())
            .timeout(std::time::Duration::from_secs(60))
            .send()
            .await
            .unwrap();
        assert_eq!(watch.status(), 200);
        let mut vm = crate::support::cirros_vm();
        vm.metadata.name = Some(name.into());
        vms.create(&Default::default(), &vm).await.unwrap();
        let chunk = tokio::time::timeout(std::time::Duration::from_secs(10), watch.chunk())
            .await
            .expect("the event arrives while the response is open")
            .unwrap()
            .unwrap();
        let event: serde_json::Value = serde_json::from_slice(&chunk).unwrap();
        assert_eq!(
            (&event["type"], &event["object"]["metadata"]["name"]),
            (&json!("ADDED"), &json!(name))
        );
    }
}
