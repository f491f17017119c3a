//! A VMI's readiness and liveness probes, run against the real guest: Ready follows the
//! guest's web server as it comes and goes (and so does the Service in front of it), a
//! liveness probe passes while the guest serves and ends the guest once it stops, and a
//! bad probe is refused at admission with its field path.

use std::time::Duration;

use serde_json::Value;

use crate::support::{
    Scratch, System, console_log, http_get, kubectl, kubectl_ok, qemu_pids, virtctl, wait_until,
};

/// The guest starts its web server a few seconds after boot and later removes the page its
/// readiness probe asks for (the server keeps serving its index), so its readiness goes
/// false -> true -> false.
const PROBED: &str = r#"
apiVersion: kubevirt.io/v1
kind: VirtualMachineInstance
metadata:
  name: probed
  labels: {app: probed}
spec:
  terminationGracePeriodSeconds: 0
  domain:
    devices:
      disks:
      - {name: containerdisk, disk: {bus: virtio}}
      - {name: cloudinitdisk, disk: {bus: virtio}}
      interfaces: [{name: default, masquerade: {}, ports: [{name: web, port: 8080}]}]
    memory: {guest: 128Mi}
  networks: [{name: default, pod: {}}]
  readinessProbe:
    httpGet: {port: web, path: /ready.html}
    periodSeconds: 1
    failureThreshold: 1
  livenessProbe:
    tcpSocket: {port: 8080}
    initialDelaySeconds: 3600
  volumes:
  - name: containerdisk
    containerDisk: {image: registry:5000/kubevirt/alpine-container-disk-demo:devel}
  - name: cloudinitdisk
    cloudInitNoCloud:
      userData: |
        #!/bin/sh
        mkdir -p /www && echo ready > /www/ready.html && echo hello > /www/index.html
        sleep 4
        echo PROBE-TEST-SERVING > /dev/console
        httpd -p 8080 -h /www
        sleep 15
        rm /www/ready.html
        echo PROBE-TEST-UNREADY > /dev/console
"#;

/// The guest serves on port 8080, which its liveness probe checks from 40 s after the
/// start, and stops 50 s after it booted: the probe passes meanwhile (a slow boot under
/// load has 40 s to bring the server up), then fails twice and the guest is ended.
const DOOMED: &str = r#"
apiVersion: kubevirt.io/v1
kind: VirtualMachineInstance
metadata:
  name: doomed
spec:
  terminationGracePeriodSeconds: 30
  domain:
    devices:
      disks:
      - {name: containerdisk, disk: {bus: virtio}}
      - {name: cloudinitdisk, disk: {bus: virtio}}
    memory: {guest: 128Mi}
  livenessProbe:
    tcpSocket: {port: 8080}
    initialDelaySeconds: 40
    periodSeconds: 1
    failureThreshold: 2
  volumes:
  - name: containerdisk
    containerDisk: {image: registry:5000/kubevirt/alpine-container-disk-demo:devel}
  - name: cloudinitdisk
    cloudInitNoCloud:
      userData: |
        #!/bin/sh
        mkdir -p /www && httpd -p 8080 -h /www
        sleep 50
        echo LIVENESS-TEST-STOPPING > /dev/console
        killall httpd
"#;

const BAD: &str = r#"
apiVersion: kubevirt.io/v1
kind: VirtualMachineInstance
metadata:
  name: bad-probe
spec:
  domain:
    memory: {guest: 64Mi}
  readinessProbe:
    httpGet: {port: web}
"#;

fn vmi(kc: &std::path::Path, scratch: &Scratch, name: &str) -> Value {
    serde_json::from_str(&kubectl_ok(
        kc,
        scratch,
        &["get", "vmi", name, "-o", "json"],
    ))
    .unwrap()
}

/// The VMI's Ready condition as (status, reason, message), once it is Running.
fn ready(v: &Value) -> Option<(String, String, String)> {
    if v["status"]["phase"] != "Running" {
        return None;
    }
    let c = v["status"]["conditions"]
        .as_array()?
        .iter()
        .find(|c| c["type"] == "Ready")?;
    let text = |k: &str| c[k].as_str().unwrap_or_default().to_owned();
    Some((text("status"), text("reason"), text("message")))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn probes_drive_ready_and_liveness_against_the_guest() {
    let scratch = Scratch::new();
    let system = System::start(&scratch).await;
    let server = &system.server;
    let kc = server.kubeconfig_path();

    // A probe that names no port of the VMI is refused with its path.
    let bad = scratch.path("bad.yaml");
    std::fs::write(&bad, BAD).unwrap();
    let out = kubectl(&kc, &scratch, &["apply", "-f", bad.to_str().unwrap()]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(
        stderr.contains("spec.readinessProbe.httpGet.port")
            && stderr.contains("is not the name of a port"),
        "{stderr}"
    );

    let probed = scratch.path("probed.yaml");
    std::fs::write(&probed, PROBED).unwrap();
    let doomed = scratch.path("doomed.yaml");
    std::fs::write(&doomed, DOOMED).unwrap();
    kubectl_ok(&kc, &scratch, &["apply", "-f", probed.to_str().unwrap()]);
    kubectl_ok(&kc, &scratch, &["apply", "-f", doomed.to_str().unwrap()]);
    // A Service in front of `probed`: it sends only to a ready VMI.
    let out = virtctl(
        &kc,
        &[
            "expose",
            "vmi",
            "probed",
            "--name",
            "probed",
            "--port",
            "80",
            "--target-port",
            "8080",
        ],
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let service = format!(
        "{}:80",
        kubectl_ok(
            &kc,
            &scratch,
            &["get", "svc", "probed", "-o", "jsonpath={.spec.clusterIP}"]
        )
        .trim()
    );

    // Running but not ready: the web server is not up yet.
    let (status, reason, message) = wait_until(
        "probed Running",
        Duration::from_secs(60),
        server,
        || async { ready(&vmi(&kc, &scratch, "probed")) },
    )
    .await;
    assert_eq!(
        (status.as_str(), reason.as_str()),
        ("False", "ContainersNotReady"),
        "{message}"
    );

    // Ready once the guest serves the page.
    wait_until("probed Ready", Duration::from_secs(90), server, || async {
        ready(&vmi(&kc, &scratch, "probed")).filter(|r| r.0 == "True")
    })
    .await;
    let console = console_log(&system.run_dir, "probed");
    assert!(console.contains("PROBE-TEST-SERVING"), "ready too early");
    // The service proxy learns of the change from its own watch, a moment later.
    let page = wait_until(
        "the Service reaching the ready guest",
        Duration::from_secs(10),
        server,
        || http_get(&service),
    )
    .await;
    assert!(page.contains("hello"), "{page}");
    assert!(!console.contains("PROBE-TEST-UNREADY"), "ready too late");

    // The page goes: ready -> false, with the probe's failure as the message.
    let (_, reason, message) = wait_until(
        "probed unready again",
        Duration::from_secs(60),
        server,
        || async { ready(&vmi(&kc, &scratch, "probed")).filter(|r| r.0 == "False") },
    )
    .await;
    assert_eq!(reason, "ContainersNotReady");
    assert!(message.contains("HTTP 404"), "{message}");
    assert_eq!(
        vmi(&kc, &scratch, "probed")["status"]["phase"],
        "Running",
        "a failing readiness probe leaves the guest running"
    );
    // The guest still serves its index page, but the Service no longer sends to it.
    wait_until(
        "the Service leaving the unready guest",
        Duration::from_secs(10),
        server,
        || async { http_get(&service).await.is_none().then_some(()) },
    )
    .await;

    // `doomed` lives while it serves: its probes pass from 40 s after the start until
    // the guest stops its server (its console says so first, and the launcher removes the
    // console log with the rest of its directory when the guest ends).
    wait_until(
        "doomed stopping its server",
        Duration::from_secs(90),
        server,
        || async {
            console_log(&system.run_dir, "doomed")
                .contains("LIVENESS-TEST-STOPPING")
                .then_some(())
        },
    )
    .await;
    assert_eq!(
        vmi(&kc, &scratch, "doomed")["status"]["phase"],
        "Running",
        "the liveness probe failed while the guest served"
    );
    // Then it fails twice: the guest is ended and the VMI fails.
    let failed = wait_until("doomed Failed", Duration::from_secs(30), server, || async {
        let v = vmi(&kc, &scratch, "doomed");
        (v["status"]["phase"] == "Failed").then_some(v)
    })
    .await;
    let conditions = failed["status"]["conditions"].to_string();
    assert!(
        conditions
            .contains("the liveness probe failed 2 times in a row: port 8080: connection refused"),
        "{failed:#}"
    );
    // Ended at once, not after its 30 s grace period; `probed` is the only guest left.
    wait_until(
        "doomed's QEMU gone",
        Duration::from_secs(10),
        server,
        || async { (qemu_pids(&system.run_dir).len() == 1).then_some(()) },
    )
    .await;
}
