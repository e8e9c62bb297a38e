//! The Node and Lease objects this node writes, as pure functions of the machine's facts,
//! the node's settings, what the API holds already and the time — so what a node
//! reports is tested without a server.

use std::collections::BTreeMap;
use std::net::Ipv4Addr;

use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::api::core::v1::{
    ContainerImage, DaemonEndpoint, Node, NodeAddress, NodeCondition, NodeDaemonEndpoints, NodeStatus, NodeSystemInfo,
};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{MicroTime, ObjectMeta, OwnerReference, Time};
use k8s_openapi::jiff::Timestamp;

use super::facts::MachineFacts;

/// The namespace of node heartbeat Leases.
pub const LEASE_NAMESPACE: &str = "kube-node-lease";
/// How long a Lease stays valid without renewal (upstream's default).
pub const LEASE_DURATION_S: i32 = 40;
/// The Kubernetes version whose kubelet API this agent speaks, shown by `kubectl get nodes`.
pub const KUBELET_VERSION: &str = concat!("v1.32.0-skiff.", env!("CARGO_PKG_VERSION"));

/// The port of the kubelet server (`crate::server`), told to the API server in
/// `status.daemonEndpoints` so that `pods/log` and `pods/exec` find it.
pub const KUBELET_PORT: u16 = 10250;

/// Memory below this is MemoryPressure (upstream's default hard eviction threshold).
const MEMORY_PRESSURE_KIB: u64 = 100 * 1024;
/// A root file system with less free space than this share is DiskPressure.
const DISK_PRESSURE_FREE: f64 = 0.10;
/// More processes than this share of pid_max is PIDPressure.
const PID_PRESSURE_USED: f64 = 0.90;

/// What the node says about itself besides the machine's facts.
#[derive(Clone, Debug)]
pub struct NodeSettings {
    pub name: String,
    /// The address other nodes and the control plane reach this node at.
    pub internal_ip: Option<Ipv4Addr>,
    pub max_pods: u32,
    /// The container runtime as nodeInfo shows it (`containerd://1.6.20`); empty without one.
    pub container_runtime_version: String,
    /// Where the kubelet server listens (the Node's daemonEndpoints).
    pub kubelet_port: u16,
    /// Where this node's local-path volumes live, when it runs a kubelet: announced in
    /// the [`LOCAL_PATH_DIR_ANNOTATION`] for the provisioner.
    pub local_path_dir: Option<std::path::PathBuf>,
}

/// The Node annotation that tells the local-path provisioner where this node's
/// volumes live.
pub const LOCAL_PATH_DIR_ANNOTATION: &str = "skiff.io/local-path-dir";

/// The annotations a node sets on itself.
pub fn annotations(settings: &NodeSettings) -> BTreeMap<String, String> {
    let dir = settings.local_path_dir.as_ref().map(|d| d.to_string_lossy().into_owned());
    dir.map(|d| (LOCAL_PATH_DIR_ANNOTATION.to_string(), d)).into_iter().collect()
}

/// The Node to create when there is none: name and the well-known labels. The status
/// follows in a separate write, as the status subresource is where it belongs.
pub fn new_node(settings: &NodeSettings, facts: &MachineFacts) -> Node {
    Node {
        metadata: ObjectMeta {
            name: Some(settings.name.clone()),
            labels: Some(labels(settings, facts)),
            annotations: Some(annotations(settings)).filter(|a| !a.is_empty()),
            ..Default::default()
        },
        ..Default::default()
    }
}

/// The labels a node sets on itself.
pub fn labels(settings: &NodeSettings, facts: &MachineFacts) -> BTreeMap<String, String> {
    [
        ("kubernetes.io/hostname", settings.name.as_str()),
        ("kubernetes.io/os", "linux"),
        ("kubernetes.io/arch", facts.architecture),
        ("beta.kubernetes.io/os", "linux"),
        ("beta.kubernetes.io/arch", facts.architecture),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v.to_string()))
    .collect()
}

/// The node's status now. `previous` is the status the API holds, so that a condition
/// keeps its lastTransitionTime while it does not change.
pub fn status(
    settings: &NodeSettings,
    facts: &MachineFacts,
    previous: Option<&NodeStatus>,
    now: Timestamp,
) -> NodeStatus {
    let capacity: BTreeMap<String, Quantity> = [
        ("cpu", facts.cpus.to_string()),
        ("memory", format!("{}Ki", facts.memory_kib)),
        ("pods", settings.max_pods.to_string()),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), Quantity(v)))
    .collect();
    let mut addresses = Vec::new();
    if let Some(ip) = settings.internal_ip {
        addresses.push(NodeAddress { type_: "InternalIP".into(), address: ip.to_string() });
    }
    addresses.push(NodeAddress { type_: "Hostname".into(), address: settings.name.clone() });
    NodeStatus {
        allocatable: Some(capacity.clone()),
        capacity: Some(capacity),
        addresses: Some(addresses),
        daemon_endpoints: Some(NodeDaemonEndpoints {
            kubelet_endpoint: Some(DaemonEndpoint { port: i32::from(settings.kubelet_port) }),
        }),
        conditions: Some(conditions(facts, previous.and_then(|s| s.conditions.as_deref()).unwrap_or(&[]), now)),
        images: (!facts.runtime.images.is_empty()).then(|| {
            facts
                .runtime
                .images
                .iter()
                .map(|(names, size)| ContainerImage {
                    names: Some(names.clone()),
                    size_bytes: i64::try_from(*size).ok(),
                })
                .collect()
        }),
        node_info: Some(NodeSystemInfo {
            machine_id: facts.machine_id.clone(),
            system_uuid: facts.machine_id.clone(),
            boot_id: facts.boot_id.clone(),
            kernel_version: facts.kernel_version.clone(),
            os_image: facts.os_image.clone(),
            operating_system: "linux".into(),
            architecture: facts.architecture.into(),
            kubelet_version: KUBELET_VERSION.into(),
            kube_proxy_version: KUBELET_VERSION.into(),
            container_runtime_version: settings.container_runtime_version.clone(),
            ..Default::default()
        }),
        ..Default::default()
    }
}

/// Ready and the three pressure conditions, each with the reason and message the kubelet uses.
fn conditions(facts: &MachineFacts, previous: &[NodeCondition], now: Timestamp) -> Vec<NodeCondition> {
    let memory = facts.memory_available_kib < MEMORY_PRESSURE_KIB && facts.memory_kib > 0;
    let disk = facts.root_fs_free < DISK_PRESSURE_FREE;
    let pids = facts.pid_max > 0 && facts.processes as f64 > facts.pid_max as f64 * PID_PRESSURE_USED;
    let pressure = |type_: &str, on: bool, has: &str, lacks: &str, what: &str| {
        let (reason, message) = if on {
            (has.to_string(), format!("skiff-node has {what} pressure"))
        } else {
            (lacks.to_string(), format!("skiff-node has no {what} pressure"))
        };
        (type_.to_string(), on, reason, message)
    };
    let wanted = [
        match &facts.runtime.not_ready {
            None => (
                "Ready".to_string(),
                true,
                "KubeletReady".to_string(),
                "skiff-node is posting ready status".to_string(),
            ),
            Some(why) => ("Ready".to_string(), false, "KubeletNotReady".to_string(), why.clone()),
        },
        pressure("MemoryPressure", memory, "KubeletHasInsufficientMemory", "KubeletHasSufficientMemory", "memory"),
        pressure("DiskPressure", disk, "KubeletHasDiskPressure", "KubeletHasNoDiskPressure", "disk"),
        pressure("PIDPressure", pids, "KubeletHasInsufficientPID", "KubeletHasSufficientPID", "PID"),
    ];
    wanted
        .into_iter()
        .map(|(type_, on, reason, message)| {
            let status = if on { "True" } else { "False" };
            let since = previous
                .iter()
                .find(|c| c.type_ == type_ && c.status == status)
                .and_then(|c| c.last_transition_time.clone())
                .unwrap_or(Time(now));
            NodeCondition {
                type_,
                status: status.into(),
                reason: Some(reason),
                message: Some(message),
                last_heartbeat_time: Some(Time(now)),
                last_transition_time: Some(since),
            }
        })
        .collect()
}

/// This node's heartbeat Lease, owned by its Node (so it goes when the Node goes).
pub fn new_lease(node: &str, node_uid: Option<&str>, now: Timestamp) -> Lease {
    Lease {
        metadata: ObjectMeta {
            name: Some(node.into()),
            namespace: Some(LEASE_NAMESPACE.into()),
            owner_references: node_uid.map(|uid| {
                vec![OwnerReference {
                    api_version: "v1".into(),
                    kind: "Node".into(),
                    name: node.into(),
                    uid: uid.into(),
                    ..Default::default()
                }]
            }),
            ..Default::default()
        },
        spec: Some(LeaseSpec {
            holder_identity: Some(node.into()),
            lease_duration_seconds: Some(LEASE_DURATION_S),
            renew_time: Some(MicroTime(now)),
            ..Default::default()
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn facts() -> MachineFacts {
        MachineFacts {
            cpus: 2,
            memory_kib: 24_000_000,
            memory_available_kib: 20_000_000,
            kernel_version: "6.18.0".into(),
            os_image: "Debian GNU/Linux 12 (bookworm)".into(),
            architecture: "amd64",
            machine_id: "m".into(),
            boot_id: "b".into(),
            root_fs_free: 0.5,
            processes: 300,
            pid_max: 4_194_304,
            runtime: Default::default(),
        }
    }

    fn settings() -> NodeSettings {
        NodeSettings {
            name: "n1".into(),
            internal_ip: Some(Ipv4Addr::new(192, 168, 77, 11)),
            max_pods: 110,
            container_runtime_version: String::new(),
            kubelet_port: KUBELET_PORT,
            local_path_dir: Some("/var/lib/skiff/storage/n1".into()),
        }
    }

    fn condition<'a>(s: &'a NodeStatus, type_: &str) -> &'a NodeCondition {
        s.conditions.as_ref().unwrap().iter().find(|c| c.type_ == type_).unwrap()
    }

    #[test]
    fn status_reports_capacity_addresses_and_ready() {
        let s = status(&settings(), &facts(), None, Timestamp::from_second(1000).unwrap());
        let cap = s.capacity.as_ref().unwrap();
        assert_eq!(cap["cpu"].0, "2");
        assert_eq!(cap["memory"].0, "24000000Ki");
        assert_eq!(cap["pods"].0, "110");
        assert_eq!(s.allocatable, s.capacity);
        let addresses: Vec<_> =
            s.addresses.as_ref().unwrap().iter().map(|a| (a.type_.as_str(), a.address.as_str())).collect();
        assert_eq!(addresses, [("InternalIP", "192.168.77.11"), ("Hostname", "n1")]);
        assert_eq!(s.daemon_endpoints.as_ref().and_then(|d| d.kubelet_endpoint.as_ref()).map(|e| e.port), Some(10250));
        assert_eq!(condition(&s, "Ready").status, "True");
        for pressure in ["MemoryPressure", "DiskPressure", "PIDPressure"] {
            assert_eq!(condition(&s, pressure).status, "False", "{pressure}");
        }
        assert_eq!(s.node_info.as_ref().unwrap().kubelet_version, KUBELET_VERSION);
    }

    #[test]
    fn pressure_conditions_follow_the_facts() {
        let f = MachineFacts { memory_available_kib: 50 * 1024, root_fs_free: 0.05, processes: 4_000_000, ..facts() };
        let s = status(&settings(), &f, None, Timestamp::from_second(1000).unwrap());
        for (pressure, reason) in [
            ("MemoryPressure", "KubeletHasInsufficientMemory"),
            ("DiskPressure", "KubeletHasDiskPressure"),
            ("PIDPressure", "KubeletHasInsufficientPID"),
        ] {
            assert_eq!(condition(&s, pressure).status, "True", "{pressure}");
            assert_eq!(condition(&s, pressure).reason.as_deref(), Some(reason));
        }
    }

    #[test]
    fn a_condition_keeps_its_transition_time_while_unchanged() {
        let t1 = Timestamp::from_second(1000).unwrap();
        let t2 = Timestamp::from_second(2000).unwrap();
        let first = status(&settings(), &facts(), None, t1);
        let second = status(&settings(), &facts(), Some(&first), t2);
        let ready = condition(&second, "Ready");
        assert_eq!(ready.last_transition_time, Some(Time(t1)));
        assert_eq!(ready.last_heartbeat_time, Some(Time(t2)));
        let pressed = MachineFacts { memory_available_kib: 1, ..facts() };
        let third = status(&settings(), &pressed, Some(&second), t2);
        assert_eq!(condition(&third, "MemoryPressure").last_transition_time, Some(Time(t2)));
    }

    #[test]
    fn labels_and_lease() {
        let n = new_node(&settings(), &facts());
        let labels = n.metadata.labels.unwrap();
        assert_eq!(labels["kubernetes.io/hostname"], "n1");
        assert_eq!(labels["kubernetes.io/arch"], "amd64");
        let l = new_lease("n1", Some("uid-1"), Timestamp::from_second(5).unwrap());
        assert_eq!(l.metadata.namespace.as_deref(), Some(LEASE_NAMESPACE));
        assert_eq!(l.metadata.owner_references.unwrap()[0].uid, "uid-1");
        assert_eq!(l.spec.unwrap().holder_identity.as_deref(), Some("n1"));
    }
}
