//! Pod and container specs → CRI sandbox and container configs. Pure: what needs the API
//! (env from ConfigMaps and Secrets, volume contents) is resolved by the caller and
//! passed in.
//!
//! On-disk layout, as upstream's kubelet (paths under the agent's settings):
//! - logs: `<pod_log_dir>/<namespace>_<pod>_<uid>/<container>/<restartCount>.log`
//!   (the sandbox's log directory and the container's log path), which `server` reads;
//! - per pod: `<root_dir>/pods/<uid>/` with `volumes/` and `containers/<name>/` (the
//!   termination-log files).
//!
//! A container's `terminationMessagePolicy` travels in its CRI annotations (as
//! upstream's does), so that an exited container's message is found from the runtime's
//! answer alone ([`exit_message`]).

use std::collections::HashMap;
use std::io::{Read, Seek, SeekFrom};
use std::net::IpAddr;
use std::path::{Path, PathBuf};

use k8s_openapi::api::core::v1::{Container, Pod, PodDNSConfig};

use crate::cri::{api, labels};

/// What the kubelet knows of its node and its directories.
#[derive(Debug, Clone)]
pub struct KubeletSettings {
    pub node_name: String,
    /// The node's address (the pods' hostIP).
    pub node_ip: IpAddr,
    /// Pod directories (volumes, termination logs).
    pub root_dir: PathBuf,
    /// Container logs.
    pub pod_log_dir: PathBuf,
    /// The cluster DNS servers for `dnsPolicy: ClusterFirst` (none: pods get the node's).
    pub cluster_dns: Vec<IpAddr>,
    pub cluster_domain: String,
    /// The cgroup (cgroupfs path) every pod's cgroup goes under.
    pub cgroup_root: String,
    /// The static pod manifests, if any (`--pod-manifest-path`).
    pub static_pod_dir: Option<PathBuf>,
    /// Where this node's local-path volumes live (`--local-path-dir`): the directories
    /// of deleted volumes are removed from it.
    pub local_path_dir: PathBuf,
}

impl KubeletSettings {
    /// `<root_dir>/pods/<uid>`.
    pub fn pod_dir(&self, uid: &str) -> PathBuf {
        self.root_dir.join("pods").join(uid)
    }

    /// The sandbox's log directory.
    pub fn pod_log_dir(&self, namespace: &str, name: &str, uid: &str) -> PathBuf {
        self.pod_log_dir.join(format!("{namespace}_{name}_{uid}"))
    }

    /// The host file a container instance's termination message is written to.
    pub fn termination_log(&self, uid: &str, container: &str, attempt: u32) -> PathBuf {
        self.pod_dir(uid).join("containers").join(container).join(format!("{attempt}.termination-log"))
    }
}

/// A container's log path relative to the sandbox's log directory.
pub fn container_log_path(container: &str, attempt: u32) -> String {
    format!("{container}/{attempt}.log")
}

/// The pod's name, namespace and uid.
pub fn identity(pod: &Pod) -> (&str, &str, &str) {
    let m = &pod.metadata;
    (
        m.name.as_deref().unwrap_or_default(),
        m.namespace.as_deref().unwrap_or("default"),
        m.uid.as_deref().unwrap_or_default(),
    )
}

fn pod_labels(pod: &Pod) -> HashMap<String, String> {
    let (name, namespace, uid) = identity(pod);
    let mut l: HashMap<String, String> = pod.metadata.labels.clone().unwrap_or_default().into_iter().collect();
    l.insert(labels::POD_NAME.into(), name.into());
    l.insert(labels::POD_NAMESPACE.into(), namespace.into());
    l.insert(labels::POD_UID.into(), uid.into());
    l.insert(labels::MANAGED_BY.into(), labels::MANAGED_BY_VALUE.into());
    l
}

fn namespace_options(pod: &Pod) -> api::NamespaceOption {
    let spec = pod.spec.clone().unwrap_or_default();
    let mode = |host: Option<bool>, default: api::NamespaceMode| {
        if host.unwrap_or(false) { api::NamespaceMode::Node as i32 } else { default as i32 }
    };
    let pid_default = if spec.share_process_namespace.unwrap_or(false) {
        api::NamespaceMode::Pod
    } else {
        api::NamespaceMode::Container
    };
    api::NamespaceOption {
        network: mode(spec.host_network, api::NamespaceMode::Pod),
        pid: mode(spec.host_pid, pid_default),
        ipc: mode(spec.host_ipc, api::NamespaceMode::Pod),
        ..Default::default()
    }
}

/// The DNS settings of the pod's resolv.conf, by `dnsPolicy` (`None` in the CRI config
/// means the runtime copies the node's).
fn dns_config(pod: &Pod, s: &KubeletSettings) -> Option<api::DnsConfig> {
    let spec = pod.spec.clone().unwrap_or_default();
    let (_, namespace, _) = identity(pod);
    let host_network = spec.host_network.unwrap_or(false);
    let policy = spec.dns_policy.as_deref().unwrap_or("ClusterFirst");
    let cluster_first = match policy {
        "ClusterFirstWithHostNet" => true,
        "ClusterFirst" => !host_network,
        _ => false,
    };
    let mut config = if cluster_first && !s.cluster_dns.is_empty() {
        let d = &s.cluster_domain;
        api::DnsConfig {
            servers: s.cluster_dns.iter().map(ToString::to_string).collect(),
            searches: vec![format!("{namespace}.svc.{d}"), format!("svc.{d}"), d.clone()],
            options: vec!["ndots:5".into()],
        }
    } else if policy == "None" {
        api::DnsConfig::default()
    } else {
        // Default (or ClusterFirst without a cluster DNS): the node's resolv.conf.
        return merge_dns(None, spec.dns_config.as_ref());
    };
    if let Some(extra) = &spec.dns_config {
        config = merge_dns(Some(config), Some(extra)).unwrap_or_default();
    }
    Some(config)
}

fn merge_dns(base: Option<api::DnsConfig>, extra: Option<&PodDNSConfig>) -> Option<api::DnsConfig> {
    let Some(extra) = extra else { return base };
    let mut c = base.unwrap_or_default();
    c.servers.extend(extra.nameservers.iter().flatten().cloned());
    c.searches.extend(extra.searches.iter().flatten().cloned());
    for o in extra.options.iter().flatten() {
        let Some(name) = &o.name else { continue };
        c.options.retain(|existing| existing.split(':').next() != Some(name.as_str()));
        c.options.push(match &o.value {
            Some(v) => format!("{name}:{v}"),
            None => name.clone(),
        });
    }
    Some(c)
}

fn port_mappings(pod: &Pod) -> Vec<api::PortMapping> {
    let spec = pod.spec.clone().unwrap_or_default();
    spec.containers
        .iter()
        .flat_map(|c| c.ports.iter().flatten())
        .filter(|p| p.host_port.unwrap_or(0) > 0)
        .map(|p| api::PortMapping {
            protocol: match p.protocol.as_deref() {
                Some("UDP") => api::Protocol::Udp as i32,
                Some("SCTP") => api::Protocol::Sctp as i32,
                _ => api::Protocol::Tcp as i32,
            },
            container_port: p.container_port,
            host_port: p.host_port.unwrap_or(0),
            host_ip: p.host_ip.clone().unwrap_or_default(),
        })
        .collect()
}

/// The pod's hostname: `spec.hostname`, else its name, cut to 63 characters.
fn hostname(pod: &Pod) -> String {
    let spec = pod.spec.as_ref();
    if spec.and_then(|s| s.host_network).unwrap_or(false) {
        return String::new();
    }
    let name = spec.and_then(|s| s.hostname.clone()).unwrap_or_else(|| identity(pod).0.to_owned());
    name.chars().take(63).collect::<String>().trim_end_matches(['-', '.']).to_owned()
}

/// The pod's cgroup under the node's root.
pub fn pod_cgroup(pod: &Pod, s: &KubeletSettings) -> String {
    pod_cgroup_of(identity(pod).2, s)
}

/// The cgroup of the pod with uid `uid`.
pub fn pod_cgroup_of(uid: &str, s: &KubeletSettings) -> String {
    format!("{}/pod{uid}", s.cgroup_root.trim_end_matches('/'))
}

/// RunPodSandbox's config for attempt `attempt` of the pod.
pub fn sandbox_config(pod: &Pod, attempt: u32, s: &KubeletSettings) -> api::PodSandboxConfig {
    let (name, namespace, uid) = identity(pod);
    let spec = pod.spec.clone().unwrap_or_default();
    let psc = spec.security_context.clone().unwrap_or_default();
    let privileged = spec
        .containers
        .iter()
        .chain(spec.init_containers.iter().flatten())
        .any(|c| c.security_context.as_ref().and_then(|sc| sc.privileged).unwrap_or(false));
    api::PodSandboxConfig {
        metadata: Some(api::PodSandboxMetadata {
            name: name.into(),
            uid: uid.into(),
            namespace: namespace.into(),
            attempt,
        }),
        hostname: hostname(pod),
        log_directory: s.pod_log_dir(namespace, name, uid).to_string_lossy().into_owned(),
        dns_config: dns_config(pod, s),
        port_mappings: port_mappings(pod),
        labels: pod_labels(pod),
        annotations: pod.metadata.annotations.clone().unwrap_or_default().into_iter().collect(),
        linux: Some(api::LinuxPodSandboxConfig {
            cgroup_parent: pod_cgroup(pod, s),
            security_context: Some(api::LinuxSandboxSecurityContext {
                namespace_options: Some(namespace_options(pod)),
                privileged,
                run_as_user: psc.run_as_user.map(|value| api::Int64Value { value }),
                run_as_group: psc.run_as_group.map(|value| api::Int64Value { value }),
                supplemental_groups: supplemental_groups(pod),
                ..Default::default()
            }),
            sysctls: psc.sysctls.iter().flatten().map(|s| (s.name.clone(), s.value.clone())).collect(),
            ..Default::default()
        }),
        ..Default::default()
    }
}

/// The CRI annotation that carries a container's `terminationMessagePolicy`.
pub const MESSAGE_POLICY_ANNOTATION: &str = "io.kubernetes.container.terminationMessagePolicy";
/// How much of a failed container's log becomes its message under
/// `FallbackToLogsOnError`: its last lines, and at most this many of their last bytes
/// (upstream's limits).
pub const FALLBACK_LOG_LINES: usize = 80;
pub const FALLBACK_LOG_BYTES: usize = 2048;

/// The pod's supplemental groups, with its `fsGroup` (which owns its volumes' files) added.
fn supplemental_groups(pod: &Pod) -> Vec<i64> {
    let psc = pod.spec.as_ref().and_then(|s| s.security_context.as_ref());
    let mut groups: Vec<i64> = psc.and_then(|sc| sc.supplemental_groups.clone()).unwrap_or_default();
    if let Some(fs_group) = psc.and_then(|sc| sc.fs_group)
        && !groups.contains(&fs_group)
    {
        groups.push(fs_group);
    }
    groups
}

/// What the caller resolved for one container instance.
#[derive(Debug, Clone, Default)]
pub struct Resolved {
    pub envs: Vec<api::KeyValue>,
    pub mounts: Vec<api::Mount>,
    pub resources: Option<api::LinuxContainerResources>,
}

/// CreateContainer's config for attempt `attempt` of container `c`.
pub fn container_config(
    pod: &Pod,
    c: &Container,
    attempt: u32,
    resolved: Resolved,
    s: &KubeletSettings,
) -> api::ContainerConfig {
    let (_, _, uid) = identity(pod);
    let psc = pod.spec.as_ref().and_then(|s| s.security_context.clone()).unwrap_or_default();
    let sc = c.security_context.clone().unwrap_or_default();
    let mut mounts = resolved.mounts;
    let message_path = c.termination_message_path.clone().unwrap_or_else(|| "/dev/termination-log".into());
    if !message_path.is_empty() {
        mounts.push(api::Mount {
            container_path: message_path,
            host_path: s.termination_log(uid, &c.name, attempt).to_string_lossy().into_owned(),
            ..Default::default()
        });
    }
    let mut l = pod_labels(pod);
    l.retain(|k, _| k.starts_with("io.kubernetes.") || k.starts_with("io.skiff."));
    l.insert(labels::CONTAINER_NAME.into(), c.name.clone());
    let capabilities = sc.capabilities.as_ref().map(|caps| api::Capability {
        add_capabilities: caps.add.clone().unwrap_or_default(),
        drop_capabilities: caps.drop.clone().unwrap_or_default(),
        ..Default::default()
    });
    api::ContainerConfig {
        metadata: Some(api::ContainerMetadata { name: c.name.clone(), attempt }),
        image: Some(api::ImageSpec { image: c.image.clone().unwrap_or_default(), ..Default::default() }),
        command: c.command.clone().unwrap_or_default(),
        args: c.args.clone().unwrap_or_default(),
        working_dir: c.working_dir.clone().unwrap_or_default(),
        envs: resolved.envs,
        mounts,
        labels: l,
        annotations: HashMap::from([
            ("io.kubernetes.container.restartCount".to_owned(), attempt.to_string()),
            (
                MESSAGE_POLICY_ANNOTATION.to_owned(),
                c.termination_message_policy.clone().unwrap_or_else(|| "File".into()),
            ),
        ]),
        log_path: container_log_path(&c.name, attempt),
        stdin: c.stdin.unwrap_or(false),
        stdin_once: c.stdin_once.unwrap_or(false),
        tty: c.tty.unwrap_or(false),
        linux: Some(api::LinuxContainerConfig {
            resources: resolved.resources,
            security_context: Some(api::LinuxContainerSecurityContext {
                capabilities,
                privileged: sc.privileged.unwrap_or(false),
                namespace_options: Some(namespace_options(pod)),
                run_as_user: sc.run_as_user.or(psc.run_as_user).map(|value| api::Int64Value { value }),
                run_as_group: sc.run_as_group.or(psc.run_as_group).map(|value| api::Int64Value { value }),
                readonly_rootfs: sc.read_only_root_filesystem.unwrap_or(false),
                supplemental_groups: supplemental_groups(pod),
                no_new_privs: sc.allow_privilege_escalation == Some(false),
                ..Default::default()
            }),
        }),
        ..Default::default()
    }
}

/// Makes the host-side files a container instance needs (its termination-log file).
pub fn prepare_container_files(pod: &Pod, c: &Container, attempt: u32, s: &KubeletSettings) -> std::io::Result<()> {
    let path = s.termination_log(identity(pod).2, &c.name, attempt);
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)?;
    }
    std::fs::OpenOptions::new().create(true).append(true).open(&path).map(drop)
}

/// Reads a container instance's termination message (at most 4 KiB, as upstream).
pub fn termination_message(s: &KubeletSettings, uid: &str, container: &str, attempt: u32) -> Option<String> {
    read_bounded(&s.termination_log(uid, container, attempt), 4096)
}

/// The message of an exited container instance, from the runtime's status of it: its
/// termination-log file, or, under `FallbackToLogsOnError` when that is empty and the
/// container failed, the tail of its log. Empty when there is none.
pub fn exit_message(s: &KubeletSettings, uid: &str, status: &api::ContainerStatus) -> String {
    let meta = status.metadata.clone().unwrap_or_default();
    if let Some(message) = termination_message(s, uid, &meta.name, meta.attempt) {
        return message;
    }
    let fallback = status.annotations.get(MESSAGE_POLICY_ANNOTATION).is_some_and(|p| p == "FallbackToLogsOnError");
    if !fallback || status.exit_code == 0 || status.log_path.is_empty() {
        return String::new();
    }
    match read_end(Path::new(&status.log_path), 16 * 1024) {
        Ok(log) => log_tail_message(&log, FALLBACK_LOG_LINES, FALLBACK_LOG_BYTES),
        Err(e) => {
            tracing::debug!(path = %status.log_path, error = %e, "cannot read a failed container's log for its message");
            String::new()
        }
    }
}

/// The last `max` bytes of a file, from the start of a line.
fn read_end(path: &Path, max: u64) -> std::io::Result<Vec<u8>> {
    let mut file = std::fs::File::open(path)?;
    let len = file.metadata()?.len();
    let start = len.saturating_sub(max);
    file.seek(SeekFrom::Start(start))?;
    let mut buf = Vec::new();
    file.take(max).read_to_end(&mut buf)?;
    if start > 0 {
        // The first line was cut: it is not a record.
        let first_newline = buf.iter().position(|b| *b == b'\n').map_or(buf.len(), |i| i + 1);
        buf.drain(..first_newline);
    }
    Ok(buf)
}

/// What the last `lines` records of a CRI log file say (both streams, partial records
/// joined), cut to its last `max_bytes` bytes at a character boundary.
pub fn log_tail_message(log: &[u8], lines: usize, max_bytes: usize) -> String {
    let records: Vec<_> = log
        .split(|b| *b == b'\n')
        .filter_map(crate::server::logs::parse_record)
        .filter(|r| matches!(r.stream, "stdout" | "stderr"))
        .collect();
    let mut text = Vec::new();
    for rec in &records[records.len().saturating_sub(lines)..] {
        text.extend_from_slice(rec.content);
        if !rec.partial {
            text.push(b'\n');
        }
    }
    let mut start = text.len().saturating_sub(max_bytes);
    // Not in the middle of a UTF-8 sequence (continuation bytes are 0b10xxxxxx).
    while start < text.len() && text[start] & 0xC0 == 0x80 {
        start += 1;
    }
    String::from_utf8_lossy(&text[start..]).into_owned()
}

fn read_bounded(path: &Path, max: usize) -> Option<String> {
    let bytes = std::fs::read(path).ok()?;
    let text = String::from_utf8_lossy(&bytes[..bytes.len().min(max)]).trim_end().to_owned();
    (!text.is_empty()).then_some(text)
}

#[cfg(test)]
mod tests {
    use k8s_openapi::api::core::v1::{ContainerPort, PodSpec};
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;

    use super::*;

    fn settings() -> KubeletSettings {
        KubeletSettings {
            node_name: "n1".into(),
            node_ip: "192.168.77.11".parse().unwrap(),
            root_dir: "/var/lib/skiff/kubelet/n1".into(),
            pod_log_dir: "/var/log/skiff/n1/pods".into(),
            cluster_dns: vec!["10.96.0.10".parse().unwrap()],
            cluster_domain: "cluster.local".into(),
            cgroup_root: "/skiff/n1".into(),
            static_pod_dir: None,
            local_path_dir: "/var/lib/skiff/storage/n1".into(),
        }
    }

    fn pod() -> Pod {
        Pod {
            metadata: ObjectMeta {
                name: Some("web-1".into()),
                namespace: Some("shop".into()),
                uid: Some("u-1".into()),
                labels: Some([("app".to_owned(), "web".to_owned())].into()),
                ..Default::default()
            },
            spec: Some(PodSpec {
                containers: vec![Container {
                    name: "app".into(),
                    image: Some("localhost/skiff/echo:1".into()),
                    command: Some(vec!["/skiff-echo".into()]),
                    args: Some(vec!["--port".into(), "8080".into()]),
                    ports: Some(vec![ContainerPort {
                        container_port: 8080,
                        host_port: Some(30080),
                        ..Default::default()
                    }]),
                    ..Default::default()
                }],
                ..Default::default()
            }),
            status: None,
        }
    }

    #[test]
    fn sandbox_config_carries_identity_dns_ports_and_layout() {
        let c = sandbox_config(&pod(), 2, &settings());
        let meta = c.metadata.unwrap();
        assert_eq!(
            (meta.name.as_str(), meta.namespace.as_str(), meta.uid.as_str(), meta.attempt),
            ("web-1", "shop", "u-1", 2)
        );
        assert_eq!(c.hostname, "web-1");
        assert_eq!(c.log_directory, "/var/log/skiff/n1/pods/shop_web-1_u-1");
        let dns = c.dns_config.unwrap();
        assert_eq!(dns.servers, ["10.96.0.10"]);
        assert_eq!(dns.searches, ["shop.svc.cluster.local", "svc.cluster.local", "cluster.local"]);
        assert_eq!(dns.options, ["ndots:5"]);
        assert_eq!(c.port_mappings.len(), 1);
        assert_eq!(c.labels["app"], "web");
        assert_eq!(c.labels[labels::POD_UID], "u-1");
        assert_eq!(c.linux.unwrap().cgroup_parent, "/skiff/n1/podu-1");
    }

    #[test]
    fn host_network_pods_share_the_node_namespace_and_its_resolv_conf() {
        let mut p = pod();
        p.spec.as_mut().unwrap().host_network = Some(true);
        let c = sandbox_config(&p, 0, &settings());
        let ns = c.linux.unwrap().security_context.unwrap().namespace_options.unwrap();
        assert_eq!(ns.network, api::NamespaceMode::Node as i32);
        assert_eq!(c.dns_config, None);
        assert_eq!(c.hostname, "");
    }

    #[test]
    fn container_config_has_command_args_log_path_and_termination_log() {
        let p = pod();
        let c = &p.spec.as_ref().unwrap().containers[0];
        let cfg = container_config(&p, c, 3, Resolved::default(), &settings());
        assert_eq!(cfg.command, ["/skiff-echo"]);
        assert_eq!(cfg.args, ["--port", "8080"]);
        assert_eq!(cfg.log_path, "app/3.log");
        assert_eq!(cfg.metadata.unwrap().attempt, 3);
        assert_eq!(cfg.labels[labels::CONTAINER_NAME], "app");
        assert!(!cfg.labels.contains_key("app"), "pod labels stay on the sandbox");
        let m = cfg.mounts.iter().find(|m| m.container_path == "/dev/termination-log").unwrap();
        assert_eq!(m.host_path, "/var/lib/skiff/kubelet/n1/pods/u-1/containers/app/3.termination-log");
        assert_eq!(cfg.annotations[MESSAGE_POLICY_ANNOTATION], "File");
    }

    #[test]
    fn fs_group_joins_the_supplemental_groups_of_sandbox_and_containers() {
        let mut p = pod();
        p.spec.as_mut().unwrap().security_context = Some(k8s_openapi::api::core::v1::PodSecurityContext {
            fs_group: Some(2000),
            supplemental_groups: Some(vec![3000]),
            ..Default::default()
        });
        let sandbox = sandbox_config(&p, 0, &settings());
        assert_eq!(sandbox.linux.unwrap().security_context.unwrap().supplemental_groups, [3000, 2000]);
        let c = &p.spec.as_ref().unwrap().containers[0];
        let cfg = container_config(&p, c, 0, Resolved::default(), &settings());
        assert_eq!(cfg.linux.unwrap().security_context.unwrap().supplemental_groups, [3000, 2000]);
    }

    #[test]
    fn the_log_tail_is_the_last_lines_and_bytes_of_both_streams() {
        let log = "2026-12-02T02:00:00.000000001Z stdout F first\n\
                   2026-12-02T02:00:00.000000002Z stderr P half \n\
                   2026-12-02T02:00:00.000000003Z stderr F and half\n\
                   not a record\n\
                   2026-12-02T02:00:00.000000004Z stdout F\n\
                   2026-12-02T02:00:00.000000005Z stdout F last words\n";
        assert_eq!(log_tail_message(log.as_bytes(), 80, 2048), "first\nhalf and half\n\nlast words\n");
        assert_eq!(log_tail_message(log.as_bytes(), 2, 2048), "\nlast words\n");
        assert_eq!(log_tail_message(log.as_bytes(), 80, 6), "words\n");
        // A cut never splits a character.
        let accents = "2026-12-02T02:00:00.000000001Z stdout F ééé\n";
        assert_eq!(log_tail_message(accents.as_bytes(), 80, 4), "é\n");
        assert_eq!(log_tail_message(b"", 80, 2048), "");
    }

    #[test]
    fn a_failed_container_under_fallback_to_logs_gets_its_log_tail() {
        let tmp = tempfile::tempdir().unwrap();
        let s = KubeletSettings { root_dir: tmp.path().join("root"), ..settings() };
        let log_path = tmp.path().join("0.log");
        let mut long = String::new();
        for i in 0..100 {
            long += &format!("2026-12-02T02:00:00.000000001Z stdout F line {i}\n");
        }
        std::fs::write(&log_path, &long).unwrap();
        let status = |policy: &str, exit_code: i32| api::ContainerStatus {
            metadata: Some(api::ContainerMetadata { name: "app".into(), attempt: 0 }),
            exit_code,
            log_path: log_path.to_string_lossy().into_owned(),
            annotations: HashMap::from([(MESSAGE_POLICY_ANNOTATION.to_owned(), policy.to_owned())]),
            ..Default::default()
        };
        let message = exit_message(&s, "u-1", &status("FallbackToLogsOnError", 1));
        assert!(message.starts_with("line 20\n") && message.ends_with("line 99\n"), "{message:?}");
        assert_eq!(exit_message(&s, "u-1", &status("FallbackToLogsOnError", 0)), "", "it succeeded");
        assert_eq!(exit_message(&s, "u-1", &status("File", 1)), "");
        // The termination-log file comes first.
        let file = s.termination_log("u-1", "app", 0);
        std::fs::create_dir_all(file.parent().unwrap()).unwrap();
        std::fs::write(&file, "my own words\n").unwrap();
        assert_eq!(exit_message(&s, "u-1", &status("FallbackToLogsOnError", 1)), "my own words");
    }
}
