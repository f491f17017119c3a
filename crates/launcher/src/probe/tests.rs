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
    Probe::from_spec(&vmi, &p).map_err(|e| e.to_string())
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
  TCP[ESTABLISHED]   16       10.0.2.15 40126         1.2.3.4    80     0     0
";
    assert_eq!(connection_state(table, 40123).as_deref(), Some("SYN_SENT"));
    assert_eq!(
        connection_state(table, 40124).as_deref(),
        Some("ESTABLISHED")
    );
    assert_eq!(connection_state(table, 40125), None);
    assert_eq!(connection_state(table, 80), None);
    assert_eq!(
        connection_state(table, 40126),
        None,
        "the guest's own connection"
    );
}

#[test]
fn http_verdicts() {
    assert!(http_passes(200) && http_passes(302) && http_passes(399));
    assert!(!http_passes(404) && !http_passes(500) && !http_passes(101));
}

#[test]
fn http_headers_are_the_kubelets_with_the_probes_on_top() {
    let h = http_headers(None, 80, &[]).unwrap();
    assert_eq!(h["user-agent"], "kube-probe/1.32");
    assert_eq!(h["accept"], "*/*");
    assert!(
        h.get("host").is_none(),
        "reqwest names the address it connects to"
    );
    let h = http_headers(
        Some("web.example"),
        8080,
        &[
            ("Accept".into(), "application/json".into()),
            ("X-Probe".into(), "1".into()),
        ],
    )
    .unwrap();
    assert_eq!(h["host"], "web.example:8080");
    assert_eq!(h.get_all("accept").iter().count(), 1, "replaced, not added");
    assert_eq!(h["accept"], "application/json");
    assert_eq!(h["x-probe"], "1");
    assert!(http_headers(None, 80, &[("X Bad".into(), "v".into())]).is_err());
}

/// A guest whose agent answers `guest-ping` as scripted (then always), and whose activity
/// the test sets.
struct Scripted {
    activity: std::sync::Mutex<Activity>,
    pings: std::sync::Mutex<std::collections::VecDeque<bool>>,
    probed_at: std::sync::Mutex<Vec<tokio::time::Instant>>,
}

impl Scripted {
    fn new(pings: &[bool]) -> Self {
        Self {
            activity: std::sync::Mutex::new(Activity::Running),
            pings: std::sync::Mutex::new(pings.iter().copied().collect()),
            probed_at: std::sync::Mutex::new(Vec::new()),
        }
    }
}

impl Guest for Scripted {
    fn activity(&self) -> Activity {
        *self.activity.lock().unwrap()
    }
    async fn started(&self) -> bool {
        true
    }
    async fn forward(&self, _: Role, _: u16) -> Result<SocketAddrV4, String> {
        Err("no network".into())
    }
    async fn usernet(&self) -> Result<String, String> {
        Ok(String::new())
    }
    async fn exec(&self, _: &[String]) -> Result<i64, String> {
        Ok(0)
    }
    async fn ping(&self, _: Duration) -> bool {
        self.probed_at
            .lock()
            .unwrap()
            .push(tokio::time::Instant::now());
        self.pings.lock().unwrap().pop_front().unwrap_or(true)
    }
}

fn agent_probe(extra: &str) -> Probe {
    probe(&format!(
        "{{guestAgentPing: {{}}, initialDelaySeconds: 5, periodSeconds: 2{extra}}}"
    ))
    .unwrap()
}

#[tokio::test(start_paused = true)]
async fn readiness_reports_its_first_failure_and_each_flip_only() {
    let guest = Scripted::new(&[false, false, true, true, false, false, true]);
    let p = agent_probe(", failureThreshold: 2");
    let reports = std::sync::Mutex::new(Vec::new());
    let start = tokio::time::Instant::now();
    let run = run(&guest, &p, Role::Readiness, |ready, why| {
        reports.lock().unwrap().push((ready, why))
    });
    let _ = tokio::time::timeout(Duration::from_secs(20), run).await;
    let reports = reports.into_inner().unwrap();
    let why = "the guest agent does not answer".to_owned();
    assert_eq!(
        reports,
        [
            (false, why.clone()),
            (true, String::new()),
            (false, why),
            (true, String::new()),
        ]
    );
    let at: Vec<u64> = guest
        .probed_at
        .lock()
        .unwrap()
        .iter()
        .map(|t| (*t - start).as_secs())
        .collect();
    assert_eq!(
        at[..4],
        [5, 7, 9, 11],
        "after the initial delay, every period"
    );
}

#[tokio::test(start_paused = true)]
async fn liveness_ends_after_failure_threshold_and_waits_while_paused() {
    let guest = Scripted::new(&[true, false, false, false]);
    *guest.activity.lock().unwrap() = Activity::Waiting;
    let p = agent_probe("");
    let start = tokio::time::Instant::now();
    let run = run(&guest, &p, Role::Liveness, |_, _| {
        panic!("liveness reports nothing")
    });
    let unpause = async {
        tokio::time::sleep(Duration::from_secs(10)).await;
        *guest.activity.lock().unwrap() = Activity::Running;
        std::future::pending::<()>().await;
    };
    let why = tokio::select! {
        why = run => why,
        () = unpause => unreachable!(),
    };
    assert_eq!(
        why.as_deref(),
        Some("the liveness probe failed 3 times in a row: the guest agent does not answer")
    );
    let first = guest.probed_at.lock().unwrap()[0];
    assert_eq!((first - start).as_secs(), 11, "no probe while paused");
    assert_eq!(
        start.elapsed().as_secs(),
        17,
        "four probes, one period apart"
    );
}
