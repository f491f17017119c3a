//! Leader election: a passive instance leaves everything alone while another holds the
//! lease, and takes over when it expires.

use std::time::Duration;

use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::jiff::{SignedDuration, Timestamp};
use kube::api::{Api, PostParams};
use serde_json::json;

use crate::common::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_passive_instance_takes_over_an_expired_lease() {
    let c = Cluster::start().await;
    let leases: Api<Lease> = Api::namespaced(c.client.clone(), "kubevirt");
    let now = Timestamp::now();
    let held: Lease = serde_json::from_value(json!({
        "metadata": {"name": "virt-controller", "namespace": "kubevirt"},
        "spec": {"holderIdentity": "other", "leaseDurationSeconds": 15,
            "acquireTime": now, "renewTime": now, "leaseTransitions": 0}}))
    .unwrap();
    leases.create(&PostParams::default(), &held).await.unwrap();

    let _controller = c.controller("standby");
    let created = c
        .vmis()
        .create(&PostParams::default(), &vmi("waiting"))
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let untouched = c.vmis().get("waiting").await.unwrap();
    assert_eq!(
        untouched.metadata.resource_version,
        created.metadata.resource_version
    );
    assert!(
        c.pods_of(created.metadata.uid.as_deref().unwrap())
            .await
            .is_empty()
    );

    // "other" stopped renewing a minute ago.
    let stale = Timestamp::now() - SignedDuration::from_secs(60);
    let expire = json!({"spec": {"renewTime": stale}});
    patch(&leases, "virt-controller", &expire).await;
    vmi_until(&c, "waiting", "the new leader to act", |v| {
        phase(v).as_deref() == Some("Scheduling")
    })
    .await;
    let spec = leases.get("virt-controller").await.unwrap().spec.unwrap();
    assert_eq!(spec.holder_identity.as_deref(), Some("standby"));
    assert_eq!(spec.lease_transitions, Some(1));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_second_of_two_instances_stays_passive() {
    let c = Cluster::start().await;
    let leases: Api<Lease> = Api::namespaced(c.client.clone(), "kubevirt");
    let started = std::time::Instant::now();
    let _first = c.controller("first");
    until("the first to lead", || async {
        let spec = leases.get_opt("virt-controller").await.unwrap()?.spec?;
        (spec.holder_identity.as_deref() == Some("first")).then_some(())
    })
    .await;
    eprintln!("a single instance led after {:?}", started.elapsed());
    let _second = c.controller("second");
    c.vmis()
        .create(&PostParams::default(), &vmi("one"))
        .await
        .unwrap();
    vmi_until(&c, "one", "Scheduling", |v| {
        phase(v).as_deref() == Some("Scheduling")
    })
    .await;
    // Past the second's first retry: the lease is still the first's, and one pod exists.
    tokio::time::sleep(Duration::from_millis(2200)).await;
    let spec = leases.get("virt-controller").await.unwrap().spec.unwrap();
    assert_eq!(spec.holder_identity.as_deref(), Some("first"));
    let uid = c.vmis().get("one").await.unwrap().metadata.uid.unwrap();
    assert_eq!(c.pods_of(&uid).await.len(), 1);
}
