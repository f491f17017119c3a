use std::borrow::Cow;

use schemars::{JsonSchema, Schema, SchemaGenerator, json_schema};
use serde::{Deserialize, Serialize};

/// A subtree we carry verbatim without modelling it: hardware we cannot run here (GPUs,
/// host devices, confidential computing) or objects owned by other projects (CDI
/// DataVolume templates). The CRD schema marks it `x-kubernetes-preserve-unknown-fields`.
/// Validation refuses the hardware ones with a field path, so nothing is silently ignored.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[serde(transparent)]
pub struct Opaque(pub serde_json::Value);

impl JsonSchema for Opaque {
    fn schema_name() -> Cow<'static, str> {
        "Opaque".into()
    }

    fn inline_schema() -> bool {
        true
    }

    fn json_schema(_: &mut SchemaGenerator) -> Schema {
        json_schema!({ "type": "object", "x-kubernetes-preserve-unknown-fields": true })
    }
}
