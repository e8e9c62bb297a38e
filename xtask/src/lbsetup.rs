//! What the demo and the load-balancer benchmarks share: building the binaries, a node
//! topology with echo backends, Service manifests, and running the real agent in the
//! node namespace.

use std::{
    fmt::Write as _,
    path::{Path, PathBuf},
    process::{Command, Stdio},
    time::Duration,
};

use anyhow::{Context, Result, bail};
use skiff_tests::{
    netns::{ChildGuard, wait_until},
    topology::NodeTopology,
};

use crate::{
    build_ebpf::{EBPF_DIR_ENV, build_ebpf},
    setup,
    util::{display, progress, run_checked, target_dir, workspace_root},
};

/// Makes sure the machine is ready and the binaries are built; returns their directory.
pub fn build_binaries(release: bool) -> Result<PathBuf> {
    if !crate::util::is_root() {
        bail!("this needs root (network namespaces, BPF); run it as root");
    }
    setup::ensure_packages()?;
    setup::ensure_bpffs()?;
    let ebpf_dir = build_ebpf(true)?;
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let mut build = Command::new(cargo);
    build.args(["build", "--bins", "-p", "skiff-node", "-p", "skiff-tests"]);
    if release {
        build.arg("--release");
    }
    build.current_dir(workspace_root()).env(EBPF_DIR_ENV, &ebpf_dir);
    progress("build", &format!("`{}`...", display(&build)));
    run_checked(&mut build, "fix the build errors above")?;
    Ok(target_dir().join(if release { "release" } else { "debug" }))
}

/// One Service for the manifests: a ClusterIP TCP port 80 → 8080 and its endpoints.
pub struct ServiceSpec {
    pub name: String,
    pub vip: String,
    pub endpoints: Vec<String>,
}

/// A `kind: List` JSON manifest holding each Service and its EndpointSlice.
pub fn services_json(services: &[ServiceSpec]) -> String {
    let mut items = Vec::with_capacity(services.len() * 2);
    for s in services {
        items.push(format!(
            r#"{{"apiVersion":"v1","kind":"Service","metadata":{{"name":"{n}","namespace":"default"}},"spec":{{"clusterIP":"{vip}","ports":[{{"name":"http","port":80,"targetPort":8080,"protocol":"TCP"}},{{"name":"udp","port":80,"targetPort":8080,"protocol":"UDP"}}]}}}}"#,
            n = s.name,
            vip = s.vip
        ));
        let mut eps = String::new();
        for (i, ip) in s.endpoints.iter().enumerate() {
            if i > 0 {
                eps.push(',');
            }
            let _ = write!(eps, r#"{{"addresses":["{ip}"],"conditions":{{"ready":true}}}}"#);
        }
        items.push(format!(
            r#"{{"apiVersion":"discovery.k8s.io/v1","kind":"EndpointSlice","metadata":{{"name":"{n}-1","namespace":"default","labels":{{"kubernetes.io/service-name":"{n}"}}}},"addressType":"IPv4","ports":[{{"name":"http","port":8080,"protocol":"TCP"}},{{"name":"udp","port":8080,"protocol":"UDP"}}],"endpoints":[{eps}]}}"#,
            n = s.name
        ));
    }
    format!("{{\"apiVersion\":\"v1\",\"kind\":\"List\",\"items\":[\n{}\n]}}\n", items.join(",\n"))
}

/// Writes a manifest file atomically: the agent may read the directory at any time.
pub fn write_manifest(dir: &Path, name: &str, text: &str) -> Result<()> {
    std::fs::create_dir_all(dir)?;
    let tmp = dir.join(format!(".{name}.tmp"));
    std::fs::write(&tmp, text).with_context(|| format!("writing {}", tmp.display()))?;
    std::fs::rename(&tmp, dir.join(name))?;
    Ok(())
}

/// Starts an echo server named after each pod in `pods`.
pub fn start_echo_servers(topo: &NodeTopology, bin: &Path, pods: &[&str]) -> Vec<ChildGuard> {
    pods.iter()
        .map(|name| {
            let child = topo
                .pod(name)
                .ns
                .command(bin.join("skiff-echo").to_str().unwrap_or("skiff-echo"))
                .args(["serve", "--name", name, "--tcp", "8080", "--udp", "8080"])
                .stdout(Stdio::null())
                .spawn()
                .expect("start skiff-echo");
            ChildGuard::new(child)
        })
        .collect()
}

/// Starts `skiff-node run` in the node namespace with the proxy role fed from
/// `manifests`, and waits for its first sync.
pub fn start_agent(topo: &NodeTopology, bin: &Path, pin_dir: &Path, manifests: &Path) -> Result<ChildGuard> {
    start_agent_with(topo, bin, pin_dir, &["--manifests".into(), manifests.display().to_string()])
}

/// Starts `skiff-node run` in the node namespace with extra arguments (roles), attached
/// to the topology's pod interfaces, and waits for its first sync.
pub fn start_agent_with(topo: &NodeTopology, bin: &Path, pin_dir: &Path, extra: &[String]) -> Result<ChildGuard> {
    let ready = std::env::temp_dir().join(format!("skiff-{}.ready", topo.tag));
    let _ = std::fs::remove_file(&ready);
    let mut cmd = topo.node.command(bin.join("skiff-node").to_str().unwrap_or("skiff-node"));
    cmd.args(["run", "--node-name", &format!("n{}", topo.index), "--pin-dir"])
        .arg(pin_dir)
        .args(extra)
        .arg("--ready-file")
        .arg(&ready)
        .env("RUST_LOG", "warn");
    for interface in topo.host_interfaces() {
        cmd.args(["--pod-interface", &interface]);
    }
    let agent = ChildGuard::new(cmd.spawn().context("starting skiff-node")?);
    if !wait_until(Duration::from_secs(120), || ready.exists()) {
        bail!("the agent did not finish its first sync in 120 s");
    }
    let _ = std::fs::remove_file(&ready);
    Ok(agent)
}
