//! Authorization, as kube-apiserver does it with `--authorization-mode=RBAC`.
//!
//! Every request, after authentication, passes [`authorize`]:
//! 1. `Impersonate-User` / `Impersonate-Group` headers switch the user, when the caller
//!    may `impersonate` those users and groups.
//! 2. The request's attributes ([`attributes`]) are read from its method and path the way
//!    Kubernetes' RequestInfo reads them: a resource request (verb, API group, resource,
//!    subresource, namespace, name) or a non-resource one (verb, path).
//! 3. Members of `system:masters` may do anything. Everyone else needs a rule, in a
//!    ClusterRole bound by a ClusterRoleBinding, or in a Role or ClusterRole bound by a
//!    RoleBinding in the request's namespace. ClusterRoles with an `aggregationRule`
//!    hold the rules of every ClusterRole their selectors match.
//! 4. A refusal is 403 with Kubernetes' message (`pods "x" is forbidden: User "alice"
//!    cannot get resource "pods" in API group "" in the namespace "default"`).
//!
//! The policy is read from the store once per change: every write through the API bumps
//! [`Authorizer::invalidate`], and a watch on the RBAC keys catches the others (garbage
//! collection). `SubjectAccessReview`, `SelfSubjectAccessReview` and
//! `LocalSubjectAccessReview` ask the same question for someone ([`review`]).
//!
//! [`bootstrap_policy`] holds the roles and bindings every cluster starts with.

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use axum::extract::{Request, State};
use axum::http::{HeaderMap, Method};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use k8s_openapi::api::rbac::v1::{
    AggregationRule, ClusterRole, ClusterRoleBinding, PolicyRule, Role, RoleBinding, Subject,
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector;
use serde_json::{Value, json};
use store::ListRequest;

use crate::{ApiError, AppState, User};

/// The RBAC API group.
pub const GROUP: &str = "rbac.authorization.k8s.io";
/// The group allowed everything.
pub const MASTERS: &str = "system:masters";
const AUTHENTICATED: &str = "system:authenticated";
const UNAUTHENTICATED: &str = "system:unauthenticated";
const ANONYMOUS: &str = "system:anonymous";
const SERVICE_ACCOUNT_PREFIX: &str = "system:serviceaccount:";
/// Subresources of a namespace itself, not resources in it.
const NAMESPACE_SUBRESOURCES: [&str; 2] = ["status", "finalize"];

/// What a request asks to do, in RBAC's terms.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Attributes {
    pub verb: String,
    /// Set for requests on resources; `None` for the others (discovery, `/version`...).
    pub resource: Option<ResourceAttributes>,
    /// The request path (what non-resource rules match).
    pub path: String,
}

/// A resource request's attributes; empty strings where a part is absent.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct ResourceAttributes {
    pub group: String,
    pub resource: String,
    pub subresource: String,
    pub namespace: String,
    pub name: String,
}

/// The attributes of a request, read from its method, path and query alone.
pub fn attributes(method: &Method, path: &str, query: Option<&str>) -> Attributes {
    let non_resource = || Attributes {
        verb: method.as_str().to_lowercase(),
        resource: None,
        path: path.to_owned(),
    };
    let parts: Vec<&str> = path.trim_matches('/').split('/').collect();
    let (group, rest) = match parts.as_slice() {
        ["api", _version, rest @ ..] => ("", rest),
        ["apis", group, _version, rest @ ..] => (*group, rest),
        _ => return non_resource(),
    };
    if rest.is_empty() {
        return non_resource();
    }
    let mut namespace = "";
    let mut rest = rest;
    if rest[0] == "namespaces" && rest.len() > 1 {
        namespace = rest[1];
        if rest.len() > 2 && !NAMESPACE_SUBRESOURCES.contains(&rest[2]) {
            rest = &rest[2..];
        }
    }
    let name = rest.get(1).copied().unwrap_or_default();
    let watch = query.is_some_and(|q| {
        q.split('&')
            .any(|pair| pair == "watch=true" || pair == "watch=1")
    });
    let verb = match *method {
        Method::GET | Method::HEAD if !name.is_empty() => "get",
        Method::GET | Method::HEAD if watch => "watch",
        Method::GET | Method::HEAD => "list",
        Method::POST => "create",
        Method::PUT => "update",
        Method::PATCH => "patch",
        Method::DELETE if name.is_empty() => "deletecollection",
        Method::DELETE => "delete",
        _ => return non_resource(),
    };
    Attributes {
        verb: verb.to_owned(),
        resource: Some(ResourceAttributes {
            group: group.to_owned(),
            resource: rest[0].to_owned(),
            subresource: rest.get(2).copied().unwrap_or_default().to_owned(),
            namespace: namespace.to_owned(),
            name: name.to_owned(),
        }),
        path: path.to_owned(),
    }
}

/// An answer, with what allowed it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Decision {
    pub allowed: bool,
    pub reason: String,
}

/// The RBAC objects of the store at one moment.
#[derive(Debug, Default)]
pub struct Policy {
    cluster_roles: HashMap<String, ClusterRole>,
    roles: HashMap<(String, String), Role>,
    cluster_role_bindings: Vec<ClusterRoleBinding>,
    role_bindings: Vec<RoleBinding>,
}

impl Policy {
    /// Reads the policy from the objects as stored (JSON).
    pub fn from_objects(objects: impl IntoIterator<Item = Value>) -> Self {
        let mut policy = Self::default();
        for obj in objects {
            let name = obj["metadata"]["name"]
                .as_str()
                .unwrap_or_default()
                .to_owned();
            let ns = obj["metadata"]["namespace"]
                .as_str()
                .unwrap_or_default()
                .to_owned();
            match obj["kind"].as_str() {
                Some("ClusterRole") => {
                    if let Ok(r) = serde_json::from_value(obj) {
                        policy.cluster_roles.insert(name, r);
                    }
                }
                Some("Role") => {
                    if let Ok(r) = serde_json::from_value(obj) {
                        policy.roles.insert((ns, name), r);
                    }
                }
                Some("ClusterRoleBinding") => {
                    if let Ok(b) = serde_json::from_value(obj) {
                        policy.cluster_role_bindings.push(b);
                    }
                }
                Some("RoleBinding") => {
                    if let Ok(b) = serde_json::from_value(obj) {
                        policy.role_bindings.push(b);
                    }
                }
                _ => {}
            }
        }
        policy
    }

    /// The rules of a ClusterRole: its own, or with an `aggregationRule`, those of every
    /// ClusterRole its selectors match.
    fn cluster_role_rules(&self, name: &str) -> Vec<&PolicyRule> {
        let mut seen = std::collections::HashSet::new();
        self.aggregated_rules(name, &mut seen)
    }

    /// A ClusterRole's rules with those of the roles it aggregates, which may aggregate
    /// in turn (`admin` takes in `edit`, which takes in `view`), each role once.
    fn aggregated_rules<'a>(
        &'a self,
        name: &str,
        seen: &mut std::collections::HashSet<String>,
    ) -> Vec<&'a PolicyRule> {
        if !seen.insert(name.to_owned()) {
            return Vec::new();
        }
        let Some(role) = self.cluster_roles.get(name) else {
            return Vec::new();
        };
        let mut rules: Vec<&PolicyRule> = role.rules.iter().flatten().collect();
        if let Some(AggregationRule {
            cluster_role_selectors: Some(selectors),
        }) = &role.aggregation_rule
        {
            let members: Vec<&str> = self
                .cluster_roles
                .values()
                .filter(|r| {
                    let labels = r.metadata.labels.clone().unwrap_or_default();
                    selectors.iter().any(|s| selector_matches(s, &labels))
                })
                .filter_map(|r| r.metadata.name.as_deref())
                .collect();
            for member in members {
                rules.extend(self.aggregated_rules(member, seen));
            }
        }
        rules
    }

    /// Whether `user` may do what `attrs` asks.
    pub fn authorize(&self, user: &User, attrs: &Attributes) -> Decision {
        if user.groups.iter().any(|g| g == MASTERS) {
            return Decision {
                allowed: true,
                reason: format!("member of {MASTERS}"),
            };
        }
        for b in &self.cluster_role_bindings {
            let Some(subject) = matching_subject(b.subjects.as_deref(), user, "") else {
                continue;
            };
            if b.role_ref.kind != "ClusterRole" {
                continue;
            }
            if self
                .cluster_role_rules(&b.role_ref.name)
                .into_iter()
                .any(|r| rule_allows(r, attrs))
            {
                return allowed_by(
                    "ClusterRoleBinding",
                    &name_of(&b.metadata),
                    &b.role_ref.kind,
                    &b.role_ref.name,
                    subject,
                );
            }
        }
        let namespace = attrs
            .resource
            .as_ref()
            .map(|r| r.namespace.as_str())
            .unwrap_or_default();
        if !namespace.is_empty() {
            for b in &self.role_bindings {
                if b.metadata.namespace.as_deref() != Some(namespace) {
                    continue;
                }
                let Some(subject) = matching_subject(b.subjects.as_deref(), user, namespace) else {
                    continue;
                };
                let rules: Vec<&PolicyRule> = match b.role_ref.kind.as_str() {
                    "ClusterRole" => self.cluster_role_rules(&b.role_ref.name),
                    "Role" => self
                        .roles
                        .get(&(namespace.to_owned(), b.role_ref.name.clone()))
                        .map(|r| r.rules.iter().flatten().collect())
                        .unwrap_or_default(),
                    _ => Vec::new(),
                };
                if rules.into_iter().any(|r| rule_allows(r, attrs)) {
                    return allowed_by(
                        "RoleBinding",
                        &format!("{}/{namespace}", name_of(&b.metadata)),
                        &b.role_ref.kind,
                        &b.role_ref.name,
                        subject,
                    );
                }
            }
        }
        Decision {
            allowed: false,
            reason: String::new(),
        }
    }
}

/// The most permissions (verb x group x resource x name, or verb x path, each value
/// counted once) a role may grant to be checked against its writer's, one by one: a
/// larger role needs `escalate` (or `bind`), so no write makes the server check forever.
const MAX_RULE_COMBINATIONS: usize = 10_000;

/// How many permissions `rule` grants, each distinct value counted once.
fn combinations(rule: &PolicyRule) -> usize {
    let count = |list: Option<&Vec<String>>| {
        list.map_or(0, |l| {
            l.iter().collect::<std::collections::BTreeSet<_>>().len()
        })
    };
    let verbs = count(Some(&rule.verbs));
    let per_verb = count(rule.non_resource_urls.as_ref()).saturating_add(
        count(rule.api_groups.as_ref())
            .saturating_mul(count(rule.resources.as_ref()))
            .saturating_mul(count(rule.resource_names.as_ref()).max(1)),
    );
    verbs.saturating_mul(per_verb)
}

impl Policy {
    /// The first permission `rule` grants that `user` does not hold in `namespace` (the
    /// cluster scope when empty), described; `None` when the user holds them all. Each
    /// verb, group, resource and name is checked on its own, a `*` literally, as
    /// Kubernetes' rule coverage does.
    fn uncovered(&self, user: &User, namespace: &str, rule: &PolicyRule) -> Option<String> {
        let allowed = |attrs: Attributes| self.authorize(user, &attrs).allowed;
        // Each value once: a rule that repeats itself costs no more than it grants.
        let set = |list: &[String]| -> Vec<String> {
            let unique: std::collections::BTreeSet<&String> = list.iter().collect();
            unique.into_iter().cloned().collect()
        };
        let verbs = set(&rule.verbs);
        let urls = set(rule.non_resource_urls.as_deref().unwrap_or_default());
        let groups = set(rule.api_groups.as_deref().unwrap_or_default());
        let resources = set(rule.resources.as_deref().unwrap_or_default());
        let names = set(rule.resource_names.as_deref().unwrap_or_default());
        let rule = PolicyRule {
            verbs,
            non_resource_urls: Some(urls),
            api_groups: Some(groups),
            resources: Some(resources),
            resource_names: Some(names),
        };
        let rule = &rule;
        for verb in &rule.verbs {
            for url in rule.non_resource_urls.iter().flatten() {
                let attrs = Attributes {
                    verb: verb.clone(),
                    resource: None,
                    path: url.clone(),
                };
                if !allowed(attrs) {
                    return Some(format!("{verb} on the path {url:?}"));
                }
            }
            let names: Vec<&str> = match &rule.resource_names {
                Some(n) if !n.is_empty() => n.iter().map(String::as_str).collect(),
                _ => vec![""],
            };
            for group in rule.api_groups.iter().flatten() {
                for resource in rule.resources.iter().flatten() {
                    let (plural, sub) = resource.split_once('/').unwrap_or((resource, ""));
                    for name in &names {
                        let attrs = Attributes {
                            verb: verb.clone(),
                            resource: Some(ResourceAttributes {
                                group: group.clone(),
                                resource: plural.to_owned(),
                                subresource: sub.to_owned(),
                                namespace: namespace.to_owned(),
                                name: (*name).to_owned(),
                            }),
                            path: String::new(),
                        };
                        if !allowed(attrs) {
                            let named = if name.is_empty() {
                                String::new()
                            } else {
                                format!(" named {name:?}")
                            };
                            return Some(format!(
                                "{verb} on {resource:?}{named} in API group {group:?}"
                            ));
                        }
                    }
                }
            }
        }
        None
    }
}

fn name_of(meta: &k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta) -> String {
    meta.name.clone().unwrap_or_default()
}

fn allowed_by(binding: &str, name: &str, role_kind: &str, role: &str, s: &Subject) -> Decision {
    Decision {
        allowed: true,
        reason: format!(
            "RBAC: allowed by {binding} \"{name}\" of {role_kind} \"{role}\" to {} \"{}\"",
            s.kind, s.name
        ),
    }
}

/// The first of `subjects` that is `user` (or one of its groups); `namespace` is the
/// binding's, the default for ServiceAccount subjects of a RoleBinding.
fn matching_subject<'a>(
    subjects: Option<&'a [Subject]>,
    user: &User,
    namespace: &str,
) -> Option<&'a Subject> {
    subjects?.iter().find(|s| match s.kind.as_str() {
        "User" => s.name == user.name,
        "Group" => user.groups.contains(&s.name),
        "ServiceAccount" => {
            let ns = s
                .namespace
                .as_deref()
                .filter(|n| !n.is_empty())
                .unwrap_or(namespace);
            !ns.is_empty() && user.name == format!("{SERVICE_ACCOUNT_PREFIX}{ns}:{}", s.name)
        }
        _ => false,
    })
}

/// Whether one rule allows the request.
fn rule_allows(rule: &PolicyRule, attrs: &Attributes) -> bool {
    let any = |list: &Option<Vec<String>>, value: &str| {
        list.iter().flatten().any(|x| x == "*" || x == value)
    };
    if !rule.verbs.iter().any(|v| v == "*" || *v == attrs.verb) {
        return false;
    }
    let Some(r) = &attrs.resource else {
        return rule.non_resource_urls.iter().flatten().any(|u| {
            u == "*"
                || *u == attrs.path
                || u.strip_suffix('*')
                    .is_some_and(|p| attrs.path.starts_with(p))
        });
    };
    if !any(&rule.api_groups, &r.group) {
        return false;
    }
    let combined = if r.subresource.is_empty() {
        r.resource.clone()
    } else {
        format!("{}/{}", r.resource, r.subresource)
    };
    let resource_ok = rule.resources.iter().flatten().any(|x| {
        x == "*"
            || *x == combined
            || (!r.subresource.is_empty() && *x == format!("*/{}", r.subresource))
    });
    if !resource_ok {
        return false;
    }
    match &rule.resource_names {
        Some(names) if !names.is_empty() => names.contains(&r.name),
        _ => true,
    }
}

/// A label selector's `matchLabels` and `matchExpressions` against `labels`.
fn selector_matches(s: &LabelSelector, labels: &BTreeMap<String, String>) -> bool {
    let labels_ok = s
        .match_labels
        .iter()
        .flatten()
        .all(|(k, v)| labels.get(k) == Some(v));
    let expressions_ok = s.match_expressions.iter().flatten().all(|e| {
        let values = e.values.clone().unwrap_or_default();
        let value = labels.get(&e.key);
        match e.operator.as_str() {
            "In" => value.is_some_and(|v| values.contains(v)),
            "NotIn" => value.is_none_or(|v| !values.contains(v)),
            "Exists" => value.is_some(),
            "DoesNotExist" => value.is_none(),
            _ => false,
        }
    });
    labels_ok && expressions_ok
}

/// The policy, read from the store when it changed.
#[derive(Debug, Default)]
pub struct Authorizer {
    generation: AtomicU64,
    cached: Mutex<Option<(u64, Arc<Policy>)>>,
}

/// The RBAC kinds' plural names (their store keys start `/rbac.authorization.k8s.io/`).
const PLURALS: [&str; 4] = [
    "clusterroles",
    "roles",
    "clusterrolebindings",
    "rolebindings",
];

impl Authorizer {
    /// The stored policy changed: the next request reads it again.
    pub fn invalidate(&self) {
        self.generation.fetch_add(1, Ordering::SeqCst);
    }

    fn policy(&self, store: &dyn store::Store) -> Result<Arc<Policy>, ApiError> {
        let generation = self.generation.load(Ordering::SeqCst);
        if let Ok(cached) = self.cached.lock()
            && let Some((g, policy)) = cached.as_ref()
            && *g == generation
        {
            return Ok(policy.clone());
        }
        let mut objects = Vec::new();
        for plural in PLURALS {
            let page = store.list(&ListRequest {
                prefix: format!("/{GROUP}/{plural}/"),
                ..ListRequest::default()
            })?;
            objects.extend(
                page.items
                    .iter()
                    .filter_map(|kv| serde_json::from_slice::<Value>(&kv.value).ok()),
            );
        }
        let policy = Arc::new(Policy::from_objects(objects));
        if let Ok(mut cached) = self.cached.lock() {
            *cached = Some((generation, policy.clone()));
        }
        Ok(policy)
    }

    /// Whether `user` may do what `attrs` asks, under the stored policy.
    pub fn authorize(
        &self,
        store: &dyn store::Store,
        user: &User,
        attrs: &Attributes,
    ) -> Result<Decision, ApiError> {
        if user.groups.iter().any(|g| g == MASTERS) {
            return Ok(Policy::default().authorize(user, attrs));
        }
        Ok(self.policy(store)?.authorize(user, attrs))
    }
}

impl Authorizer {
    /// Kubernetes' escalation prevention, for `obj` (a role or binding of `plural`)
    /// about to be written by `user`: a role may hold only rules its writer holds, unless
    /// the writer may `escalate` it; a binding may grant only a role whose rules its
    /// writer holds, unless the writer may `bind` that role. So a namespace admin cannot
    /// bind `cluster-admin`, and nobody grants what they do not have.
    pub fn check_escalation(
        &self,
        store: &dyn store::Store,
        user: &User,
        plural: &str,
        obj: &Value,
    ) -> Result<(), ApiError> {
        if user.groups.iter().any(|g| g == MASTERS) {
            return Ok(());
        }
        let policy = self.policy(store)?;
        let name = obj["metadata"]["name"].as_str().unwrap_or_default();
        let namespace = obj["metadata"]["namespace"].as_str().unwrap_or_default();
        let may = |verb: &str, resource: &str, name: &str| {
            let attrs = Attributes {
                verb: verb.to_owned(),
                resource: Some(ResourceAttributes {
                    group: GROUP.to_owned(),
                    resource: resource.to_owned(),
                    subresource: String::new(),
                    namespace: namespace.to_owned(),
                    name: name.to_owned(),
                }),
                path: String::new(),
            };
            policy.authorize(user, &attrs).allowed
        };
        let refuse = |why: String| {
            ApiError::forbidden(format!(
                "{plural}.{GROUP} \"{name}\" is forbidden: user \"{}\" (groups={:?}) {why}",
                user.name, user.groups
            ))
            .with_details(json!({"group": GROUP, "kind": plural, "name": name}))
        };
        let rules: Vec<PolicyRule> = match plural {
            "roles" | "clusterroles" => {
                if may("escalate", plural, name) {
                    return Ok(());
                }
                if plural == "clusterroles" && !obj["aggregationRule"].is_null() {
                    return Err(refuse(
                        "must have cluster-admin privileges to use an aggregationRule".into(),
                    ));
                }
                serde_json::from_value(obj["rules"].clone()).unwrap_or_default()
            }
            "rolebindings" | "clusterrolebindings" => {
                let kind = obj["roleRef"]["kind"].as_str().unwrap_or_default();
                let role = obj["roleRef"]["name"].as_str().unwrap_or_default();
                let role_plural = if kind == "Role" {
                    "roles"
                } else {
                    "clusterroles"
                };
                if may("bind", role_plural, role) {
                    return Ok(());
                }
                let rules: Option<Vec<PolicyRule>> = match kind {
                    "ClusterRole" => policy.cluster_roles.contains_key(role).then(|| {
                        policy
                            .cluster_role_rules(role)
                            .into_iter()
                            .cloned()
                            .collect()
                    }),
                    _ => policy
                        .roles
                        .get(&(namespace.to_owned(), role.to_owned()))
                        .map(|r| r.rules.clone().unwrap_or_default()),
                };
                rules.ok_or_else(|| {
                    refuse(format!(
                        "may not bind {kind} {role:?}, which does not exist, without the bind permission on it"
                    ))
                })?
            }
            _ => return Ok(()),
        };
        let total = rules
            .iter()
            .map(combinations)
            .fold(0usize, usize::saturating_add);
        if total > MAX_RULE_COMBINATIONS {
            return Err(refuse(format!(
                "may not grant {total} permissions at once without the escalate or bind permission (at most {MAX_RULE_COMBINATIONS} are checked against the writer's)"
            )));
        }
        match rules
            .iter()
            .find_map(|r| policy.uncovered(user, namespace, r))
        {
            None => Ok(()),
            Some(missing) => Err(refuse(format!(
                "is attempting to grant RBAC permissions not currently held: {missing}"
            ))),
        }
    }
}

/// Invalidates `state`'s policy whenever an RBAC key changes, until the store closes.
pub async fn follow(state: AppState) {
    let prefix = format!("/{GROUP}/");
    loop {
        let Ok(mut watch) = state.store.watch(&prefix, state.store.revision()) else {
            return;
        };
        state.authorizer.invalidate();
        loop {
            match watch.next().await {
                None => return,
                Some(Ok(_)) => state.authorizer.invalidate(),
                Some(Err(_)) => break,
            }
        }
    }
}

/// The 403 Kubernetes answers when `user` may not do `attrs`.
pub fn forbidden(user: &User, attrs: &Attributes) -> ApiError {
    let Some(r) = &attrs.resource else {
        return ApiError::forbidden(format!(
            "forbidden: User \"{}\" cannot {} path \"{}\"",
            user.name, attrs.verb, attrs.path
        ))
        .with_details(json!({}));
    };
    let resource = if r.subresource.is_empty() {
        r.resource.clone()
    } else {
        format!("{}/{}", r.resource, r.subresource)
    };
    let scope = if r.namespace.is_empty() {
        "at the cluster scope".to_owned()
    } else {
        format!("in the namespace \"{}\"", r.namespace)
    };
    let why = format!(
        "User \"{}\" cannot {} resource \"{resource}\" in API group \"{}\" {scope}",
        user.name, attrs.verb, r.group
    );
    let qualified = if r.group.is_empty() {
        r.resource.clone()
    } else {
        format!("{}.{}", r.resource, r.group)
    };
    let message = if r.name.is_empty() {
        format!("{qualified} is forbidden: {why}")
    } else {
        format!("{qualified} \"{}\" is forbidden: {why}", r.name)
    };
    let mut details = serde_json::Map::new();
    for (key, value) in [
        ("group", &r.group),
        ("kind", &r.resource),
        ("name", &r.name),
    ] {
        if !value.is_empty() {
            details.insert(key.to_owned(), json!(value));
        }
    }
    ApiError::forbidden(message).with_details(Value::Object(details))
}

/// The user of a request that carries no authenticated user: the API server used
/// without the serving layer (tests), which trusts its caller.
pub fn unsecured() -> User {
    User {
        name: "system:unsecured".to_owned(),
        groups: vec![MASTERS.to_owned(), AUTHENTICATED.to_owned()],
    }
}

/// The user `caller` asks to act as through `Impersonate-*` headers, if it may.
fn impersonate(state: &AppState, caller: &User, headers: &HeaderMap) -> Result<User, ApiError> {
    let values = |name: &str| -> Vec<String> {
        headers
            .get_all(name)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .map(str::to_owned)
            .collect()
    };
    let user = values("impersonate-user").into_iter().next();
    let groups = values("impersonate-group");
    let Some(name) = user else {
        if groups.is_empty() {
            return Ok(caller.clone());
        }
        return Err(ApiError::bad_request(
            "requested impersonation of groups without impersonating a user",
        ));
    };
    let service_account = name
        .strip_prefix(SERVICE_ACCOUNT_PREFIX)
        .and_then(|rest| rest.split_once(':'));
    let mut checks = vec![match service_account {
        Some((ns, sa)) => ("serviceaccounts", ns.to_owned(), sa.to_owned()),
        None => ("users", String::new(), name.clone()),
    }];
    checks.extend(groups.iter().map(|g| ("groups", String::new(), g.clone())));
    for (resource, namespace, object) in checks {
        let attrs = Attributes {
            verb: "impersonate".to_owned(),
            resource: Some(ResourceAttributes {
                resource: resource.to_owned(),
                namespace,
                name: object,
                ..ResourceAttributes::default()
            }),
            path: String::new(),
        };
        if !state
            .authorizer
            .authorize(&*state.store, caller, &attrs)?
            .allowed
        {
            return Err(forbidden(caller, &attrs));
        }
    }
    let mut all = groups;
    if let Some((ns, _)) = service_account {
        all.push("system:serviceaccounts".to_owned());
        all.push(format!("system:serviceaccounts:{ns}"));
    }
    let extra = if name == ANONYMOUS {
        UNAUTHENTICATED
    } else {
        AUTHENTICATED
    };
    if !all.iter().any(|g| g == extra) {
        all.push(extra.to_owned());
    }
    Ok(User { name, groups: all })
}

/// The authorization layer of the router (see the module docs).
pub async fn authorize(State(state): State<AppState>, mut req: Request, next: Next) -> Response {
    let caller = req
        .extensions()
        .get::<User>()
        .cloned()
        .unwrap_or_else(unsecured);
    let user = match impersonate(&state, &caller, req.headers()) {
        Ok(user) => user,
        Err(e) => return e.into_response(),
    };
    let attrs = attributes(req.method(), req.uri().path(), req.uri().query());
    match state.authorizer.authorize(&*state.store, &user, &attrs) {
        Ok(d) if d.allowed => {}
        Ok(_) => {
            tracing::debug!(user = %user.name, verb = %attrs.verb, path = %attrs.path, "forbidden");
            return forbidden(&user, &attrs).into_response();
        }
        Err(e) => return e.into_response(),
    }
    req.extensions_mut().insert(user);
    next.run(req).await
}

/// Answers a SubjectAccessReview (`kind` names which) posted by `caller`; `namespace` is
/// the path's, for LocalSubjectAccessReview.
pub fn review(
    state: &AppState,
    caller: &User,
    kind: &str,
    namespace: Option<&str>,
    mut body: Value,
) -> Result<Value, ApiError> {
    let spec = &body["spec"];
    let subject = match kind {
        "SelfSubjectAccessReview" => caller.clone(),
        _ => {
            let user = spec["user"].as_str().unwrap_or_default().to_owned();
            let groups: Vec<String> = spec["groups"]
                .as_array()
                .into_iter()
                .flatten()
                .filter_map(|g| g.as_str().map(str::to_owned))
                .collect();
            if user.is_empty() && groups.is_empty() {
                return Err(ApiError::invalid(
                    kind,
                    "",
                    vec![json!({"reason": "FieldValueRequired", "field": "spec.user",
                        "message": "at least one of user or group must be specified"})],
                ));
            }
            User { name: user, groups }
        }
    };
    let resource = &spec["resourceAttributes"];
    let non_resource = &spec["nonResourceAttributes"];
    let text = |v: &Value| v.as_str().unwrap_or_default().to_owned();
    let attrs = match (resource.is_object(), non_resource.is_object()) {
        (true, false) => {
            let ns = text(&resource["namespace"]);
            if let Some(path_ns) = namespace
                && ns != path_ns
            {
                return Err(ApiError::invalid(
                    kind,
                    "",
                    vec![
                        json!({"reason": "FieldValueInvalid", "field": "spec.resourceAttributes.namespace",
                        "message": "must match metadata.namespace"}),
                    ],
                ));
            }
            Attributes {
                verb: text(&resource["verb"]),
                resource: Some(ResourceAttributes {
                    group: text(&resource["group"]),
                    resource: text(&resource["resource"]),
                    subresource: text(&resource["subresource"]),
                    namespace: ns,
                    name: text(&resource["name"]),
                }),
                path: String::new(),
            }
        }
        (false, true) => Attributes {
            verb: text(&non_resource["verb"]),
            resource: None,
            path: text(&non_resource["path"]),
        },
        _ => {
            return Err(ApiError::invalid(
                kind,
                "",
                vec![
                    json!({"reason": "FieldValueRequired", "field": "spec.resourceAttributes",
                    "message": "exactly one of nonResourceAttributes or resourceAttributes must be specified"}),
                ],
            ));
        }
    };
    let decision = state
        .authorizer
        .authorize(&*state.store, &subject, &attrs)?;
    if kind == "SelfSubjectAccessReview" {
        body["spec"]["user"] = Value::Null;
    }
    let mut status = json!({"allowed": decision.allowed});
    if !decision.reason.is_empty() {
        status["reason"] = json!(decision.reason);
    }
    body["status"] = status;
    if body["metadata"].is_null() {
        body["metadata"] = json!({});
    }
    body["metadata"]["creationTimestamp"] = Value::Null;
    Ok(body)
}

/// A ClusterRole with `rules`, each `(verbs, apiGroups, resources)`.
pub fn cluster_role(name: &str, labels: Value, rules: &[(&[&str], &[&str], &[&str])]) -> Value {
    let rules: Vec<Value> = rules
        .iter()
        .map(|(verbs, groups, resources)| {
            json!({"verbs": verbs, "apiGroups": groups, "resources": resources})
        })
        .collect();
    json!({"apiVersion": format!("{GROUP}/v1"), "kind": "ClusterRole",
           "metadata": {"name": name, "labels": labels}, "rules": rules})
}

/// A ClusterRoleBinding of ClusterRole `role` to `subjects` (`(kind, name)`).
pub fn cluster_role_binding(name: &str, role: &str, subjects: &[(&str, &str)]) -> Value {
    let subjects: Vec<Value> = subjects
        .iter()
        .map(|(kind, who)| match *kind {
            "ServiceAccount" => {
                let (ns, sa) = who.split_once(':').unwrap_or(("default", who));
                json!({"kind": kind, "name": sa, "namespace": ns})
            }
            _ => json!({"kind": kind, "name": who, "apiGroup": GROUP}),
        })
        .collect();
    json!({"apiVersion": format!("{GROUP}/v1"), "kind": "ClusterRoleBinding",
           "metadata": {"name": name, "labels": {"kubernetes.io/bootstrapping": "rbac-defaults"}},
           "roleRef": {"apiGroup": GROUP, "kind": "ClusterRole", "name": role},
           "subjects": subjects})
}

/// The roles and bindings a cluster starts with: Kubernetes' `cluster-admin`, `admin`,
/// `edit` and `view` (aggregated from `aggregate-to-*` ClusterRoles), discovery and
/// self-review for every authenticated user, health and version for everyone.
pub fn bootstrap_policy() -> Vec<Value> {
    const RW: &[&str] = &crate::discovery::VERBS;
    const R: &[&str] = &["get", "list", "watch"];
    let defaults = json!({"kubernetes.io/bootstrapping": "rbac-defaults"});
    let aggregate = |to: &str| {
        json!({"kubernetes.io/bootstrapping": "rbac-defaults",
               format!("rbac.authorization.k8s.io/aggregate-to-{to}"): "true"})
    };
    let aggregated = |name: &str, labels: Value, from: &str| {
        let mut role = cluster_role(name, labels, &[]);
        role["aggregationRule"] = json!({"clusterRoleSelectors": [
            {"matchLabels": {format!("rbac.authorization.k8s.io/aggregate-to-{from}"): "true"}}]});
        role
    };
    let mut admin = cluster_role(
        "cluster-admin",
        defaults.clone(),
        &[(&["*"], &["*"], &["*"])],
    );
    admin["rules"]
        .as_array_mut()
        .into_iter()
        .for_each(|rules| rules.push(json!({"verbs": ["*"], "nonResourceURLs": ["*"]})));
    let non_resource = |name: &str, urls: &[&str]| {
        json!({"apiVersion": format!("{GROUP}/v1"), "kind": "ClusterRole",
               "metadata": {"name": name, "labels": defaults},
               "rules": [{"verbs": ["get"], "nonResourceURLs": urls}]})
    };
    vec![
        admin,
        aggregated("admin", defaults.clone(), "admin"),
        aggregated("edit", aggregate("admin"), "edit"),
        aggregated("view", aggregate("edit"), "view"),
        cluster_role(
            "system:aggregate-to-admin",
            aggregate("admin"),
            &[
                (RW, &[GROUP], &["roles", "rolebindings"]),
                (
                    &["create"],
                    &["authorization.k8s.io"],
                    &["localsubjectaccessreviews"],
                ),
            ],
        ),
        cluster_role(
            "system:aggregate-to-edit",
            aggregate("edit"),
            &[
                (
                    RW,
                    &[""],
                    &[
                        "pods",
                        "services",
                        "configmaps",
                        "secrets",
                        "serviceaccounts",
                        "persistentvolumeclaims",
                    ],
                ),
                (
                    R,
                    &[""],
                    &[
                        "pods/attach",
                        "pods/exec",
                        "pods/portforward",
                        "pods/proxy",
                        "secrets",
                    ],
                ),
                (
                    &["create"],
                    &[""],
                    &["pods/attach", "pods/exec", "pods/portforward"],
                ),
                (&["impersonate"], &[""], &["serviceaccounts"]),
            ],
        ),
        cluster_role(
            "system:aggregate-to-view",
            aggregate("view"),
            &[(
                R,
                &[""],
                &[
                    "pods",
                    "pods/log",
                    "pods/status",
                    "services",
                    "services/status",
                    "configmaps",
                    "events",
                    "serviceaccounts",
                    "persistentvolumeclaims",
                    "namespaces",
                    "namespaces/status",
                ],
            )],
        ),
        non_resource(
            "system:discovery",
            &[
                "/livez",
                "/readyz",
                "/healthz",
                "/version",
                "/version/",
                "/openapi",
                "/openapi/*",
                "/api",
                "/api/*",
                "/apis",
                "/apis/*",
            ],
        ),
        non_resource(
            "system:public-info-viewer",
            &["/livez", "/readyz", "/healthz", "/version", "/version/"],
        ),
        cluster_role(
            "system:basic-user",
            defaults.clone(),
            &[(
                &["create"],
                &["authorization.k8s.io"],
                &["selfsubjectaccessreviews", "selfsubjectrulesreviews"],
            )],
        ),
        cluster_role_binding("cluster-admin", "cluster-admin", &[("Group", MASTERS)]),
        cluster_role_binding(
            "system:discovery",
            "system:discovery",
            &[("Group", AUTHENTICATED)],
        ),
        cluster_role_binding(
            "system:basic-user",
            "system:basic-user",
            &[("Group", AUTHENTICATED)],
        ),
        cluster_role_binding(
            "system:public-info-viewer",
            "system:public-info-viewer",
            &[("Group", AUTHENTICATED), ("Group", UNAUTHENTICATED)],
        ),
    ]
}

#[cfg(test)]
mod tests {
    use super::*;

    fn user(name: &str, groups: &[&str]) -> User {
        User {
            name: name.to_owned(),
            groups: groups.iter().map(|g| (*g).to_owned()).collect(),
        }
    }

    fn put(ns: &str, name: &str, sub: &str) -> Attributes {
        let path = format!(
            "/apis/subresources.kubevirt.io/v1/namespaces/{ns}/virtualmachines/{name}/{sub}"
        );
        attributes(&Method::PUT, &path, None)
    }

    #[test]
    fn requests_read_as_kubernetes_reads_them() {
        let a = attributes(
            &Method::GET,
            "/apis/kubevirt.io/v1/namespaces/default/virtualmachines",
            Some("watch=true&limit=5"),
        );
        let r = a.resource.unwrap();
        assert_eq!(
            (
                a.verb.as_str(),
                r.group.as_str(),
                r.resource.as_str(),
                r.namespace.as_str()
            ),
            ("watch", "kubevirt.io", "virtualmachines", "default")
        );
        let a = put("ns1", "vm1", "start");
        let r = a.resource.unwrap();
        assert_eq!(
            (a.verb.as_str(), r.subresource.as_str(), r.name.as_str()),
            ("update", "start", "vm1")
        );
        // Only the segment after the name is the subresource, as kube-apiserver reads it.
        let a = attributes(
            &Method::GET,
            "/apis/subresources.kubevirt.io/v1/namespaces/d/virtualmachineinstances/v/vnc/screenshot",
            None,
        );
        assert_eq!(a.resource.unwrap().subresource, "vnc");
        let a = attributes(&Method::DELETE, "/api/v1/namespaces/d/pods", None);
        assert_eq!(a.verb, "deletecollection");
        let a = attributes(&Method::GET, "/api/v1/namespaces/d", None);
        let r = a.resource.unwrap();
        assert_eq!(
            (
                a.verb.as_str(),
                r.resource.as_str(),
                r.name.as_str(),
                r.namespace.as_str()
            ),
            ("get", "namespaces", "d", "d")
        );
        for path in [
            "/version",
            "/apis",
            "/apis/kubevirt.io",
            "/api/v1",
            "/openapi/v3/apis/kubevirt.io/v1",
        ] {
            let a = attributes(&Method::GET, path, None);
            assert_eq!(
                (a.verb.as_str(), a.resource.is_none()),
                ("get", true),
                "{path}"
            );
        }
    }

    #[test]
    fn bindings_grant_what_their_roles_allow_where_they_apply() {
        let mut objects = bootstrap_policy();
        objects.push(json!({"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRole",
            "metadata": {"name": "vm-user", "labels": {"rbac.authorization.k8s.io/aggregate-to-edit": "true"}},
            "rules": [{"apiGroups": ["subresources.kubevirt.io"], "resources": ["virtualmachines/start"], "verbs": ["update"]},
                      {"apiGroups": ["kubevirt.io"], "resources": ["virtualmachines"], "verbs": ["get"], "resourceNames": ["only"]}]}));
        objects.push(json!({"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "RoleBinding",
            "metadata": {"name": "alice-edit", "namespace": "team"},
            "roleRef": {"apiGroup": GROUP, "kind": "ClusterRole", "name": "edit"},
            "subjects": [{"kind": "User", "name": "alice"}, {"kind": "ServiceAccount", "name": "robot"}]}));
        let policy = Policy::from_objects(objects);
        let alice = user("alice", &[AUTHENTICATED]);
        let allowed = |u: &User, a: &Attributes| policy.authorize(u, a).allowed;

        // Through `edit`, which aggregates vm-user, in the binding's namespace only.
        let d = policy.authorize(&alice, &put("team", "vm1", "start"));
        assert!(d.allowed);
        assert_eq!(
            d.reason,
            "RBAC: allowed by RoleBinding \"alice-edit/team\" of ClusterRole \"edit\" to User \"alice\""
        );
        assert!(!allowed(&alice, &put("other", "vm1", "start")));
        // A rule for one subresource is not one for another, nor for the resource.
        assert!(!allowed(&alice, &put("team", "vm1", "stop")));
        let get = |name: &str| {
            attributes(
                &Method::GET,
                &format!("/apis/kubevirt.io/v1/namespaces/team/virtualmachines/{name}"),
                None,
            )
        };
        assert!(allowed(&alice, &get("only")));
        assert!(!allowed(&alice, &get("another")));
        // The ServiceAccount subject takes the binding's namespace.
        let robot = user("system:serviceaccount:team:robot", &[AUTHENTICATED]);
        assert!(allowed(&robot, &put("team", "vm1", "start")));
        assert!(!allowed(
            &user("system:serviceaccount:other:robot", &[]),
            &put("team", "vm1", "start")
        ));
        // Everyone authenticated may discover and review itself; anonymous users may read
        // the version only; system:masters may do anything.
        let discovery = attributes(&Method::GET, "/apis/kubevirt.io/v1", None);
        assert!(allowed(&user("bob", &[AUTHENTICATED]), &discovery));
        assert!(!allowed(&user(ANONYMOUS, &[UNAUTHENTICATED]), &discovery));
        assert!(allowed(
            &user(ANONYMOUS, &[UNAUTHENTICATED]),
            &attributes(&Method::GET, "/version", None)
        ));
        assert!(allowed(
            &user("root", &[MASTERS]),
            &put("any", "vm", "start")
        ));
        assert!(!allowed(
            &user("bob", &[AUTHENTICATED]),
            &put("team", "vm1", "start")
        ));
    }

    #[test]
    fn refusals_say_who_could_not_do_what() {
        let alice = user("alice", &[]);
        let e = forbidden(&alice, &put("default", "testvm", "start"));
        assert_eq!(e.code, 403);
        assert_eq!(
            e.message,
            "virtualmachines.subresources.kubevirt.io \"testvm\" is forbidden: User \"alice\" cannot update resource \"virtualmachines/start\" in API group \"subresources.kubevirt.io\" in the namespace \"default\""
        );
        assert_eq!(
            e.details,
            Some(
                json!({"group": "subresources.kubevirt.io", "kind": "virtualmachines", "name": "testvm"})
            )
        );
        let e = forbidden(&alice, &attributes(&Method::GET, "/api/v1/nodes", None));
        assert_eq!(
            e.message,
            "nodes is forbidden: User \"alice\" cannot list resource \"nodes\" in API group \"\" at the cluster scope"
        );
        let e = forbidden(&alice, &attributes(&Method::GET, "/metrics", None));
        assert_eq!(
            e.message,
            "forbidden: User \"alice\" cannot get path \"/metrics\""
        );
    }
}
