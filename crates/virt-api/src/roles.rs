//! The ClusterRoles upstream's virt-operator installs for users, so that
//! `kubectl create rolebinding ... --clusterrole=kubevirt.io:edit` works as it does there.
//!
//! `kubevirt.io:admin`, `:edit` and `:view` carry the `aggregate-to-*` labels: Kubernetes'
//! `admin`, `edit` and `view` roles take their rules in. `kubevirt.io:default` (bound to
//! every authenticated user) reads the version; `kubevirt.io:migrate` is bound by hand.
//! The rule lists are upstream's (`pkg/virt-operator/resource/generate/rbac/cluster.go`),
//! also for kinds this project does not serve yet (snapshots, exports, clones, pools):
//! a binding made now keeps working when they arrive.

use serde_json::{Value, json};

const RBAC: &str = "rbac.authorization.k8s.io";
const SUB: &str = "subresources.kubevirt.io";
const ALL: &[&str] = &[
    "get",
    "delete",
    "create",
    "update",
    "patch",
    "list",
    "watch",
    "deletecollection",
];
const WRITE: &[&str] = &[
    "get", "delete", "create", "update", "patch", "list", "watch",
];
const READ: &[&str] = &["get", "list", "watch"];
const INSTANCETYPES: &[&str] = &[
    "virtualmachineinstancetypes",
    "virtualmachineclusterinstancetypes",
    "virtualmachinepreferences",
    "virtualmachineclusterpreferences",
];
const KUBEVIRT_KINDS: &[&str] = &[
    "virtualmachines",
    "virtualmachineinstances",
    "virtualmachineinstancepresets",
    "virtualmachineinstancereplicasets",
];
/// Subresources that read from a VMI, for users who may use it.
const VMI_READ: &[&str] = &[
    "virtualmachineinstances/console",
    "virtualmachineinstances/vnc",
    "virtualmachineinstances/portforward",
    "virtualmachineinstances/guestosinfo",
    "virtualmachineinstances/filesystemlist",
    "virtualmachineinstances/userlist",
    "virtualmachineinstances/sev/fetchcertchain",
    "virtualmachineinstances/sev/querylaunchmeasurement",
    "virtualmachineinstances/usbredir",
    "virtualmachines/objectgraph",
    "virtualmachineinstances/objectgraph",
];
const VMI_ACT: &[&str] = &[
    "virtualmachineinstances/pause",
    "virtualmachineinstances/unpause",
    "virtualmachineinstances/addvolume",
    "virtualmachineinstances/removevolume",
    "virtualmachineinstances/freeze",
    "virtualmachineinstances/unfreeze",
    "virtualmachineinstances/softreboot",
    "virtualmachineinstances/reset",
    "virtualmachineinstances/sev/setupsession",
    "virtualmachineinstances/sev/injectlaunchsecret",
    "virtualmachineinstances/evacuate/cancel",
];
const VM_ACT: &[&str] = &[
    "virtualmachines/start",
    "virtualmachines/stop",
    "virtualmachines/restart",
    "virtualmachines/addvolume",
    "virtualmachines/removevolume",
    "virtualmachines/memorydump",
    "virtualmachines/removememorydump",
    "virtualmachines/evacuate/cancel",
];

fn rule(groups: &[&str], resources: &[&str], verbs: &[&str]) -> Value {
    json!({"apiGroups": groups, "resources": resources, "verbs": verbs})
}

fn role(name: &str, aggregate_to: Option<&str>, rules: Vec<Value>) -> Value {
    let mut labels = json!({"kubevirt.io": ""});
    if let Some(to) = aggregate_to {
        labels[format!("{RBAC}/aggregate-to-{to}")] = json!("true");
    }
    json!({"apiVersion": format!("{RBAC}/v1"), "kind": "ClusterRole",
           "metadata": {"name": name, "labels": labels}, "rules": rules})
}

fn binding_to_authenticated(name: &str) -> Value {
    json!({"apiVersion": format!("{RBAC}/v1"), "kind": "ClusterRoleBinding",
           "metadata": {"name": name, "labels": {"kubevirt.io": ""}},
           "roleRef": {"apiGroup": RBAC, "kind": "ClusterRole", "name": name},
           "subjects": [{"kind": "Group", "name": "system:authenticated", "apiGroup": RBAC}]})
}

/// The rules admin, edit and view share after the subresources: every kubevirt kind
/// with `verbs` (migrations and migration policies read-only), plugins when asked.
fn other_groups(verbs: &[&str], plugins: bool) -> Vec<Value> {
    let mut rules = vec![
        rule(&["kubevirt.io"], KUBEVIRT_KINDS, verbs),
        rule(
            &["kubevirt.io"],
            &["virtualmachineinstancemigrations"],
            READ,
        ),
        rule(
            &["snapshot.kubevirt.io"],
            &[
                "virtualmachinesnapshots",
                "virtualmachinesnapshotcontents",
                "virtualmachinerestores",
            ],
            verbs,
        ),
        rule(
            &["backup.kubevirt.io"],
            &["virtualmachinebackups", "virtualmachinebackuptrackers"],
            verbs,
        ),
        rule(&["export.kubevirt.io"], &["virtualmachineexports"], verbs),
        rule(&["clone.kubevirt.io"], &["virtualmachineclones"], verbs),
        rule(&["instancetype.kubevirt.io"], INSTANCETYPES, verbs),
        rule(&["pool.kubevirt.io"], &["virtualmachinepools"], verbs),
        rule(&["migrations.kubevirt.io"], &["migrationpolicies"], READ),
    ];
    if plugins {
        rules.push(rule(&["plugin.kubevirt.io"], &["plugins"], verbs));
    }
    rules
}

/// The ClusterRoles and ClusterRoleBindings, as `kubectl apply` would take them.
pub fn objects() -> Vec<Value> {
    let mut admin_read = VMI_READ.to_vec();
    admin_read.push("virtualmachineinstances/vnc/screenshot");
    let subresources = |read: &[&str]| {
        vec![
            rule(&[SUB], read, &["get"]),
            rule(&[SUB], VMI_ACT, &["update"]),
            rule(
                &[SUB],
                &["virtualmachines/expand-spec", "virtualmachines/portforward"],
                &["get"],
            ),
            rule(&[SUB], VM_ACT, &["update"]),
            rule(&[SUB], &["expand-vm-spec"], &["update"]),
        ]
    };
    let mut admin = subresources(&admin_read);
    admin.extend(other_groups(ALL, true));
    let mut edit = subresources(VMI_READ);
    edit.extend(other_groups(WRITE, false));
    edit.push(rule(&["kubevirt.io"], &["kubevirts"], &["get", "list"]));
    let mut view = vec![
        rule(&["kubevirt.io"], &["kubevirts"], &["get", "list"]),
        rule(
            &[SUB],
            &[
                "virtualmachines/expand-spec",
                "virtualmachineinstances/guestosinfo",
                "virtualmachineinstances/filesystemlist",
                "virtualmachineinstances/userlist",
                "virtualmachineinstances/sev/fetchcertchain",
                "virtualmachineinstances/sev/querylaunchmeasurement",
                "virtualmachines/objectgraph",
                "virtualmachineinstances/objectgraph",
            ],
            &["get"],
        ),
        rule(&[SUB], &["expand-vm-spec"], &["update"]),
    ];
    // Reading every kind of every kubevirt group, plugins included.
    view.extend(other_groups(READ, true));
    vec![
        role(
            "kubevirt.io:default",
            None,
            vec![
                rule(&["kubevirt.io"], &["kubevirts"], &["get", "list"]),
                rule(&[SUB], &["version", "guestfs"], &["get", "list"]),
            ],
        ),
        binding_to_authenticated("kubevirt.io:default"),
        role("kubevirt.io:admin", Some("admin"), admin),
        role("kubevirt.io:edit", Some("edit"), edit),
        role("kubevirt.io:view", Some("view"), view),
        role(
            "kubevirt.io:migrate",
            None,
            vec![
                rule(&[SUB], &["virtualmachines/migrate"], &["update"]),
                rule(&["kubevirt.io"], &["virtualmachineinstancemigrations"], ALL),
            ],
        ),
        role(
            "instancetype.kubevirt.io:view",
            None,
            vec![rule(
                &["instancetype.kubevirt.io"],
                &[
                    "virtualmachineclusterinstancetypes",
                    "virtualmachineclusterpreferences",
                ],
                READ,
            )],
        ),
        binding_to_authenticated("instancetype.kubevirt.io:view"),
    ]
}
