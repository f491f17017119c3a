//! A test CA and the certificates signed by it.

use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
};

/// PEM pairs (certificate, key).
pub struct Pki {
    pub ca_pem: String,
    pub front_proxy: (String, String),
    pub virt_api_server: (String, String),
    pub virt_api_client: (String, String),
    pub handler: (String, String),
    /// A user certificate from the same CA: verified, but not the front proxy.
    pub user: (String, String),
}

impl Pki {
    pub fn generate() -> Self {
        let ca_key = KeyPair::generate().unwrap();
        let mut ca = CertificateParams::new(Vec::<String>::new()).unwrap();
        ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        ca.distinguished_name.push(DnType::CommonName, "test-ca");
        let ca_pem = ca.self_signed(&ca_key).unwrap().pem();
        let issuer = Issuer::new(ca, ca_key);
        let leaf = |cn: &str, sans: &[&str]| {
            let key = KeyPair::generate().unwrap();
            let mut params =
                CertificateParams::new(sans.iter().map(|s| (*s).to_owned()).collect::<Vec<_>>())
                    .unwrap();
            params.distinguished_name.push(DnType::CommonName, cn);
            params.extended_key_usages = vec![
                ExtendedKeyUsagePurpose::ServerAuth,
                ExtendedKeyUsagePurpose::ClientAuth,
            ];
            let cert = params.signed_by(&key, &issuer).unwrap();
            (cert.pem(), key.serialize_pem())
        };
        Self {
            front_proxy: leaf("front-proxy-client", &[]),
            virt_api_server: leaf("virt-api", &["virt-api.kubevirt.svc", "127.0.0.1"]),
            virt_api_client: leaf("system:serviceaccount:kubevirt:kubevirt-apiserver", &[]),
            handler: leaf("virt-handler", &["127.0.0.1"]),
            user: leaf("alice", &[]),
            ca_pem,
        }
    }
}
