//! The test cluster: the API server on plain HTTP (callers named by `x-test-user`),
//! virt-api over HTTPS registered through it, and a test CA. Also used by virtctl's
//! tests (included by path), so both test the same setup.

#![allow(dead_code)]

use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
};
use std::net::SocketAddr;
use std::sync::Arc;

use api::v1::{VirtualMachine, VirtualMachineInstance};
use axum::extract::Request;
use axum::middleware::Next;
use axum::response::Response;
use kube::Api;
use kube::api::{Patch, PatchParams, PostParams};
use serde_json::{Value, json};

/// The API server (plain HTTP, callers named by `x-test-user`), with virt-api served
/// over HTTPS and registered.
pub struct Cluster {
    /// A cluster admin (`system:unsecured`).
    pub client: kube::Client,
    /// `kubevirt-controller`, whose VMI status writes stand.
    pub controller: kube::Client,
    pub addr: SocketAddr,
    pub pki: Pki,
    pub virt_api_port: u16,
}

async fn as_test_user(mut req: Request, next: Next) -> Response {
    if let Some(user) = req
        .headers()
        .get("x-test-user")
        .and_then(|v| v.to_str().ok())
    {
        // Allowed everything (RBAC is the API server's business, tested there): these
        // tests are about who virt-api's webhooks take a write for.
        let user = apiserver::User {
            name: user.to_owned(),
            groups: vec!["system:masters".into(), "system:authenticated".into()],
        };
        req.extensions_mut().insert(user);
    }
    next.run(req).await
}

pub fn client(addr: SocketAddr, user: Option<&str>) -> kube::Client {
    let mut config = kube::Config::new(format!("http://{addr}").parse().unwrap());
    config.default_retry = false;
    if let Some(user) = user {
        config
            .headers
            .push(("x-test-user".parse().unwrap(), user.parse().unwrap()));
    }
    kube::Client::try_from(config).unwrap()
}

pub async fn start() -> Cluster {
    let pki = Pki::generate();
    let mut state = apiserver::AppState::start(Arc::new(store::MemStore::new()))
        .await
        .unwrap();
    let (cert_pem, key_pem) = pki.front_proxy.clone();
    state.proxy_identity = Some(Arc::new(apiserver::ProxyIdentity { cert_pem, key_pem }));
    let app = apiserver::router(state).layer(axum::middleware::from_fn(as_test_user));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await });
    let admin = client(addr, None);

    let (handler_cert, handler_key) = pki.virt_api_client.clone();
    let config = virt_api::Config {
        handler_ca_pem: pki.ca_pem.clone(),
        handler_client_cert_pem: handler_cert,
        handler_client_key_pem: handler_key,
        ..Default::default()
    };
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let virt_api_port = listener.local_addr().unwrap().port();
    let (cert_pem, key_pem) = pki.virt_api_server.clone();
    let tls = virt_api::ServerTls {
        cert_pem,
        key_pem,
        client_ca_pem: pki.ca_pem.clone(),
    };
    let router = virt_api::router(admin.clone(), config);
    tokio::spawn(virt_api::serve(listener, tls, router));
    virt_api::register(
        admin.clone(),
        virt_api::Registration {
            namespace: "kubevirt".into(),
            service_ip: "127.0.0.1".into(),
            port: virt_api_port,
            ca_bundle_pem: pki.ca_pem.clone(),
        },
    )
    .await
    .unwrap();
    Cluster {
        controller: client(addr, Some(virt_api::KUBEVIRT_USERS[0])),
        client: admin,
        addr,
        pki,
        virt_api_port,
    }
}

pub const SUB: &str = "/apis/subresources.kubevirt.io/v1/namespaces/default";

impl Cluster {
    pub fn vms(&self) -> Api<VirtualMachine> {
        Api::namespaced(self.client.clone(), "default")
    }

    pub fn vmis(&self) -> Api<VirtualMachineInstance> {
        Api::namespaced(self.client.clone(), "default")
    }

    /// `PUT` of a subresource through the API server's aggregation, with a kube client.
    pub async fn put(&self, path: &str, body: Value) -> Result<String, kube::Error> {
        let req = http::Request::put(format!("{SUB}/{path}"))
            .header("content-type", "application/json")
            .body(body.to_string().into_bytes())
            .unwrap();
        self.client.request_text(req).await
    }

    pub async fn get(&self, path: &str) -> Result<String, kube::Error> {
        let req = http::Request::get(format!("{SUB}/{path}"))
            .body(Vec::new())
            .unwrap();
        self.client.request_text(req).await
    }

    pub async fn create_vm(&self, name: &str, spec: Value) -> VirtualMachine {
        let mut spec = spec;
        spec["template"] =
            json!({"spec": {"domain": {"devices": {}, "memory": {"guest": "64Mi"}}}});
        let vm: VirtualMachine = serde_json::from_value(json!({
            "apiVersion": "kubevirt.io/v1", "kind": "VirtualMachine",
            "metadata": {"name": name}, "spec": spec,
        }))
        .unwrap();
        self.vms()
            .create(&PostParams::default(), &vm)
            .await
            .unwrap()
    }

    /// A VMI made `phase` on `node` by the controller.
    pub async fn create_vmi(&self, name: &str, phase: &str, node: &str) -> VirtualMachineInstance {
        self.create_vmi_with(name, json!({"phase": phase, "nodeName": node}))
            .await
    }

    /// A VMI whose status (as the controller would write it) is `status`.
    pub async fn create_vmi_with(&self, name: &str, status: Value) -> VirtualMachineInstance {
        let vmi: VirtualMachineInstance = serde_json::from_value(json!({
            "apiVersion": "kubevirt.io/v1", "kind": "VirtualMachineInstance",
            "metadata": {"name": name},
            "spec": {"domain": {"devices": {}, "memory": {"guest": "64Mi"}}},
        }))
        .unwrap();
        self.vmis()
            .create(&PostParams::default(), &vmi)
            .await
            .unwrap();
        let as_controller: Api<VirtualMachineInstance> =
            Api::namespaced(self.controller.clone(), "default");
        as_controller
            .patch(
                name,
                &PatchParams::default(),
                &Patch::Merge(json!({ "status": status })),
            )
            .await
            .unwrap()
    }
}

/// The code of an API error.
pub fn code(e: &kube::Error) -> u16 {
    match e {
        kube::Error::Api(s) => s.code,
        other => panic!("not an API error: {other}"),
    }
}

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
