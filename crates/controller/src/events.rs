//! core/v1 Events about the objects the controllers act on, as `kubectl describe` lists
//! them (kube-runtime's recorder writes `events.k8s.io/v1`, which the API server does not
//! show under the involved object's field selectors).
//!
//! Recording never blocks a reconcile: events queue to a writer that runs beside the
//! controllers, and a failed write is logged and dropped, as client-go's broadcaster does.

use std::sync::atomic::{AtomicU64, Ordering};

use k8s_openapi::api::core::v1::{Event, EventSource, ObjectReference};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, Time};
use k8s_openapi::jiff::Timestamp;
use kube::api::{Api, PostParams};
use kube::{Client, Resource};
use tokio::sync::mpsc;
use tracing::{debug, warn};

/// The component names upstream's virt-controller reports.
pub const VM_COMPONENT: &str = "virtualmachine-controller";
pub const REPLICASET_COMPONENT: &str = "virtualmachinereplicaset-controller";

/// Normal or Warning.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EventType {
    Normal,
    Warning,
}

/// One event to write.
#[derive(Debug, Clone)]
pub struct Record {
    pub object: ObjectReference,
    pub type_: EventType,
    pub reason: &'static str,
    pub message: String,
    pub component: &'static str,
}

/// Queues events for the writer.
#[derive(Debug, Clone)]
pub struct Recorder {
    tx: mpsc::UnboundedSender<Record>,
}

impl Recorder {
    /// A recorder and the writer that must run for its events to reach the server.
    pub fn new(client: Client, instance: String) -> (Self, Writer) {
        let (tx, rx) = mpsc::unbounded_channel();
        (
            Self { tx },
            Writer {
                client,
                instance,
                rx,
            },
        )
    }

    /// Records an event about `obj`.
    pub fn record<K: Resource<DynamicType = ()>>(
        &self,
        obj: &K,
        component: &'static str,
        type_: EventType,
        reason: &'static str,
        message: String,
    ) {
        let record = Record {
            object: obj.object_ref(&()),
            type_,
            reason,
            message,
            component,
        };
        // Closed only when the controllers stop, and their events go with them.
        let _ = self.tx.send(record);
    }
}

/// Writes queued events.
pub struct Writer {
    client: Client,
    instance: String,
    rx: mpsc::UnboundedReceiver<Record>,
}

impl std::fmt::Debug for Writer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Writer")
            .field("instance", &self.instance)
            .finish_non_exhaustive()
    }
}

static SEQUENCE: AtomicU64 = AtomicU64::new(0);

impl Writer {
    /// Writes events until every recorder is gone.
    pub async fn run(mut self) {
        while let Some(record) = self.rx.recv().await {
            let event = to_event(&record, &self.instance, Timestamp::now());
            let namespace = event.metadata.namespace.clone().unwrap_or_default();
            let api: Api<Event> = Api::namespaced(self.client.clone(), &namespace);
            match api.create(&PostParams::default(), &event).await {
                Ok(_) => debug!(reason = record.reason, object = ?record.object.name, "event"),
                Err(error) => warn!(reason = record.reason, %error, "writing an event failed"),
            }
        }
    }
}

/// The core/v1 Event for `record`, named as client-go names them (object name, a dot, a
/// unique hex suffix).
pub fn to_event(record: &Record, instance: &str, now: Timestamp) -> Event {
    let object = &record.object;
    let nanos = u64::try_from(now.as_nanosecond()).unwrap_or_default();
    let suffix = nanos.wrapping_add(SEQUENCE.fetch_add(1, Ordering::Relaxed));
    let name = object.name.clone().unwrap_or_default();
    Event {
        metadata: ObjectMeta {
            name: Some(format!("{name}.{suffix:x}")),
            namespace: Some(object.namespace.clone().unwrap_or_else(|| "default".into())),
            ..ObjectMeta::default()
        },
        involved_object: object.clone(),
        reason: Some(record.reason.into()),
        message: Some(record.message.clone()),
        type_: Some(
            match record.type_ {
                EventType::Normal => "Normal",
                EventType::Warning => "Warning",
            }
            .into(),
        ),
        source: Some(EventSource {
            component: Some(record.component.into()),
            host: None,
        }),
        reporting_component: Some(record.component.into()),
        reporting_instance: Some(instance.into()),
        first_timestamp: Some(Time(now)),
        last_timestamp: Some(Time(now)),
        count: Some(1),
        ..Event::default()
    }
}
