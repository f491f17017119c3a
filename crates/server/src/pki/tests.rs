use std::os::unix::fs::PermissionsExt;
use std::sync::Arc;

use super::*;

fn now() -> OffsetDateTime {
    OffsetDateTime::from_unix_timestamp(1_750_000_000).unwrap()
}

fn names() -> ServerNames {
    let mut names = ServerNames::local();
    names.add("node-1");
    names
}

fn contents(dir: &Path) -> Vec<(String, Vec<u8>)> {
    let mut files: Vec<_> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| {
            let e = e.unwrap();
            (
                e.file_name().into_string().unwrap(),
                std::fs::read(e.path()).unwrap(),
            )
        })
        .collect();
    files.sort();
    files
}

fn file(dir: &Path, name: &str) -> Vec<u8> {
    std::fs::read(dir.join(name)).unwrap()
}

/// What a first start issues, in order.
const EVERYTHING: [&str; 9] = [
    "ca",
    "server",
    "admin",
    "front-proxy-client",
    "virt-api-serving",
    "virt-controller",
    "virt-handler",
    "virt-api",
    "pod-runner",
];

#[test]
fn first_start_makes_a_ca_and_three_leaves_with_private_keys() {
    let dir = tempfile::tempdir().unwrap();
    let tls = dir.path().join("tls");
    let pki = ensure(&tls, &names(), now()).unwrap();
    assert_eq!(pki.issued, EVERYTHING);
    for (name, mode) in [
        ("ca.key", 0o600),
        ("server.key", 0o600),
        ("admin.key", 0o600),
        ("front-proxy-client.key", 0o600),
        ("ca.crt", 0o644),
        ("server.crt", 0o644),
        ("admin.crt", 0o644),
        ("front-proxy-client.crt", 0o644),
    ] {
        let meta = std::fs::metadata(tls.join(name)).unwrap();
        assert_eq!(meta.permissions().mode() & 0o777, mode, "{name}");
    }
    assert_eq!(
        subject(&pem_der(&pki.admin_cert_pem).unwrap()),
        Some(Subject {
            common_name: Some("admin".into()),
            organizations: vec!["system:masters".into()],
        })
    );
    let server = parse(&pki.server_cert).unwrap().to_owned();
    assert_eq!(names_in(&server), Some(names()));
    assert_eq!(
        usage_of(&server),
        Some(Usage {
            server_auth: true,
            client_auth: false
        })
    );
}

/// What an aggregated server does with the certificate the proxy presents: verify it as a
/// client certificate against `ca.crt`.
fn verify_as_client(
    ca_pem: &[u8],
    cert_der: &[u8],
    at: OffsetDateTime,
) -> Result<(), rustls::Error> {
    let mut roots = rustls::RootCertStore::empty();
    roots.add(
        pem_der(std::str::from_utf8(ca_pem).unwrap())
            .unwrap()
            .into(),
    )?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let verifier =
        rustls::server::WebPkiClientVerifier::builder_with_provider(roots.into(), provider)
            .build()
            .unwrap();
    let at = rustls::pki_types::UnixTime::since_unix_epoch(std::time::Duration::from_secs(
        at.unix_timestamp().try_into().unwrap(),
    ));
    verifier
        .verify_client_cert(&CertificateDer::from(cert_der), &[], at)
        .map(|_| ())
}

#[test]
fn the_front_proxy_certificate_is_a_client_certificate_from_the_ca() {
    let dir = tempfile::tempdir().unwrap();
    let pki = ensure(dir.path(), &names(), now()).unwrap();
    let der = pem_der(&pki.front_proxy_cert_pem).unwrap();
    assert_eq!(
        file(dir.path(), "front-proxy-client.crt"),
        pki.front_proxy_cert_pem.as_bytes()
    );
    assert_eq!(
        subject(&der),
        Some(Subject {
            common_name: Some("front-proxy-client".into()),
            organizations: vec![],
        })
    );
    let cert = parse(&der).unwrap();
    assert_eq!(
        usage_of(&cert),
        Some(Usage {
            server_auth: false,
            client_auth: true
        })
    );
    let key = KeyPair::from_pem(&pki.front_proxy_key_pem).unwrap();
    assert!(
        key_matches(&cert, &key),
        "the key belongs to the certificate"
    );
    verify_as_client(&file(dir.path(), "ca.crt"), &der, now()).unwrap();

    let other = tempfile::tempdir().unwrap();
    ensure(other.path(), &names(), now()).unwrap();
    let err = verify_as_client(&file(other.path(), "ca.crt"), &der, now()).unwrap_err();
    assert!(
        matches!(err, rustls::Error::InvalidCertificate(_)),
        "another CA refuses it: {err}"
    );
}

#[test]
fn a_leaf_with_the_wrong_use_is_reissued() {
    let dir = tempfile::tempdir().unwrap();
    ensure(dir.path(), &names(), now()).unwrap();
    // The front-proxy subject from our CA, but for serving.
    let ca = load_pair(dir.path(), "ca").unwrap().unwrap();
    let issuer = Issuer::from_ca_cert_der(&ca.cert_der.clone().into(), &ca.key).unwrap();
    let serving = Leaf {
        stem: "front-proxy-client",
        common_name: FRONT_PROXY_USER,
        organizations: &[],
        names: None,
        usage: ExtendedKeyUsagePurpose::ServerAuth,
    };
    issue(dir.path(), &serving, &issuer, now()).unwrap();
    let pki = ensure(dir.path(), &names(), now()).unwrap();
    assert_eq!(pki.issued, ["front-proxy-client"]);
    let cert = pem_der(&pki.front_proxy_cert_pem).unwrap();
    assert_eq!(
        usage_of(&parse(&cert).unwrap()),
        Some(Usage {
            server_auth: false,
            client_auth: true
        })
    );
}

#[test]
fn later_starts_reuse_everything() {
    let dir = tempfile::tempdir().unwrap();
    let first = ensure(dir.path(), &names(), now()).unwrap();
    let before = contents(dir.path());
    let again = ensure(dir.path(), &names(), now() + Duration::days(100)).unwrap();
    assert!(again.issued.is_empty(), "issued {:?}", again.issued);
    assert_eq!(contents(dir.path()), before);
    assert_eq!(again.ca_pem, first.ca_pem);
    assert_eq!(again.admin_key_pem, first.admin_key_pem);
    assert_eq!(again.front_proxy_key_pem, first.front_proxy_key_pem);
}

#[test]
fn a_new_name_reissues_the_server_certificate_only() {
    let dir = tempfile::tempdir().unwrap();
    ensure(dir.path(), &names(), now()).unwrap();
    let (ca, admin) = (file(dir.path(), "ca.crt"), file(dir.path(), "admin.crt"));
    let mut more = names();
    more.add("vms.example.org");
    more.add("[2001:db8::1]");
    let pki = ensure(dir.path(), &more, now()).unwrap();
    assert_eq!(pki.issued, ["server"]);
    assert_eq!(names_in(&parse(&pki.server_cert).unwrap()), Some(more));
    assert_eq!(file(dir.path(), "ca.crt"), ca);
    assert_eq!(file(dir.path(), "admin.crt"), admin);
}

#[test]
fn leaves_close_to_expiry_are_renewed_and_the_ca_kept() {
    let dir = tempfile::tempdir().unwrap();
    ensure(dir.path(), &names(), now()).unwrap();
    let ca = file(dir.path(), "ca.crt");
    let later = now() + LEAF_VALIDITY - RENEW_BEFORE + Duration::days(1);
    let pki = ensure(dir.path(), &names(), later).unwrap();
    assert_eq!(
        pki.issued,
        [
            "server",
            "admin",
            "front-proxy-client",
            "virt-api-serving",
            "virt-controller",
            "virt-handler",
            "virt-api",
            "pod-runner"
        ]
    );
    assert_eq!(file(dir.path(), "ca.crt"), ca);
    let server = parse(&pki.server_cert).unwrap().to_owned();
    assert!(server.validity().not_after.timestamp() > (later + RENEW_BEFORE).unix_timestamp());
}

#[test]
fn a_new_ca_reissues_the_leaves_it_did_not_sign() {
    let dir = tempfile::tempdir().unwrap();
    ensure(dir.path(), &names(), now()).unwrap();
    std::fs::remove_file(dir.path().join("ca.crt")).unwrap();
    let pki = ensure(dir.path(), &names(), now()).unwrap();
    assert_eq!(pki.issued, EVERYTHING);
    let front_proxy = pem_der(&pki.front_proxy_cert_pem).unwrap();
    verify_as_client(pki.ca_pem.as_bytes(), &front_proxy, now()).unwrap();
}

#[test]
fn a_lost_leaf_key_is_replaced() {
    let dir = tempfile::tempdir().unwrap();
    ensure(dir.path(), &names(), now()).unwrap();
    std::fs::remove_file(dir.path().join("admin.key")).unwrap();
    let pki = ensure(dir.path(), &names(), now()).unwrap();
    assert_eq!(pki.issued, ["admin"]);
}

#[test]
fn a_ca_whose_key_is_lost_or_foreign_stops_the_start() {
    let dir = tempfile::tempdir().unwrap();
    ensure(dir.path(), &names(), now()).unwrap();
    std::fs::copy(dir.path().join("admin.key"), dir.path().join("ca.key")).unwrap();
    let err = ensure(dir.path(), &names(), now()).unwrap_err();
    assert!(
        matches!(err, PkiError::KeyMismatch { .. }),
        "unexpected error: {err}"
    );
    std::fs::remove_file(dir.path().join("ca.key")).unwrap();
    let err = ensure(dir.path(), &names(), now()).unwrap_err();
    assert!(matches!(err, PkiError::BadKey { .. }), "unexpected: {err}");
}

#[test]
fn names_parse_ips_with_or_without_brackets_and_lowercase_dns() {
    let mut names = ServerNames::default();
    for host in ["Node-1.Example", "10.0.0.5", "[fd00::5]", ""] {
        names.add(host);
    }
    assert_eq!(names.dns, BTreeSet::from(["node-1.example".to_owned()]));
    assert_eq!(
        names.ips,
        BTreeSet::from(["10.0.0.5".parse().unwrap(), "fd00::5".parse().unwrap()])
    );
}
