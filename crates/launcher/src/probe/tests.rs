use super::*;

fn vmi(probe: &str) -> (VirtualMachineInstance, ProbeSpec) {
    let yaml = format!(
        "apiVersion: kubevirt.io/v1
kind: VirtualMachineInstance
metadata: {{name: p}}
spec:
  domain:
    devices:
      interfaces: [{{name: default, masquerade: {{}}, ports: [{{name: http, port: 8080}}]}}]
  networks: [{{name: default, pod: {{}}}}]
  readinessProbe: {probe}
"
    );
    let Ok(mut objects) = api::parse::parse_documents(&yaml) else {
        panic!("not a manifest: {yaml}")
    };
    let Some(api::parse::Object::VirtualMachineInstance(vmi)) = objects.pop() else {
        panic!("not a VMI")
    };
    let spec = vmi.spec.readiness_probe.clone().unwrap();
    (vmi, spec)
}

fn probe(spec: &str) -> Result<Probe, String> {
    let (vmi, p) = vmi(spec);
    Probe::from_spec(&vmi, &p)
}

#[test]
fn defaults_are_the_kubelets() {
    let p = probe("{tcpSocket: {port: 22}}").unwrap();
    assert_eq!(p.check, Check::Tcp { port: 22 });
    assert_eq!(p.initial_delay, Duration::ZERO);
    assert_eq!(p.period, Duration::from_secs(10));
    assert_eq!(p.timeout, Duration::from_secs(1));
    assert_eq!((p.success_threshold, p.failure_threshold), (1, 3));
}

#[test]
fn http_probes_take_named_ports_paths_and_headers() {
    let p = probe(
        "{httpGet: {port: http, path: healthz, httpHeaders: [{name: X-A, value: b}]}, periodSeconds: 2, timeoutSeconds: 3}",
    )
    .unwrap();
    assert_eq!(
        p.check,
        Check::Http {
            port: 8080,
            path: "/healthz".into(),
            https: false,
            host: None,
            headers: vec![("X-A".into(), "b".into())],
        }
    );
    assert_eq!(p.period, Duration::from_secs(2));
    assert_eq!(p.timeout, Duration::from_secs(3));
}

#[test]
fn exec_and_agent_ping() {
    let p = probe("{exec: {command: [cat, /tmp/ready]}}").unwrap();
    assert_eq!(
        p.check,
        Check::Exec {
            command: vec!["cat".into(), "/tmp/ready".into()]
        }
    );
    assert_eq!(
        probe("{guestAgentPing: {}}").unwrap().check,
        Check::AgentPing
    );
}

#[test]
fn bad_probes_say_what_is_wrong() {
    assert_eq!(
        probe("{httpGet: {port: web}}").unwrap_err(),
        "no interface port is named \"web\""
    );
    assert_eq!(
        probe("{tcpSocket: {port: 70000}}").unwrap_err(),
        "port 70000 is not between 1 and 65535"
    );
    assert!(
        probe("{periodSeconds: 3}")
            .unwrap_err()
            .contains("exactly one")
    );
    assert!(
        probe("{tcpSocket: {port: 1}, guestAgentPing: {}}")
            .unwrap_err()
            .contains("exactly one")
    );
    assert_eq!(probe("{exec: {}}").unwrap_err(), "exec needs a command");
}

#[test]
fn readiness_flips_after_the_thresholds() {
    let p = probe("{tcpSocket: {port: 1}, successThreshold: 2, failureThreshold: 2}").unwrap();
    let mut t = Tally::new(&p, false);
    assert!(!t.record(true), "one pass of two");
    assert!(t.record(true));
    assert!(t.passing);
    assert!(!t.record(false));
    assert!(!t.record(true), "a pass resets the failures");
    assert!(!t.record(false));
    assert!(t.record(false));
    assert!(!t.passing);
}

#[test]
fn liveness_fails_after_failure_threshold_in_a_row() {
    let p = probe("{tcpSocket: {port: 1}}").unwrap();
    let mut t = Tally::new(&p, true);
    assert!(!t.record(false));
    assert!(!t.record(false));
    assert!(t.record(false));
    assert!(!t.passing);
}

#[test]
fn usernet_connection_states() {
    let table = "Hub -1 (ua-default):
  Protocol[State]    FD  Source Address  Port   Dest. Address  Port RecvQ SendQ
  TCP[SYN_SENT]      14       127.0.0.1 40123       10.0.2.15    80     0     0
  TCP[HOST_FORWARD]   9       127.0.0.1 40123       10.0.2.15    80     0     0
  TCP[ESTABLISHED]   15       127.0.0.1 40124       10.0.2.15    22     0     0
  TCP[HOST_FORWARD]  10       127.0.0.1 40124       10.0.2.15    22     0     0
  TCP[HOST_FORWARD]  11       127.0.0.1 40125       10.0.2.15    23     0     0
";
    assert_eq!(connection_state(table, 40123).as_deref(), Some("SYN_SENT"));
    assert_eq!(
        connection_state(table, 40124).as_deref(),
        Some("ESTABLISHED")
    );
    assert_eq!(connection_state(table, 40125), None);
    assert_eq!(connection_state(table, 80), None);
}

#[test]
fn http_verdicts() {
    assert!(http_passes(200) && http_passes(302) && http_passes(399));
    assert!(!http_passes(404) && !http_passes(500) && !http_passes(101));
}
