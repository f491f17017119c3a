//! Serde types for the QMP wire format and classification of incoming lines.

use std::fmt;

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use crate::events::Event;

/// The QEMU version announced in the greeting.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct QemuVersion {
    pub major: u32,
    pub minor: u32,
    pub micro: u32,
    /// Distribution package string, e.g. `Debian 1:10.0.2+ds-2`; may be empty.
    pub package: String,
}

impl fmt::Display for QemuVersion {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}.{}.{}", self.major, self.minor, self.micro)
    }
}

/// The first line QEMU sends on a fresh QMP connection.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Greeting {
    pub version: QemuVersion,
    /// Optional capabilities QEMU offers (e.g. `oob`); none are enabled.
    pub capabilities: Vec<String>,
}

#[derive(Deserialize)]
struct RawGreeting {
    #[serde(rename = "QMP")]
    qmp: RawGreetingBody,
}

#[derive(Deserialize)]
struct RawGreetingBody {
    version: RawVersion,
    #[serde(default)]
    capabilities: Vec<String>,
}

#[derive(Deserialize)]
struct RawVersion {
    qemu: Triple,
    #[serde(default)]
    package: String,
}

#[derive(Deserialize)]
struct Triple {
    major: u32,
    minor: u32,
    micro: u32,
}

/// Parses the greeting line; the error is a human-readable description.
pub(crate) fn parse_greeting(line: &[u8]) -> Result<Greeting, String> {
    let raw: RawGreeting =
        serde_json::from_slice(line).map_err(|e| format!("bad greeting {}: {e}", preview(line)))?;
    let RawVersion { qemu, package } = raw.qmp.version;
    Ok(Greeting {
        version: QemuVersion {
            major: qemu.major,
            minor: qemu.minor,
            micro: qemu.micro,
            package,
        },
        capabilities: raw.qmp.capabilities,
    })
}

#[derive(Serialize)]
struct Request<'a> {
    execute: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    arguments: Option<&'a Value>,
    id: u64,
}

/// Encodes one request as a newline-terminated line.
pub(crate) fn encode_request(
    execute: &str,
    arguments: Option<&Value>,
    id: u64,
) -> serde_json::Result<Vec<u8>> {
    let mut line = serde_json::to_vec(&Request {
        execute,
        arguments,
        id,
    })?;
    line.push(b'\n');
    Ok(line)
}

/// One parsed line from the peer.
#[derive(Debug)]
pub(crate) enum Incoming {
    Return {
        id: Option<Value>,
        value: Value,
    },
    Error {
        id: Option<Value>,
        class: String,
        desc: String,
    },
    Event(Event),
}

#[derive(Deserialize)]
struct ErrorBody {
    class: String,
    #[serde(default)]
    desc: String,
}

#[derive(Deserialize)]
struct RawEvent {
    event: String,
    #[serde(default)]
    data: Value,
    #[serde(default)]
    timestamp: Timestamp,
}

#[derive(Deserialize, Default)]
struct Timestamp {
    seconds: i64,
    microseconds: i64,
}

/// Classifies one line; the error is a human-readable description.
pub(crate) fn parse_incoming(line: &[u8]) -> Result<Incoming, String> {
    let value: Value = serde_json::from_slice(line).map_err(|e| format!("not JSON: {e}"))?;
    let Value::Object(mut map) = value else {
        return Err("not a JSON object".into());
    };
    let id = map.remove("id");
    if let Some(value) = map.remove("return") {
        return Ok(Incoming::Return { id, value });
    }
    if let Some(body) = map.remove("error") {
        let body: ErrorBody =
            serde_json::from_value(body).map_err(|e| format!("bad error reply: {e}"))?;
        return Ok(Incoming::Error {
            id,
            class: body.class,
            desc: body.desc,
        });
    }
    if map.contains_key("event") {
        return parse_event(map).map(Incoming::Event);
    }
    Err("neither a reply nor an event".into())
}

fn parse_event(map: Map<String, Value>) -> Result<Event, String> {
    let raw: RawEvent =
        serde_json::from_value(Value::Object(map)).map_err(|e| format!("bad event: {e}"))?;
    Ok(Event {
        event: raw.event,
        data: raw.data,
        timestamp: (raw.timestamp.seconds, raw.timestamp.microseconds),
    })
}

/// A short, printable excerpt of a line for log and error messages.
pub(crate) fn preview(line: &[u8]) -> String {
    const MAX: usize = 120;
    let text = String::from_utf8_lossy(&line[..line.len().min(MAX)]);
    let dots = if line.len() > MAX { "..." } else { "" };
    format!("{:?}{dots}", text.trim_end())
}
