//! `virtctl expose` and embedded mode's service proxy: a Service for a VMI is reachable on
//! the host at its cluster IP and at its node port, and reaches the guest's server.

use std::time::Duration;

use crate::support::{Scratch, System, http_get, kubectl, kubectl_ok, virtctl, wait_until};

const WEB: &str = r#"
apiVersion: kubevirt.io/v1
kind: VirtualMachineInstance
metadata:
  name: web
  labels:
    app: web
spec:
  terminationGracePeriodSeconds: 0
  domain:
    devices:
      disks:
      - disk: {bus: virtio}
        name: containerdisk
      - disk: {bus: virtio}
        name: cloudinitdisk
    memory:
      guest: 128Mi
  volumes:
  - containerDisk:
      image: registry:5000/kubevirt/alpine-container-disk-demo:devel
    name: containerdisk
  - cloudInitNoCloud:
      userData: |
        #!/bin/sh
        mkdir -p /www && echo "hello from $(hostname)" > /www/index.html
        httpd -p 8080 -h /www
    name: cloudinitdisk
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_exposed_vmi_is_reachable_at_its_cluster_ip_and_node_port() {
    let scratch = Scratch::new();
    let system = System::start(&scratch).await;
    let server = &system.server;
    let kc = server.kubeconfig_path();
    let manifest = scratch.path("web.yaml");
    std::fs::write(&manifest, WEB).unwrap();
    kubectl_ok(&kc, &scratch, &["apply", "-f", manifest.to_str().unwrap()]);

    let out = virtctl(
        &kc,
        &[
            "expose",
            "vmi",
            "web",
            "--name",
            "web",
            "--port",
            "80",
            "--target-port",
            "8080",
            "--type",
            "NodePort",
        ],
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        "Service web successfully exposed for vmi web"
    );
    let svc = kubectl_ok(
        &kc,
        &scratch,
        &[
            "get",
            "svc",
            "web",
            "-o",
            "jsonpath={.spec.clusterIP} {.spec.ports[0].nodePort} {.spec.selector.app}",
        ],
    );
    let mut fields = svc.split_whitespace();
    let (ip, node_port, selected) = (
        fields.next().unwrap().to_owned(),
        fields.next().unwrap().to_owned(),
        fields.next().unwrap().to_owned(),
    );
    assert!(ip.starts_with("127.10."), "{svc}");
    assert!(
        node_port
            .parse::<u16>()
            .is_ok_and(|p| (30000..=32767).contains(&p)),
        "{svc}"
    );
    assert_eq!(selected, "web");

    // The guest's httpd answers once it has booted, at both addresses.
    let at_ip = format!("{ip}:80");
    let body = wait_until(
        "the guest's web server at the cluster IP",
        Duration::from_secs(90),
        server,
        || {
            let at_ip = at_ip.clone();
            async move { http_get(&at_ip).await }
        },
    )
    .await;
    assert!(body.contains("hello from web"), "{body}");
    let body = http_get(&format!("127.0.0.1:{node_port}")).await.unwrap();
    assert!(body.contains("hello from web"), "{body}");

    // Bad requests are one-line errors.
    let none = virtctl(
        &kc,
        &["expose", "vmi", "nosuch", "--name", "x", "--port", "80"],
    );
    assert_eq!(none.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&none.stderr).contains("nosuch"));
    let taken = virtctl(
        &kc,
        &["expose", "vmi", "web", "--name", "web", "--port", "80"],
    );
    assert_eq!(taken.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&taken.stderr).contains("already exists"));

    // Deleting the Service stops serving it.
    kubectl_ok(&kc, &scratch, &["delete", "svc", "web"]);
    wait_until(
        "the service address closed",
        Duration::from_secs(10),
        server,
        || {
            let at_ip = at_ip.clone();
            async move { http_get(&at_ip).await.is_none().then_some(()) }
        },
    )
    .await;
    drop(kubectl(
        &kc,
        &scratch,
        &["delete", "vmi", "web", "--wait=true", "--timeout=30s"],
    ));
}
