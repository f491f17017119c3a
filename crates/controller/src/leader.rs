//! Leader election on the `coordination.k8s.io/v1` Lease `virt-controller`, as client-go's
//! leaderelection does it with a Lease lock.
//!
//! 1. Acquire: read the Lease (create it, held by us, when it is missing). Take it when it
//!    has no holder, is ours, or its `renewTime` is more than `leaseDurationSeconds` ago;
//!    the replace carries the read resourceVersion, so of two candidates one wins and the
//!    other gets a conflict. Otherwise try again after [`RETRY`].
//! 2. Hold: renew every [`RENEW`]. Another holder in the Lease means it was taken from us;
//!    failing to renew for [`RENEW_DEADLINE`] means we can no longer be sure it is ours.
//!    Either way the controllers stop (before the lease can expire for the others).
//!
//! Expiry is judged on `renewTime` against the local clock, so an instance restarted under
//! the same identity takes its lease back at once, and under a new one waits out at most
//! [`LEASE_DURATION`].

use std::time::Duration;

use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{MicroTime, ObjectMeta};
use k8s_openapi::jiff::{SignedDuration, Timestamp};
use kube::Client;
use kube::api::{Api, PostParams};
use tokio::time::Instant;
use tracing::{debug, warn};

use crate::error::{is_conflict, status_code};

/// The Lease's name (upstream's).
pub const LEASE_NAME: &str = "virt-controller";
/// How long a lease lasts without renewal.
pub const LEASE_DURATION: Duration = Duration::from_secs(15);
/// How often the holder renews.
pub const RENEW: Duration = Duration::from_secs(5);
/// How long the holder keeps going without a successful renewal.
pub const RENEW_DEADLINE: Duration = Duration::from_secs(10);
/// How often a candidate tries.
pub const RETRY: Duration = Duration::from_secs(2);

/// The Lease spec after `identity` takes or renews `current` at `now`, or `None` when
/// someone else holds it and it has not expired.
pub fn claim(current: Option<&LeaseSpec>, identity: &str, now: Timestamp) -> Option<LeaseSpec> {
    let duration = i32::try_from(LEASE_DURATION.as_secs()).unwrap_or(15);
    let stamp = Some(MicroTime(now));
    let Some(current) = current else {
        return Some(LeaseSpec {
            holder_identity: Some(identity.into()),
            lease_duration_seconds: Some(duration),
            acquire_time: stamp.clone(),
            renew_time: stamp,
            lease_transitions: Some(0),
            ..LeaseSpec::default()
        });
    };
    let holder = current.holder_identity.as_deref().unwrap_or_default();
    let mine = holder == identity;
    let expired = match &current.renew_time {
        Some(renewed) => {
            let lasts = SignedDuration::from_secs(i64::from(
                current.lease_duration_seconds.unwrap_or(duration),
            ));
            renewed.0.checked_add(lasts).is_ok_and(|end| end < now)
        }
        None => true,
    };
    if !(mine || holder.is_empty() || expired) {
        return None;
    }
    let mut next = current.clone();
    next.holder_identity = Some(identity.into());
    next.lease_duration_seconds = Some(duration);
    next.renew_time = stamp.clone();
    if !mine {
        next.acquire_time = stamp;
        next.lease_transitions = Some(current.lease_transitions.unwrap_or(0) + 1);
    }
    Some(next)
}

/// One candidate for the lease.
#[derive(Debug, Clone)]
pub struct Elector {
    api: Api<Lease>,
    identity: String,
}

impl Elector {
    pub fn new(client: Client, namespace: &str, identity: &str) -> Self {
        Self {
            api: Api::namespaced(client, namespace),
            identity: identity.to_owned(),
        }
    }

    /// Returns once this instance holds the lease.
    pub async fn acquire(&self) {
        loop {
            match self.try_claim().await {
                Ok(true) => return,
                Ok(false) => debug!(identity = %self.identity, "the lease is held elsewhere"),
                Err(error) => warn!(identity = %self.identity, %error, "claiming the lease failed"),
            }
            tokio::time::sleep(RETRY).await;
        }
    }

    /// Renews the lease; returns when it is lost.
    pub async fn hold(&self) {
        let mut renewed = Instant::now();
        loop {
            tokio::time::sleep(RENEW).await;
            match self.try_claim().await {
                Ok(true) => renewed = Instant::now(),
                Ok(false) => return,
                Err(error) => {
                    warn!(identity = %self.identity, %error, "renewing the lease failed");
                    if renewed.elapsed() >= RENEW_DEADLINE {
                        return;
                    }
                }
            }
        }
    }

    /// Takes or renews the lease if it may: `Ok(false)` when another instance holds it
    /// or won the race.
    async fn try_claim(&self) -> Result<bool, kube::Error> {
        let now = Timestamp::now();
        let Some(lease) = self.api.get_opt(LEASE_NAME).await? else {
            let lease = Lease {
                metadata: ObjectMeta {
                    name: Some(LEASE_NAME.into()),
                    ..ObjectMeta::default()
                },
                spec: claim(None, &self.identity, now),
            };
            return match self.api.create(&PostParams::default(), &lease).await {
                Ok(_) => Ok(true),
                Err(e) if is_conflict(&e) => Ok(false),
                Err(e) => Err(e),
            };
        };
        let Some(spec) = claim(lease.spec.as_ref(), &self.identity, now) else {
            return Ok(false);
        };
        let next = Lease {
            metadata: lease.metadata,
            spec: Some(spec),
        };
        match self
            .api
            .replace(LEASE_NAME, &PostParams::default(), &next)
            .await
        {
            Ok(_) => Ok(true),
            Err(e) if matches!(status_code(&e), Some(409 | 404)) => Ok(false),
            Err(e) => Err(e),
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    fn at(s: &str) -> Timestamp {
        s.parse().unwrap()
    }

    #[test]
    fn a_lease_is_taken_when_free_ours_or_expired() {
        let now = at("2026-11-22T10:00:00Z");
        let first = claim(None, "a", now).unwrap();
        assert_eq!(first.holder_identity.as_deref(), Some("a"));
        assert_eq!(first.lease_transitions, Some(0));
        // Held and fresh: b waits, a renews without a transition.
        let later = at("2026-11-22T10:00:10Z");
        assert!(claim(Some(&first), "b", later).is_none());
        let renewed = claim(Some(&first), "a", later).unwrap();
        assert_eq!(renewed.renew_time, Some(MicroTime(later)));
        assert_eq!(renewed.acquire_time, first.acquire_time);
        assert_eq!(renewed.lease_transitions, Some(0));
        // Expired: b takes it over.
        let expired = at("2026-11-22T10:00:26Z");
        let taken = claim(Some(&renewed), "b", expired).unwrap();
        assert_eq!(taken.holder_identity.as_deref(), Some("b"));
        assert_eq!(taken.lease_transitions, Some(1));
        // Released (no holder): taken at once.
        let released = LeaseSpec {
            holder_identity: Some(String::new()),
            ..renewed
        };
        assert!(claim(Some(&released), "b", later).is_some());
    }
}
