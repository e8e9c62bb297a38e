//! The kubelet's [`ResourceStats`]: what the kubelet server's `/metrics/resource`
//! reports, read from the runtime and the kernel at scrape time.
//!
//! - Containers: CRI `ListContainerStats` (containerd reads each container's cgroup:
//!   cumulative CPU nanoseconds and the memory working set), for the running
//!   containers this agent made (`ListContainers` with its label; their creation time
//!   stands in for the start time).
//! - Pods: CRI `ListPodSandboxStats` where the runtime implements it (the pod's whole
//!   cgroup), else the sum of the pod's containers.
//! - The node: the cgroup every pod's cgroup goes under (`cgroup_root`), not the whole
//!   machine's `/proc/stat`. A local cluster's nodes are network namespaces on one
//!   machine sharing one kernel, so the machine's figures would be every node's at
//!   once; the node's pods' subtree is what is this node's own. (On a machine of its
//!   own this leaves out the agent and the system daemons, which upstream counts.)
//!
//! It only reads; it must not change the runtime or the cgroups.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};

use crate::cri::{CriClient, api, labels};
use crate::server::resource_metrics::{ContainerStats, NodeStats, PodStats, ResourceStats, Usage};
use crate::server::{BoxError, BoxFuture};

/// Reads the node's pods' figures from the runtime and their cgroup subtree.
#[derive(Debug)]
pub struct CriStats {
    cri: CriClient,
    /// The cgroupfs path every pod's cgroup goes under (`/skiff/<node>`).
    cgroup_root: String,
    /// Set once the runtime said it has no `ListPodSandboxStats`, so it is not asked
    /// again at every scrape.
    no_sandbox_stats: AtomicBool,
    /// Set once the log has said that the runtime's pod figures are used.
    told_sandbox_stats: AtomicBool,
}

impl CriStats {
    pub fn new(cri: CriClient, cgroup_root: &str) -> Self {
        Self {
            cri,
            cgroup_root: cgroup_root.to_string(),
            no_sandbox_stats: AtomicBool::new(false),
            told_sandbox_stats: AtomicBool::new(false),
        }
    }

    async fn read(&self) -> Result<NodeStats, BoxError> {
        let managed = HashMap::from([(labels::MANAGED_BY.to_string(), labels::MANAGED_BY_VALUE.to_string())]);
        let containers = self.cri.list_containers(managed).await?;
        let running: HashMap<&str, &api::Container> = containers
            .iter()
            .filter(|c| c.state == api::ContainerState::ContainerRunning as i32)
            .map(|c| (c.id.as_str(), c))
            .collect();
        let stats = self.cri.list_container_stats().await?;
        let sandboxes = if self.no_sandbox_stats.load(Ordering::Relaxed) {
            Vec::new()
        } else {
            match self.cri.list_pod_sandbox_stats().await {
                Ok(s) => {
                    if !s.is_empty() && !self.told_sandbox_stats.swap(true, Ordering::Relaxed) {
                        tracing::info!(pods = s.len(), "pod figures come from the runtime's ListPodSandboxStats");
                    }
                    s
                }
                Err(crate::cri::Error::Status { code: tonic::Code::Unimplemented, .. }) => {
                    tracing::info!("the runtime has no ListPodSandboxStats: pod figures are their containers' sums");
                    self.no_sandbox_stats.store(true, Ordering::Relaxed);
                    Vec::new()
                }
                Err(e) => {
                    tracing::debug!(error = %e, "ListPodSandboxStats failed: pod figures are their containers' sums");
                    Vec::new()
                }
            }
        };
        let mut node = NodeStats { node: None, pods: pods_of(&running, &stats, &sandboxes) };
        // No cgroup yet means no pod has run here: the node's pods use nothing.
        let idle = Usage { timestamp_ms: now_ms(), cpu_seconds: 0.0, memory_working_set_bytes: 0 };
        node.node = node_usage(&self.cgroup_root, &read_file)
            .or_else(|| sum(node.pods.iter().filter_map(|p| p.usage)))
            .or(Some(idle));
        Ok(node)
    }
}

impl ResourceStats for CriStats {
    fn stats(&self) -> BoxFuture<'_, Result<NodeStats, BoxError>> {
        Box::pin(self.read())
    }
}

fn read_file(p: &Path) -> Option<String> {
    std::fs::read_to_string(p).ok()
}

fn now_ms() -> i64 {
    jiff::Timestamp::now().as_millisecond()
}

/// A CRI sample as a [`Usage`]: the CPU reading's time (nanoseconds) in milliseconds.
fn usage_of(cpu: Option<&api::CpuUsage>, memory: Option<&api::MemoryUsage>) -> Option<Usage> {
    let cpu = cpu?;
    let nanos = cpu.usage_core_nano_seconds.as_ref()?.value;
    let timestamp_ms = if cpu.timestamp > 0 { cpu.timestamp / 1_000_000 } else { now_ms() };
    Some(Usage {
        timestamp_ms,
        cpu_seconds: nanos as f64 / 1e9,
        memory_working_set_bytes: memory.and_then(|m| m.working_set_bytes.as_ref()).map_or(0, |v| v.value),
    })
}

/// The sum of several samples, at the latest of their times.
fn sum(samples: impl Iterator<Item = Usage>) -> Option<Usage> {
    samples.reduce(|a, b| Usage {
        timestamp_ms: a.timestamp_ms.max(b.timestamp_ms),
        cpu_seconds: a.cpu_seconds + b.cpu_seconds,
        memory_working_set_bytes: a.memory_working_set_bytes + b.memory_working_set_bytes,
    })
}

/// The pods of the running containers in `running`, with their containers' samples and
/// the pod's own from `sandboxes` where there is one.
fn pods_of(
    running: &HashMap<&str, &api::Container>,
    stats: &[api::ContainerStats],
    sandboxes: &[api::PodSandboxStats],
) -> Vec<PodStats> {
    let mut pods: BTreeMap<(String, String), PodStats> = BTreeMap::new();
    for s in stats {
        let Some(attrs) = &s.attributes else { continue };
        let Some(container) = running.get(attrs.id.as_str()) else { continue };
        let (Some(pod), Some(ns)) =
            (container.labels.get(labels::POD_NAME), container.labels.get(labels::POD_NAMESPACE))
        else {
            continue;
        };
        let Some(usage) = usage_of(s.cpu.as_ref(), s.memory.as_ref()) else { continue };
        let name = container.metadata.as_ref().map(|m| m.name.clone()).unwrap_or_default();
        let start = (container.created_at > 0).then(|| container.created_at as f64 / 1e9);
        pods.entry((ns.clone(), pod.clone()))
            .or_insert_with(|| PodStats {
                namespace: ns.clone(),
                name: pod.clone(),
                usage: None,
                containers: Vec::new(),
            })
            .containers
            .push(ContainerStats { name, start_time_seconds: start, usage });
    }
    let own: HashMap<(&str, &str), Usage> = sandboxes
        .iter()
        .filter_map(|s| {
            let a = s.attributes.as_ref()?;
            let linux = s.linux.as_ref()?;
            let key = (a.labels.get(labels::POD_NAMESPACE)?.as_str(), a.labels.get(labels::POD_NAME)?.as_str());
            Some((key, usage_of(linux.cpu.as_ref(), linux.memory.as_ref())?))
        })
        .collect();
    pods.into_values()
        .map(|mut p| {
            p.containers.sort_by(|a, b| a.name.cmp(&b.name));
            p.usage = own
                .get(&(p.namespace.as_str(), p.name.as_str()))
                .copied()
                .or_else(|| sum(p.containers.iter().map(|c| c.usage)));
            p
        })
        .collect()
}

/// The cgroup hierarchies by mount point: `(dir, is_v2, options)`.
fn mounts(text: &str) -> Vec<(PathBuf, bool, String)> {
    text.lines()
        .filter_map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            match f.as_slice() {
                [_, dir, "cgroup", opts, ..] => Some((PathBuf::from(dir), false, opts.to_string())),
                [_, dir, "cgroup2", ..] => Some((PathBuf::from(dir), true, String::new())),
                _ => None,
            }
        })
        .collect()
}

/// The value of `key` in a cgroup file of `key value` lines (`memory.stat`, `cpu.stat`).
fn keyed(text: &str, key: &str) -> Option<u64> {
    text.lines().find_map(|l| l.strip_prefix(key)?.strip_prefix(' ')?.trim().parse().ok())
}

/// The node's figures from the cgroup `root` (a cgroupfs path) in whichever hierarchy
/// has them: cgroup v1's `cpuacct` and `memory` controllers, else the v2 tree. `None`
/// when the cgroup does not exist (no pod has run yet).
fn node_usage(root: &str, read: &dyn Fn(&Path) -> Option<String>) -> Option<Usage> {
    let relative = root.trim_start_matches('/');
    let hierarchies = mounts(&read(Path::new("/proc/self/mounts"))?);
    let v1 = |controller: &str| {
        hierarchies
            .iter()
            .find(|(_, v2, opts)| !v2 && opts.split(',').any(|o| o == controller))
            .map(|(dir, ..)| dir.join(relative))
    };
    let v2 = hierarchies.iter().find(|(_, v2, _)| *v2).map(|(dir, ..)| dir.join(relative));
    let cpu_seconds = v1("cpuacct")
        .and_then(|d| read(&d.join("cpuacct.usage")))
        .and_then(|t| t.trim().parse::<u64>().ok())
        .map(|ns| ns as f64 / 1e9)
        .or_else(|| {
            let stat = read(&v2.as_ref()?.join("cpu.stat"))?;
            keyed(&stat, "usage_usec").map(|us| us as f64 / 1e6)
        })?;
    let memory = v1("memory")
        .and_then(|d| {
            let usage: u64 = read(&d.join("memory.usage_in_bytes"))?.trim().parse().ok()?;
            let inactive = read(&d.join("memory.stat")).and_then(|s| keyed(&s, "total_inactive_file")).unwrap_or(0);
            Some(usage.saturating_sub(inactive))
        })
        .or_else(|| {
            let d = v2.as_ref()?;
            let usage: u64 = read(&d.join("memory.current"))?.trim().parse().ok()?;
            let inactive = read(&d.join("memory.stat")).and_then(|s| keyed(&s, "inactive_file")).unwrap_or(0);
            Some(usage.saturating_sub(inactive))
        })
        .unwrap_or(0);
    Some(Usage { timestamp_ms: now_ms(), cpu_seconds, memory_working_set_bytes: memory })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn files(entries: &[(&str, &str)]) -> impl Fn(&Path) -> Option<String> {
        let map: HashMap<PathBuf, String> = entries.iter().map(|(p, t)| (PathBuf::from(p), t.to_string())).collect();
        move |p: &Path| map.get(p).cloned()
    }

    #[test]
    fn node_figures_come_from_the_pods_cgroup_v1_or_v2() {
        let v1 = files(&[
            (
                "/proc/self/mounts",
                "cgroup /sys/fs/cgroup/cpu,cpuacct cgroup rw,relatime,cpu,cpuacct 0 0\n\
                 cgroup /sys/fs/cgroup/memory cgroup rw,relatime,memory 0 0\n\
                 cgroup2 /sys/fs/cgroup/unified cgroup2 rw 0 0\n",
            ),
            ("/sys/fs/cgroup/cpu,cpuacct/skiff/n1/cpuacct.usage", "2500000000\n"),
            ("/sys/fs/cgroup/memory/skiff/n1/memory.usage_in_bytes", "1000\n"),
            ("/sys/fs/cgroup/memory/skiff/n1/memory.stat", "inactive_file 5\ntotal_inactive_file 300\n"),
        ]);
        let u = node_usage("/skiff/n1", &v1).unwrap();
        assert_eq!((u.cpu_seconds, u.memory_working_set_bytes), (2.5, 700));
        let v2 = files(&[
            ("/proc/self/mounts", "cgroup2 /sys/fs/cgroup cgroup2 rw,nosuid 0 0\n"),
            ("/sys/fs/cgroup/skiff/n1/cpu.stat", "usage_usec 1500000\nuser_usec 1000000\n"),
            ("/sys/fs/cgroup/skiff/n1/memory.current", "4096\n"),
            ("/sys/fs/cgroup/skiff/n1/memory.stat", "anon 1\ninactive_file 1024\n"),
        ]);
        let u = node_usage("/skiff/n1", &v2).unwrap();
        assert_eq!((u.cpu_seconds, u.memory_working_set_bytes), (1.5, 3072));
        assert_eq!(node_usage("/skiff/absent", &v2), None);
    }

    fn container(id: &str, pod: &str, name: &str, state: api::ContainerState) -> api::Container {
        api::Container {
            id: id.into(),
            metadata: Some(api::ContainerMetadata { name: name.into(), attempt: 0 }),
            state: state as i32,
            created_at: 1_700_000_000_000_000_000,
            labels: HashMap::from([
                (labels::POD_NAME.to_string(), pod.to_string()),
                (labels::POD_NAMESPACE.to_string(), "default".to_string()),
            ]),
            ..Default::default()
        }
    }

    fn stat(id: &str, cpu_ns: u64, mem: u64) -> api::ContainerStats {
        api::ContainerStats {
            attributes: Some(api::ContainerAttributes { id: id.into(), ..Default::default() }),
            cpu: Some(api::CpuUsage {
                timestamp: 1_700_000_010_000_000_000,
                usage_core_nano_seconds: Some(api::UInt64Value { value: cpu_ns }),
                usage_nano_cores: None,
            }),
            memory: Some(api::MemoryUsage {
                working_set_bytes: Some(api::UInt64Value { value: mem }),
                ..Default::default()
            }),
            ..Default::default()
        }
    }

    #[test]
    fn pods_sum_their_running_containers_without_sandbox_stats() {
        let cs = [
            container("a", "web", "app", api::ContainerState::ContainerRunning),
            container("b", "web", "side", api::ContainerState::ContainerRunning),
            container("c", "web", "old", api::ContainerState::ContainerExited),
        ];
        let running = cs
            .iter()
            .filter(|c| c.state == api::ContainerState::ContainerRunning as i32)
            .map(|c| (c.id.as_str(), c))
            .collect();
        let stats = [stat("a", 1_000_000_000, 100), stat("b", 500_000_000, 50), stat("c", 9, 9), stat("x", 1, 1)];
        let pods = pods_of(&running, &stats, &[]);
        assert_eq!(pods.len(), 1);
        let p = &pods[0];
        assert_eq!((p.namespace.as_str(), p.name.as_str()), ("default", "web"));
        assert_eq!(p.containers.iter().map(|c| c.name.as_str()).collect::<Vec<_>>(), ["app", "side"]);
        let u = p.usage.unwrap();
        assert_eq!((u.cpu_seconds, u.memory_working_set_bytes, u.timestamp_ms), (1.5, 150, 1_700_000_010_000));
        assert_eq!(p.containers[0].start_time_seconds, Some(1_700_000_000.0));
    }
}
