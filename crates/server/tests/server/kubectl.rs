//! kubectl with the kubeconfig the server writes, and with each credential alone.

use server::kubeconfig::{AuthInfo, Kubeconfig};

use crate::support::{Scratch, Server, cirros_manifest, kubectl, kubectl_ok};

#[tokio::test]
async fn kubectl_reports_the_version_lists_and_creates() {
    let scratch = Scratch::new();
    let server = Server::start(&scratch).await;
    let kubeconfig = server.kubeconfig_path();

    let version: serde_json::Value = serde_json::from_str(&kubectl_ok(
        &kubeconfig,
        &scratch,
        &["version", "-o", "json"],
    ))
    .unwrap();
    assert_eq!(
        version["serverVersion"]["gitVersion"],
        "v1.33.0-kubevirt-rs"
    );

    let out = kubectl(&kubeconfig, &scratch, &["get", "vm", "-A"]);
    assert!(out.status.success(), "{out:?}");
    assert_eq!(
        String::from_utf8_lossy(&out.stderr).trim(),
        "No resources found"
    );

    let manifest = cirros_manifest();
    let created = kubectl_ok(
        &kubeconfig,
        &scratch,
        &[
            "create",
            "--validate=false",
            "-f",
            manifest.to_str().unwrap(),
        ],
    );
    assert_eq!(
        created.trim(),
        "virtualmachine.kubevirt.io/vm-cirros created"
    );

    let listed = kubectl_ok(&kubeconfig, &scratch, &["get", "vm"]);
    let rows: Vec<Vec<&str>> = listed
        .lines()
        .map(|l| l.split_whitespace().collect())
        .collect();
    assert_eq!(rows[0][..2], ["NAME", "AGE"], "{listed}");
    assert_eq!(rows.len(), 2, "{listed}");
    assert_eq!(rows[1][0], "vm-cirros", "{listed}");
}

/// The admin kubeconfig with its user's credentials replaced.
fn with_user(mut config: Kubeconfig, user: AuthInfo) -> String {
    config.users[0].user = user;
    config.to_yaml().unwrap()
}

#[tokio::test]
async fn the_token_and_the_client_certificate_each_work_alone() {
    let scratch = Scratch::new();
    let server = Server::start(&scratch).await;
    let admin = server.kubeconfig();
    let full = admin.users[0].user.clone();
    // No credentials at all is left to the HTTPS tests: kubectl would prompt for a password.
    let variants = [
        (
            "token-only",
            AuthInfo {
                token: full.token.clone(),
                ..AuthInfo::default()
            },
            true,
        ),
        (
            "cert-only",
            AuthInfo {
                token: None,
                ..full.clone()
            },
            true,
        ),
        (
            "wrong-token",
            AuthInfo {
                token: Some("not-the-admin-token".into()),
                ..AuthInfo::default()
            },
            false,
        ),
    ];
    for (name, user, works) in variants {
        let path = scratch.path(name);
        std::fs::write(&path, with_user(admin.clone(), user)).unwrap();
        let out = kubectl(&path, &scratch, &["get", "vm", "-A"]);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.success(), works, "{name}: {stderr}");
        if !works {
            assert!(stderr.contains("Unauthorized"), "{name}: {stderr}");
        }
    }
}
