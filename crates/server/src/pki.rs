//! The cluster's PKI in `DIR/tls`: one CA, the serving certificate, the admin client
//! certificate and the front-proxy client certificate. ECDSA P-256 keys, PEM files, keys
//! mode 0600.
//!
//! The front-proxy certificate (`front-proxy-client.crt`, CN `front-proxy-client`, client
//! auth only) is what the API server presents to aggregated servers and webhooks, as
//! Kubernetes' requestheader authentication expects; they verify it against `ca.crt`.
//! The same CA signs user certificates (`admin`), so they must also accept only the name
//! `front-proxy-client` (`--requestheader-allowed-names`), or any user could assert
//! another's identity in `X-Remote-User`. A separate front-proxy CA, as kubeadm makes,
//! would remove that condition; one CA keeps one file to distribute.
//!
//! At every start, step by step:
//! 1. The CA is the pair `ca.crt` + `ca.key`. Without `ca.crt` a new CA is made (a key
//!    left without its certificate by a crash is replaced); with it, its key must load
//!    and match, or the start fails: a CA is never replaced silently, since clients
//!    trust it.
//! 2. Each leaf (`server`, `admin`, `front-proxy-client`) is kept while it is signed by
//!    that CA, has its key, carries the subject, names and use wanted now (a new
//!    `--advertise-host`, a renamed host), and is valid for [`RENEW_BEFORE`] more;
//!    otherwise it is issued again.
//! 3. Keys are renamed into place before their certificates, so a crash between the two
//!    leaves a certificate missing, which step 1 or 2 repairs.
//!
//! Does not own: serving TLS (see `serve`), or who a certificate makes a user (`auth`).

use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;
use std::path::{Path, PathBuf};

use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    Issuer, KeyPair, KeyUsagePurpose, PublicKeyData, SanType,
};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use time::{Duration, OffsetDateTime};
use x509_parser::certificate::X509Certificate;
use x509_parser::extensions::GeneralName;

use crate::files::{self, FileError};

pub const CA_VALIDITY: Duration = Duration::days(3650);
pub const LEAF_VALIDITY: Duration = Duration::days(365);
/// A leaf expiring sooner than this is issued again at start.
pub const RENEW_BEFORE: Duration = Duration::days(30);
/// Certificates start a little in the past, for clients whose clocks lag.
const BACKDATE: Duration = Duration::hours(1);

const CA_NAME: &str = "kubevirt-rs-ca";
const SERVER_NAME: &str = "kubevirt-rs";
pub const ADMIN_USER: &str = "admin";
pub const ADMIN_GROUP: &str = "system:masters";
/// The Common Name of the certificate the API server presents to aggregated servers.
pub const FRONT_PROXY_USER: &str = "front-proxy-client";

#[derive(Debug, thiserror::Error)]
pub enum PkiError {
    #[error("{} is not a PEM certificate", path.display())]
    BadCertificate { path: PathBuf },
    #[error("{} is not a PEM private key", path.display())]
    BadKey {
        path: PathBuf,
        #[source]
        source: rcgen::Error,
    },
    #[error("{} does not belong to {}; remove both to make a new CA", key.display(), cert.display())]
    KeyMismatch { cert: PathBuf, key: PathBuf },
    #[error("issuing the {what} certificate")]
    Issue {
        what: &'static str,
        #[source]
        source: rcgen::Error,
    },
    #[error(transparent)]
    File(#[from] FileError),
}

/// The names the serving certificate carries: loopback and `localhost` always, plus the
/// host's name, the listen address and the advertised host.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ServerNames {
    pub dns: BTreeSet<String>,
    pub ips: BTreeSet<IpAddr>,
}

impl ServerNames {
    pub fn local() -> Self {
        let mut names = Self::default();
        for host in ["localhost", "127.0.0.1", "::1"] {
            names.add(host);
        }
        names
    }

    /// Adds `host`, an IP address or a DNS name.
    pub fn add(&mut self, host: &str) {
        let host = host.trim_start_matches('[').trim_end_matches(']');
        match host.parse::<IpAddr>() {
            Ok(ip) => {
                self.ips.insert(ip);
            }
            Err(_) if !host.is_empty() => {
                self.dns.insert(host.to_ascii_lowercase());
            }
            Err(_) => {}
        }
    }

    fn sans(&self) -> Vec<SanType> {
        let dns = self.dns.iter().filter_map(|d| {
            // A host name that is not a valid IA5 string cannot be a SAN; it is skipped
            // rather than failing the start.
            d.clone().try_into().ok().map(SanType::DnsName)
        });
        dns.chain(self.ips.iter().map(|ip| SanType::IpAddress(*ip)))
            .collect()
    }
}

/// The certificates and keys the server and its kubeconfig use.
#[derive(Debug)]
pub struct Pki {
    pub ca_pem: String,
    pub ca: CertificateDer<'static>,
    pub server_cert: CertificateDer<'static>,
    pub server_key: PrivateKeyDer<'static>,
    pub admin_cert_pem: String,
    pub admin_key_pem: String,
    pub front_proxy_cert_pem: String,
    pub front_proxy_key_pem: String,
    /// virt-api's serving certificate and key (PEM), for its Service's names.
    pub virt_api_serving: (String, String),
    /// The in-process components' client certificates and keys (PEM), by stem (see
    /// [`COMPONENTS`]).
    pub components: BTreeMap<&'static str, (String, String)>,
    /// What this start issued, in the order `"ca"`, `"server"`, `"admin"`,
    /// `"front-proxy-client"`, `"virt-api-serving"`, then the components.
    pub issued: Vec<&'static str>,
}

/// The names virt-api's serving certificate carries (its Service's), first the CN.
pub const VIRT_API_NAMES: [&str; 3] = [
    "virt-api.kubevirt.svc",
    "virt-api.kubevirt.svc.cluster.local",
    "virt-api.kubevirt",
];

/// The components `kubevirt-rs server` runs in-process, each with its own identity so the
/// API server (and virt-api's status rules) can tell them apart: file stem, user name,
/// groups. The names are upstream's service accounts; the pod runner is a node.
pub const COMPONENTS: [(&str, &str, &[&str]); 4] = [
    (
        "virt-controller",
        "system:serviceaccount:kubevirt:kubevirt-controller",
        &["system:serviceaccounts:kubevirt"],
    ),
    (
        "virt-handler",
        "system:serviceaccount:kubevirt:kubevirt-handler",
        &["system:serviceaccounts:kubevirt"],
    ),
    (
        "virt-api",
        "system:serviceaccount:kubevirt:kubevirt-apiserver",
        &["system:serviceaccounts:kubevirt"],
    ),
    ("pod-runner", "system:node:kubevirt-rs", &["system:nodes"]),
];

/// One leaf certificate: its files' stem, subject and use.
struct Leaf<'a> {
    stem: &'static str,
    common_name: &'static str,
    organizations: &'static [&'static str],
    names: Option<&'a ServerNames>,
    usage: ExtendedKeyUsagePurpose,
}

/// A certificate (PEM and DER) with its key.
struct Pair {
    cert_pem: String,
    cert_der: Vec<u8>,
    key: KeyPair,
}

/// Loads the PKI in `dir`, creating or renewing what is missing, stale or foreign, as of
/// `now`.
pub fn ensure(dir: &Path, names: &ServerNames, now: OffsetDateTime) -> Result<Pki, PkiError> {
    files::create_private_dir(dir)?;
    let mut issued = Vec::new();
    let ca = match load_pair(dir, "ca")? {
        Some(ca) => ca,
        None => {
            issued.push("ca");
            new_ca(dir, now)?
        }
    };
    let bad_ca = || PkiError::BadCertificate {
        path: dir.join("ca.crt"),
    };
    let ca_x509 = parse(&ca.cert_der).ok_or_else(bad_ca)?;
    let issuer =
        Issuer::from_ca_cert_der(&ca.cert_der.clone().into(), &ca.key).map_err(|_| bad_ca())?;
    let server = Leaf {
        stem: "server",
        common_name: SERVER_NAME,
        organizations: &[],
        names: Some(names),
        usage: ExtendedKeyUsagePurpose::ServerAuth,
    };
    let admin = Leaf {
        stem: "admin",
        common_name: ADMIN_USER,
        organizations: &[ADMIN_GROUP],
        names: None,
        usage: ExtendedKeyUsagePurpose::ClientAuth,
    };
    let front_proxy = Leaf {
        stem: "front-proxy-client",
        common_name: FRONT_PROXY_USER,
        organizations: &[],
        names: None,
        usage: ExtendedKeyUsagePurpose::ClientAuth,
    };
    let mut leaf = |spec: &Leaf<'_>| -> Result<Pair, PkiError> {
        if let Some(pair) = load_leaf(dir, spec.stem)?
            && is_current(&pair, spec, &ca_x509, now)
        {
            return Ok(pair);
        }
        issued.push(spec.stem);
        issue(dir, spec, &issuer, now)
    };
    let server = leaf(&server)?;
    let admin = leaf(&admin)?;
    let front_proxy = leaf(&front_proxy)?;
    // virt-api serves the aggregated API and the webhooks behind the Service
    // `kubevirt/virt-api`, which the API server verifies by its service names.
    let mut service_names = ServerNames::local();
    for name in VIRT_API_NAMES {
        service_names.add(name);
    }
    let virt_api_serving = leaf(&Leaf {
        stem: "virt-api-serving",
        common_name: VIRT_API_NAMES[0],
        organizations: &[],
        names: Some(&service_names),
        usage: ExtendedKeyUsagePurpose::ServerAuth,
    })?;
    let mut components = BTreeMap::new();
    for (stem, common_name, organizations) in COMPONENTS {
        let pair = leaf(&Leaf {
            stem,
            common_name,
            organizations,
            names: None,
            usage: ExtendedKeyUsagePurpose::ClientAuth,
        })?;
        components.insert(stem, (pair.cert_pem, pair.key.serialize_pem()));
    }
    Ok(Pki {
        ca_pem: ca.cert_pem,
        ca: ca.cert_der.into(),
        server_cert: server.cert_der.into(),
        server_key: PrivatePkcs8KeyDer::from(server.key.serialize_der()).into(),
        admin_cert_pem: admin.cert_pem,
        admin_key_pem: admin.key.serialize_pem(),
        front_proxy_cert_pem: front_proxy.cert_pem,
        front_proxy_key_pem: front_proxy.key.serialize_pem(),
        virt_api_serving: (
            virt_api_serving.cert_pem,
            virt_api_serving.key.serialize_pem(),
        ),
        components,
        issued,
    })
}

/// The certificate `STEM.crt` and its key `STEM.key`; `None` when there is no certificate.
fn load_pair(dir: &Path, stem: &str) -> Result<Option<Pair>, PkiError> {
    let cert_path = dir.join(format!("{stem}.crt"));
    let key_path = dir.join(format!("{stem}.key"));
    let Some(cert_pem) = files::read_if_exists(&cert_path)? else {
        return Ok(None);
    };
    let bad_cert = || PkiError::BadCertificate {
        path: cert_path.clone(),
    };
    let cert_pem = String::from_utf8(cert_pem).map_err(|_| bad_cert())?;
    let cert_der = pem_der(&cert_pem).ok_or_else(bad_cert)?;
    let key_pem = files::read_if_exists(&key_path)?.unwrap_or_default();
    let key = KeyPair::from_pem(&String::from_utf8_lossy(&key_pem)).map_err(|source| {
        PkiError::BadKey {
            path: key_path.clone(),
            source,
        }
    })?;
    let pair = Pair {
        cert_pem,
        cert_der,
        key,
    };
    match parse(&pair.cert_der) {
        Some(cert) if key_matches(&cert, &pair.key) => Ok(Some(pair)),
        Some(_) => Err(PkiError::KeyMismatch {
            cert: cert_path,
            key: key_path,
        }),
        None => Err(bad_cert()),
    }
}

/// A leaf's certificate and key; `None` when either is missing or unreadable, since a
/// leaf can always be issued again.
fn load_leaf(dir: &Path, stem: &str) -> Result<Option<Pair>, PkiError> {
    match load_pair(dir, stem) {
        Ok(pair) => Ok(pair),
        Err(PkiError::File(e)) => Err(PkiError::File(e)),
        Err(e) => {
            tracing::warn!(error = %e, "replacing an unusable certificate");
            Ok(None)
        }
    }
}

fn is_current(pair: &Pair, spec: &Leaf<'_>, ca: &X509Certificate<'_>, now: OffsetDateTime) -> bool {
    let Some(cert) = parse(&pair.cert_der) else {
        return false;
    };
    let signed_by_ca = cert.issuer().as_raw() == ca.subject().as_raw()
        && cert.verify_signature(Some(ca.public_key())).is_ok();
    let lasts = cert.validity().not_after.timestamp() > (now + RENEW_BEFORE).unix_timestamp();
    let subject = subject_of(&cert);
    let same_subject = subject.common_name.as_deref() == Some(spec.common_name)
        && subject.organizations == spec.organizations;
    let names_covered = spec
        .names
        .is_none_or(|wanted| names_in(&cert).is_some_and(|have| covers(&have, wanted)));
    let same_use = usage_of(&cert) == Some(Usage::of(&spec.usage));
    signed_by_ca && lasts && same_subject && names_covered && same_use
}

/// The extended key usages our leaves carry.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Usage {
    server_auth: bool,
    client_auth: bool,
}

impl Usage {
    fn of(purpose: &ExtendedKeyUsagePurpose) -> Self {
        Self {
            server_auth: *purpose == ExtendedKeyUsagePurpose::ServerAuth,
            client_auth: *purpose == ExtendedKeyUsagePurpose::ClientAuth,
        }
    }
}

/// A certificate's extended key usage; `None` without the extension.
fn usage_of(cert: &X509Certificate<'_>) -> Option<Usage> {
    let eku = cert.extended_key_usage().ok()??.value;
    Some(Usage {
        server_auth: eku.server_auth,
        client_auth: eku.client_auth,
    })
}

/// Credentials for live migration's streams: a CA of their own (so a migration
/// certificate opens nothing else, and no other certificate opens a migration), and one
/// certificate it signs for [`launcher_proto::MIGRATION_TLS_NAME`], usable by both ends.
/// Made anew at each start and kept in memory: the handlers hand them to the launchers
/// of each migration.
pub fn migration_tls(now: OffsetDateTime) -> Result<launcher_proto::MigrationTls, PkiError> {
    let fail = |source| PkiError::Issue {
        what: "migration",
        source,
    };
    let ca_key = KeyPair::generate().map_err(fail)?;
    let ca = ca_params("kubevirt-rs-migration-ca", now, LEAF_VALIDITY);
    let ca_cert = ca.self_signed(&ca_key).map_err(fail)?;
    let issuer = Issuer::from_params(&ca, &ca_key);
    let key = KeyPair::generate().map_err(fail)?;
    let mut leaf = CertificateParams::new(vec![launcher_proto::MIGRATION_TLS_NAME.to_owned()])
        .map_err(fail)?;
    leaf.distinguished_name = distinguished_name(launcher_proto::MIGRATION_TLS_NAME, &[]);
    leaf.is_ca = IsCa::ExplicitNoCa;
    // What QEMU's x509 credentials require of a certificate used at both ends.
    leaf.key_usages = vec![
        KeyUsagePurpose::DigitalSignature,
        KeyUsagePurpose::KeyEncipherment,
    ];
    leaf.extended_key_usages = vec![
        ExtendedKeyUsagePurpose::ServerAuth,
        ExtendedKeyUsagePurpose::ClientAuth,
    ];
    leaf.not_before = now - BACKDATE;
    leaf.not_after = now + LEAF_VALIDITY;
    let cert = leaf.signed_by(&key, &issuer).map_err(fail)?;
    Ok(launcher_proto::MigrationTls {
        ca_pem: ca_cert.pem(),
        cert_pem: cert.pem(),
        key_pem: key.serialize_pem(),
    })
}

/// A certificate authority's parameters: `name`, valid for `validity` from now.
fn ca_params(name: &str, now: OffsetDateTime, validity: Duration) -> CertificateParams {
    let mut params = CertificateParams::default();
    params.distinguished_name = distinguished_name(name, &[]);
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    params.not_before = now - BACKDATE;
    params.not_after = now + validity;
    params
}

fn covers(have: &ServerNames, wanted: &ServerNames) -> bool {
    wanted.dns.is_subset(&have.dns) && wanted.ips.is_subset(&have.ips)
}

fn new_ca(dir: &Path, now: OffsetDateTime) -> Result<Pair, PkiError> {
    let fail = |source| PkiError::Issue { what: "ca", source };
    let key = KeyPair::generate().map_err(fail)?;
    let cert = ca_params(CA_NAME, now, CA_VALIDITY)
        .self_signed(&key)
        .map_err(fail)?;
    store(dir, "ca", cert.pem(), cert.der().to_vec(), key)
}

fn issue(
    dir: &Path,
    spec: &Leaf<'_>,
    issuer: &Issuer<'_, &KeyPair>,
    now: OffsetDateTime,
) -> Result<Pair, PkiError> {
    let fail = |source| PkiError::Issue {
        what: spec.stem,
        source,
    };
    let key = KeyPair::generate().map_err(fail)?;
    let mut params = CertificateParams::default();
    params.distinguished_name = distinguished_name(spec.common_name, spec.organizations);
    params.subject_alt_names = spec.names.map(ServerNames::sans).unwrap_or_default();
    params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    params.extended_key_usages = vec![spec.usage.clone()];
    params.use_authority_key_identifier_extension = true;
    params.not_before = now - BACKDATE;
    params.not_after = now + LEAF_VALIDITY;
    let cert = params.signed_by(&key, issuer).map_err(fail)?;
    store(dir, spec.stem, cert.pem(), cert.der().to_vec(), key)
}

fn store(
    dir: &Path,
    stem: &str,
    cert_pem: String,
    cert_der: Vec<u8>,
    key: KeyPair,
) -> Result<Pair, PkiError> {
    let key_pem = key.serialize_pem();
    files::write_atomic(
        &dir.join(format!("{stem}.key")),
        key_pem.as_bytes(),
        files::PRIVATE,
    )?;
    files::write_atomic(
        &dir.join(format!("{stem}.crt")),
        cert_pem.as_bytes(),
        files::PUBLIC,
    )?;
    Ok(Pair {
        cert_pem,
        cert_der,
        key,
    })
}

fn distinguished_name(common_name: &str, organizations: &[&str]) -> DistinguishedName {
    let mut name = DistinguishedName::new();
    for o in organizations {
        name.push(DnType::OrganizationName, *o);
    }
    name.push(DnType::CommonName, common_name);
    name
}

fn pem_der(pem: &str) -> Option<Vec<u8>> {
    let (_, pem) = x509_parser::pem::parse_x509_pem(pem.as_bytes()).ok()?;
    (pem.label == "CERTIFICATE").then_some(pem.contents)
}

fn parse(der: &[u8]) -> Option<X509Certificate<'_>> {
    x509_parser::parse_x509_certificate(der)
        .ok()
        .map(|(_, cert)| cert)
}

fn key_matches(cert: &X509Certificate<'_>, key: &KeyPair) -> bool {
    cert.public_key().subject_public_key.data.as_ref() == key.der_bytes()
}

/// A certificate's subject as authentication reads it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Subject {
    pub common_name: Option<String>,
    pub organizations: Vec<String>,
}

/// The subject of a DER certificate; `None` if it does not parse.
pub fn subject(der: &[u8]) -> Option<Subject> {
    parse(der).map(|cert| subject_of(&cert))
}

fn subject_of(cert: &X509Certificate<'_>) -> Subject {
    let name = cert.subject();
    let text =
        |a: &x509_parser::x509::AttributeTypeAndValue<'_>| a.as_str().ok().map(str::to_owned);
    Subject {
        common_name: name.iter_common_name().find_map(text),
        organizations: name.iter_organization().filter_map(text).collect(),
    }
}

fn names_in(cert: &X509Certificate<'_>) -> Option<ServerNames> {
    let san = cert.subject_alternative_name().ok()??;
    let mut names = ServerNames::default();
    for name in &san.value.general_names {
        match *name {
            GeneralName::DNSName(d) => {
                names.dns.insert(d.to_ascii_lowercase());
            }
            GeneralName::IPAddress(bytes) => {
                if let Ok(v4) = <[u8; 4]>::try_from(bytes) {
                    names.ips.insert(IpAddr::from(v4));
                } else if let Ok(v6) = <[u8; 16]>::try_from(bytes) {
                    names.ips.insert(IpAddr::from(v6));
                }
            }
            _ => {}
        }
    }
    Some(names)
}

#[cfg(test)]
mod tests;
