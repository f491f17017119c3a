//! The resources the server serves, read from CustomResourceDefinitions.

use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use serde_json::Value;

/// One served resource type.
#[derive(Debug, Clone, PartialEq)]
pub struct Resource {
    pub group: String,
    /// Served versions; the storage version first.
    pub versions: Vec<String>,
    pub kind: String,
    pub plural: String,
    pub singular: String,
    pub short_names: Vec<String>,
    pub categories: Vec<String>,
    pub namespaced: bool,
    pub status_subresource: bool,
    pub scale_subresource: bool,
    /// `additionalPrinterColumns` of the storage version.
    pub columns: Vec<Value>,
}

impl Resource {
    pub fn storage_version(&self) -> &str {
        &self.versions[0]
    }

    pub fn api_version(&self, version: &str) -> String {
        if self.group.is_empty() {
            version.to_owned()
        } else {
            format!("{}/{version}", self.group)
        }
    }

    /// The store key of an object, or the prefix of a namespace's (or all) objects.
    pub fn key(&self, namespace: Option<&str>, name: Option<&str>) -> String {
        let group = if self.group.is_empty() {
            "core"
        } else {
            &self.group
        };
        let mut key = format!("/{group}/{}/", self.plural);
        if let Some(ns) = namespace.filter(|_| self.namespaced) {
            key.push_str(ns);
            key.push('/');
        }
        if let Some(n) = name {
            key.push_str(n);
        }
        key
    }

    pub fn from_crd(crd: &CustomResourceDefinition) -> Self {
        let spec = &crd.spec;
        let mut versions: Vec<_> = spec.versions.iter().filter(|v| v.served).collect();
        versions.sort_by_key(|v| !v.storage);
        let storage = versions.first();
        Self {
            group: spec.group.clone(),
            versions: versions.iter().map(|v| v.name.clone()).collect(),
            kind: spec.names.kind.clone(),
            plural: spec.names.plural.clone(),
            singular: spec
                .names
                .singular
                .clone()
                .unwrap_or_else(|| spec.names.kind.to_lowercase()),
            short_names: spec.names.short_names.clone().unwrap_or_default(),
            categories: spec.names.categories.clone().unwrap_or_default(),
            namespaced: spec.scope == "Namespaced",
            status_subresource: storage
                .and_then(|v| v.subresources.as_ref())
                .is_some_and(|s| s.status.is_some()),
            scale_subresource: storage
                .and_then(|v| v.subresources.as_ref())
                .is_some_and(|s| s.scale.is_some()),
            columns: storage
                .and_then(|v| v.additional_printer_columns.as_ref())
                .map(|cols| {
                    cols.iter()
                        .filter_map(|c| serde_json::to_value(c).ok())
                        .collect()
                })
                .unwrap_or_default(),
        }
    }
}

/// Every served resource.
#[derive(Debug, Clone, Default)]
pub struct Registry {
    resources: Vec<Resource>,
}

impl Registry {
    /// The kubevirt.io and instancetype.kubevirt.io resources from the api crate.
    pub fn kubevirt() -> Self {
        Self {
            resources: api::crd::all().iter().map(Resource::from_crd).collect(),
        }
    }

    pub fn find(&self, group: &str, version: &str, plural: &str) -> Option<&Resource> {
        self.resources.iter().find(|r| {
            r.group == group && r.plural == plural && r.versions.iter().any(|v| v == version)
        })
    }

    pub fn resources(&self) -> &[Resource] {
        &self.resources
    }

    /// Groups with their served versions, preferred (storage) first.
    pub fn groups(&self) -> Vec<(String, Vec<String>)> {
        let mut groups: Vec<(String, Vec<String>)> = Vec::new();
        for r in &self.resources {
            match groups.iter_mut().find(|(g, _)| *g == r.group) {
                Some((_, versions)) => {
                    for v in &r.versions {
                        if !versions.contains(v) {
                            versions.push(v.clone());
                        }
                    }
                }
                None => groups.push((r.group.clone(), r.versions.clone())),
            }
        }
        groups
    }
}
