//! The CNI commands (ADD, DEL, CHECK, VERSION) as containerd invokes them: `CNI_*`
//! environment variables and the network configuration on stdin; a result or an error
//! object on stdout.
//!
//! ADD, step by step (each failure undoes what the earlier steps did, so a failed ADD
//! leaves no veth, address, map entry, link pin or IPAM entry behind):
//! 1. parse and validate stdin and the environment; check that skiff-node has pinned
//!    the datapath;
//! 2. reserve an address under the IPAM lock (or find the one this container already
//!    holds: a repeated ADD returns the same result without recreating anything);
//! 3. create the veth pair, the host side in the node's namespace (named from the
//!    container id), `eth0` directly in the pod's;
//! 4. node side: up, `rp_filter=0`, route `podIP/32 dev <host veth>`;
//! 5. pod side: up, `podIP/32`, on-link route to the gateway 169.254.1.1, a permanent
//!    neighbour entry for it (the host veth's MAC), default route via it;
//! 6. datapath: the pod's entry in the endpoints map, "from pod" at tc ingress of the
//!    host veth, its link pinned;
//! 7. mark the IPAM entry complete and print the result.
//!
//! DEL undoes 6, 3 (deleting the host veth deletes its peer and the routes) and 2;
//! every step tolerates "already gone", so the second DEL containerd sends, with an
//! empty `CNI_NETNS`, succeeds too.

use std::{
    fs::File,
    io::{self, Read},
    net::Ipv4Addr,
    process::ExitCode,
};

use skiff_datapath::netlink::{Netlink, in_netns};
use skiff_ebpf_common::Endpoint4;

use crate::{
    config::{NetConf, SUPPORTED_VERSIONS},
    datapath::Datapath,
    error::{CniError, code},
    ipam::{Allocation, Completed, Store},
    kernel::{Kernel, System, dp_err, nl_err},
    result::{CniResult, GATEWAY, PodNetwork, format_mac, parse_mac},
};

/// The `CNI_*` environment of one invocation. Empty values count as unset: containerd
/// sends `CNI_NETNS=` on its second DEL.
#[derive(Clone, Debug, Default)]
pub struct Env {
    pub command: Option<String>,
    pub container_id: Option<String>,
    pub netns: Option<String>,
    pub ifname: Option<String>,
    pub args: Option<String>,
    pub path: Option<String>,
}

impl Env {
    pub fn from_vars(get: impl Fn(&str) -> Option<String>) -> Self {
        let var = |name: &str| get(name).filter(|v| !v.is_empty());
        Self {
            command: var("CNI_COMMAND"),
            container_id: var("CNI_CONTAINERID"),
            netns: var("CNI_NETNS"),
            ifname: var("CNI_IFNAME"),
            args: var("CNI_ARGS"),
            path: var("CNI_PATH"),
        }
    }

    pub fn from_process() -> Self {
        Self::from_vars(|name| std::env::var(name).ok())
    }
}

/// The binary's entry point: reads the process's environment and stdin, prints the
/// answer, and fails the process on error.
pub fn main() -> ExitCode {
    let env = Env::from_process();
    let mut stdin = Vec::new();
    let outcome = match io::stdin().read_to_end(&mut stdin) {
        Ok(_) => run(&env, &stdin),
        Err(e) => Err(CniError::new(code::IO, "cannot read the network configuration from stdin", e.to_string())),
    };
    match outcome {
        Ok(Some(out)) => {
            println!("{out}");
            ExitCode::SUCCESS
        }
        Ok(None) => ExitCode::SUCCESS,
        Err(err) => {
            println!("{}", err.to_json());
            eprintln!("skiff-cni {}: {err}", env.command.as_deref().unwrap_or("?"));
            ExitCode::FAILURE
        }
    }
}

/// Runs one command; `Ok(Some(json))` is what to print on success.
pub fn run(env: &Env, stdin: &[u8]) -> Result<Option<String>, CniError> {
    match env.command.as_deref() {
        Some("VERSION") => Ok(Some(version(stdin))),
        Some("ADD") => add(env, stdin).map(Some),
        Some("DEL") => del(env, stdin).map(|()| None),
        Some("CHECK") => check(env, stdin).map(|()| None),
        Some(other) => Err(CniError::new(
            code::INVALID_ENV,
            format!("unknown CNI_COMMAND {other:?}"),
            "skiff-cni supports ADD, DEL, CHECK and VERSION",
        )),
        None => Err(CniError::new(
            code::INVALID_ENV,
            "CNI_COMMAND is not set",
            "skiff-cni is a CNI plugin: a container runtime runs it",
        )),
    }
}

fn version(stdin: &[u8]) -> String {
    let requested = serde_json::from_slice::<serde_json::Value>(stdin)
        .ok()
        .and_then(|v| v.get("cniVersion").and_then(|v| v.as_str()).map(str::to_owned))
        .filter(|v| SUPPORTED_VERSIONS.contains(&v.as_str()))
        .unwrap_or_else(|| "1.0.0".to_owned());
    serde_json::json!({ "cniVersion": requested, "supportedVersions": SUPPORTED_VERSIONS }).to_string()
}

/// Name of a pod's host-side veth: `sk` and 12 hex digits of an FNV-1a hash of the
/// container id (15 characters, the kernel's limit). Deterministic, so DEL finds the
/// veth even without IPAM state. An interface other than `eth0` (a second network of
/// the same container) hashes `<container id>/<ifname>`, so it never takes over the
/// first one's veth.
pub fn host_veth_name(container_id: &str, ifname: &str) -> String {
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    let suffix = if ifname == "eth0" { None } else { Some(ifname) };
    let bytes = container_id.bytes().chain(suffix.into_iter().flat_map(|i| std::iter::once(b'/').chain(i.bytes())));
    for byte in bytes {
        hash ^= u64::from(byte);
        hash = hash.wrapping_mul(0x0000_0100_0000_01b3);
    }
    format!("sk{:012x}", hash & 0xffff_ffff_ffff)
}

/// The validated identity of the pod an invocation is about.
struct Target<'a> {
    version: &'a str,
    container_id: &'a str,
    ifname: &'a str,
}

fn target<'a>(env: &'a Env, conf: &'a NetConf) -> Result<Target<'a>, CniError> {
    let v = conf.cni_version.as_str();
    let container_id = env.container_id.as_deref().ok_or_else(|| missing("CNI_CONTAINERID", v))?;
    let valid_id = container_id.chars().next().is_some_and(|c| c.is_ascii_alphanumeric())
        && container_id.chars().all(|c| c.is_ascii_alphanumeric() || "_.-".contains(c));
    if !valid_id {
        return Err(CniError::new(
            code::INVALID_ENV,
            format!("invalid CNI_CONTAINERID {container_id:?}"),
            "it must start with a letter or digit and contain only letters, digits, '_', '.' and '-'",
        )
        .with_version(v));
    }
    let ifname = env.ifname.as_deref().ok_or_else(|| missing("CNI_IFNAME", v))?;
    if ifname.len() > 15
        || ifname == "."
        || ifname == ".."
        || ifname.chars().any(|c| c == '/' || c == ':' || c.is_whitespace())
    {
        return Err(CniError::new(
            code::INVALID_ENV,
            format!("invalid CNI_IFNAME {ifname:?}"),
            "an interface name has at most 15 characters and no '/', ':' or spaces",
        )
        .with_version(v));
    }
    Ok(Target { version: v, container_id, ifname })
}

fn missing(var: &str, version: &str) -> CniError {
    CniError::new(
        code::INVALID_ENV,
        format!("{var} is not set"),
        format!("the container runtime must pass {var} for this command"),
    )
    .with_version(version)
}

fn open_netns(env: &Env, version: &str) -> Result<(String, File), CniError> {
    let path = env.netns.clone().ok_or_else(|| missing("CNI_NETNS", version))?;
    let file = File::open(&path).map_err(|e| {
        CniError::new(
            code::INVALID_ENV,
            format!("cannot open the pod's network namespace CNI_NETNS={path}"),
            e.to_string(),
        )
        .with_version(version)
    })?;
    Ok((path, file))
}

fn ipam_err(version: &str) -> impl Fn(crate::ipam::Error) -> CniError + '_ {
    move |e| CniError::new(code::IO, "IPAM state unusable", e.to_string()).with_version(version)
}

/// What the IPAM step found for an ADD.
enum Reserved {
    /// A completed earlier ADD of this container.
    Done(Ipv4Addr, Allocation),
    /// An address to set up (new, or held by an ADD that did not complete).
    Setup(Ipv4Addr),
}

fn add(env: &Env, stdin: &[u8]) -> Result<String, CniError> {
    let conf = NetConf::parse(stdin)?;
    let t = target(env, &conf)?;
    let (netns_path, netns) = open_netns(env, t.version)?;
    let datapath = Datapath::open(&conf.bpffs_dir).map_err(dp_err(t.version))?;
    let system = System::new(datapath, t.version)?;
    add_with(&system, &Store::new(&conf.data_dir), &conf, &t, &netns_path, &netns)
}

/// ADD after validation: steps 2–7 of the module doc, on any [`Kernel`].
fn add_with(
    kernel: &impl Kernel,
    store: &Store,
    conf: &NetConf,
    t: &Target<'_>,
    netns_path: &str,
    netns: &File,
) -> Result<String, CniError> {
    let v = t.version;
    let host_veth = host_veth_name(t.container_id, t.ifname);
    let reserved = store
        .update(|state| match state.find(t.container_id, t.ifname) {
            Some((ip, a)) if a.done.is_some() => Ok(Reserved::Done(ip, a.clone())),
            Some((ip, _)) => Ok(Reserved::Setup(ip)),
            None => state
                .allocate(
                    conf.pod_cidr,
                    Allocation {
                        container_id: t.container_id.to_owned(),
                        ifname: t.ifname.to_owned(),
                        host_veth: host_veth.clone(),
                        netns: netns_path.to_owned(),
                        done: None,
                    },
                )
                .map(Reserved::Setup),
        })
        .map_err(ipam_err(v))?
        .map_err(|e| {
            CniError::new(code::RANGE_EXHAUSTED, "no free pod address on this node", e.to_string()).with_version(v)
        })?;

    let ip = match reserved {
        Reserved::Done(ip, a) => {
            let done = a.done.as_ref().expect("Done holds a completed allocation");
            // Only a pod whose veth still exists is really set up; otherwise (a node
            // reboot, a crash) set it up again with the same address.
            if kernel.host_link(&a.host_veth)?.is_some() {
                let pod = PodNetwork {
                    ip,
                    host_veth: &a.host_veth,
                    host_mac: &done.host_mac,
                    ifname: t.ifname,
                    pod_mac: &done.pod_mac,
                    netns: &a.netns,
                };
                return Ok(result_json(conf, &pod));
            }
            ip
        }
        Reserved::Setup(ip) => ip,
    };

    match setup(kernel, conf, t.ifname, netns, &host_veth, ip) {
        Ok((host_mac, pod_mac)) => {
            let (host_mac, pod_mac) = (format_mac(&host_mac), format_mac(&pod_mac));
            store
                .update(|state| {
                    if let Some(a) = state.find_mut(t.container_id, t.ifname) {
                        a.done = Some(Completed { host_mac: host_mac.clone(), pod_mac: pod_mac.clone() });
                        netns_path.clone_into(&mut a.netns);
                    }
                })
                .map_err(ipam_err(v))?;
            let pod = PodNetwork {
                ip,
                host_veth: &host_veth,
                host_mac: &host_mac,
                ifname: t.ifname,
                pod_mac: &pod_mac,
                netns: netns_path,
            };
            Ok(result_json(conf, &pod))
        }
        Err(err) => {
            // Undo in reverse; the original error is the one to report.
            let _ = teardown(kernel, &host_veth, Some(ip));
            let _ = store.update(|state| state.release(t.container_id, t.ifname));
            Err(err)
        }
    }
}

fn result_json(conf: &NetConf, pod: &PodNetwork<'_>) -> String {
    serde_json::to_string(&CniResult::new(&conf.cni_version, conf.legacy_result(), pod))
        .expect("a CNI result serializes")
}

/// Steps 3–6 of ADD; returns the MACs of the host veth and the pod's interface.
fn setup(
    kernel: &impl Kernel,
    conf: &NetConf,
    ifname: &str,
    netns: &File,
    host_veth: &str,
    ip: Ipv4Addr,
) -> Result<([u8; 6], [u8; 6]), CniError> {
    // A veth of an ADD that died midway would block the new one.
    kernel.delete_host_veth(host_veth)?;
    let host = kernel.create_veth(host_veth, ifname, conf.mtu, netns)?;
    kernel.configure_host(host_veth, &host, ip)?;
    let pod_mac = kernel.configure_pod(netns, ifname, ip, host.mac)?;
    kernel.insert_endpoint(ip, Endpoint4 { ifindex: host.index, flags: 0, pod_mac, host_mac: host.mac })?;
    kernel.attach(host_veth)?;
    Ok((host.mac, pod_mac))
}

/// Removes what ADD created on the node; every step tolerates "already gone". Returns
/// the first failure after trying every step.
fn teardown(kernel: &impl Kernel, host_veth: &str, ip: Option<Ipv4Addr>) -> Result<(), CniError> {
    let detached = kernel.detach(host_veth);
    let removed = ip.map_or(Ok(()), |ip| kernel.remove_endpoint(ip));
    // Deleting the host side deletes the pod side and every route through it.
    let deleted = kernel.delete_host_veth(host_veth);
    detached.and(removed).and(deleted)
}

fn del(env: &Env, stdin: &[u8]) -> Result<(), CniError> {
    let conf = NetConf::parse(stdin)?;
    let t = target(env, &conf)?;
    let system = System::new(Datapath::for_cleanup(&conf.bpffs_dir), t.version)?;
    del_with(&system, &Store::new(&conf.data_dir), &t)
}

/// DEL after validation. The IPAM entry goes last, so a failed DEL can be retried.
fn del_with(kernel: &impl Kernel, store: &Store, t: &Target<'_>) -> Result<(), CniError> {
    let held = store
        .read()
        .map_err(ipam_err(t.version))?
        .find(t.container_id, t.ifname)
        .map(|(ip, a)| (ip, a.host_veth.clone()));
    let (ip, host_veth) = match held {
        Some((ip, host_veth)) => (Some(ip), host_veth),
        None => (None, host_veth_name(t.container_id, t.ifname)),
    };
    teardown(kernel, &host_veth, ip)?;
    store.update(|state| state.release(t.container_id, t.ifname)).map_err(ipam_err(t.version))?;
    Ok(())
}

fn check(env: &Env, stdin: &[u8]) -> Result<(), CniError> {
    let conf = NetConf::parse(stdin)?;
    let t = target(env, &conf)?;
    let v = t.version;
    if conf.cni_version.starts_with("0.3.") {
        return Err(CniError::new(
            code::INCOMPATIBLE_VERSION,
            "CHECK needs cniVersion 0.4.0 or later",
            conf.cni_version.clone(),
        )
        .with_version(v));
    }
    let failed = |what: String| {
        CniError::new(code::CHECK_FAILED, "the pod's network is not as ADD left it", what).with_version(v)
    };
    let (_, netns) = open_netns(env, v)?;
    let datapath = Datapath::open(&conf.bpffs_dir).map_err(dp_err(v))?;
    let state = Store::new(&conf.data_dir).read().map_err(ipam_err(v))?;
    let (ip, alloc) = state
        .find(t.container_id, t.ifname)
        .ok_or_else(|| failed(format!("no address is allocated to container {} ({})", t.container_id, t.ifname)))?;
    let done = alloc
        .done
        .as_ref()
        .ok_or_else(|| failed(format!("the ADD of container {} did not complete", t.container_id)))?;
    if let Some(prev) = &conf.prev_result {
        let prev_ip = prev.pointer("/ips/0/address").and_then(|a| a.as_str());
        if prev_ip != Some(format!("{ip}/32").as_str()) {
            return Err(failed(format!("prevResult has address {prev_ip:?}, but IPAM holds {ip}/32")));
        }
    }

    let system = System::new(datapath, v)?;
    let (nl, datapath) = (&system.nl, &system.datapath);
    let host = nl
        .link(&alloc.host_veth)
        .map_err(nl_err(v, "cannot look up the host veth"))?
        .ok_or_else(|| failed(format!("host veth {} is missing", alloc.host_veth)))?;
    if !host.up || format_mac(&host.mac) != done.host_mac {
        return Err(failed(format!("host veth {} is down or changed its MAC", alloc.host_veth)));
    }
    let routes = nl.routes().map_err(nl_err(v, "cannot list the node's routes"))?;
    if !routes.iter().any(|r| r.dst == ip && r.prefix == 32 && r.oif == Some(host.index)) {
        return Err(failed(format!("the node has no route {ip}/32 dev {}", alloc.host_veth)));
    }
    let endpoint = datapath.endpoint(ip).map_err(dp_err(v))?;
    let pod_mac = parse_mac(&done.pod_mac).unwrap_or_default();
    if endpoint != Some(Endpoint4 { ifindex: host.index, flags: 0, pod_mac, host_mac: host.mac }) {
        return Err(failed(format!("the endpoints map entry for {ip} is {endpoint:?}")));
    }
    if !datapath.link_pin(&alloc.host_veth).exists() {
        return Err(failed(format!("the from-pod program is not attached to {} (no link pin)", alloc.host_veth)));
    }

    let ifname = t.ifname;
    let problem = in_netns(&netns, || {
        let pod_nl = Netlink::new()?;
        let Some(pod) = pod_nl.link(ifname)? else {
            return Ok(Some(format!("{ifname} is missing in the pod's namespace")));
        };
        if pod.mac != pod_mac || !pod.up {
            return Ok(Some(format!("{ifname} is down or changed its MAC")));
        }
        if !pod_nl.addresses(pod.index)?.contains(&(ip, 32)) {
            return Ok(Some(format!("{ifname} does not have {ip}/32")));
        }
        let routes = pod_nl.routes()?;
        if !routes.iter().any(|r| r.prefix == 0 && r.gateway == Some(GATEWAY) && r.oif == Some(pod.index)) {
            return Ok(Some(format!("the pod has no default route via {GATEWAY} dev {ifname}")));
        }
        Ok(None)
    })
    .map_err(nl_err(v, "cannot inspect the pod's namespace"))?;
    problem.map_or(Ok(()), |p| Err(failed(p)))
}

#[cfg(test)]
mod tests {
    use std::{
        cell::RefCell,
        collections::{BTreeMap, BTreeSet},
    };

    use super::*;
    use skiff_datapath::netlink::Link;

    /// The kernel as a few sets; any step can be made to fail.
    #[derive(Default)]
    struct Fake {
        fail: Option<&'static str>,
        links: RefCell<BTreeMap<String, u32>>,
        configured: RefCell<BTreeSet<String>>,
        endpoints: RefCell<BTreeMap<Ipv4Addr, Endpoint4>>,
        attached: RefCell<BTreeSet<String>>,
    }

    impl Fake {
        fn failing(step: &'static str) -> Self {
            Self { fail: Some(step), ..Self::default() }
        }

        fn step(&self, step: &str) -> Result<(), CniError> {
            match self.fail {
                Some(f) if f == step => Err(CniError::new(code::NETLINK, format!("injected failure in {step}"), "")),
                _ => Ok(()),
            }
        }

        fn is_clean(&self) -> bool {
            self.links.borrow().is_empty()
                && self.configured.borrow().is_empty()
                && self.endpoints.borrow().is_empty()
                && self.attached.borrow().is_empty()
        }

        fn link(index: u32) -> Link {
            Link { index, mac: [2, 0, 0, 0, 0, index as u8], mtu: 1450, up: true }
        }
    }

    impl Kernel for Fake {
        fn host_link(&self, name: &str) -> Result<Option<Link>, CniError> {
            Ok(self.links.borrow().get(name).map(|i| Self::link(*i)))
        }
        fn delete_host_veth(&self, name: &str) -> Result<(), CniError> {
            self.step("delete_host_veth")?;
            self.links.borrow_mut().remove(name);
            self.configured.borrow_mut().remove(name);
            Ok(())
        }
        fn create_veth(&self, host_veth: &str, _: &str, _: u32, _: &File) -> Result<Link, CniError> {
            self.step("create_veth")?;
            let index = 10 + self.links.borrow().len() as u32;
            self.links.borrow_mut().insert(host_veth.to_owned(), index);
            Ok(Self::link(index))
        }
        fn configure_host(&self, host_veth: &str, _: &Link, _: Ipv4Addr) -> Result<(), CniError> {
            self.step("configure_host")?;
            self.configured.borrow_mut().insert(host_veth.to_owned());
            Ok(())
        }
        fn configure_pod(&self, _: &File, _: &str, _: Ipv4Addr, _: [u8; 6]) -> Result<[u8; 6], CniError> {
            self.step("configure_pod")?;
            Ok([2, 0, 0, 0, 1, 1])
        }
        fn insert_endpoint(&self, ip: Ipv4Addr, endpoint: Endpoint4) -> Result<(), CniError> {
            self.step("insert_endpoint")?;
            self.endpoints.borrow_mut().insert(ip, endpoint);
            Ok(())
        }
        fn remove_endpoint(&self, ip: Ipv4Addr) -> Result<(), CniError> {
            self.step("remove_endpoint")?;
            self.endpoints.borrow_mut().remove(&ip);
            Ok(())
        }
        fn attach(&self, host_veth: &str) -> Result<(), CniError> {
            self.step("attach")?;
            self.attached.borrow_mut().insert(host_veth.to_owned());
            Ok(())
        }
        fn detach(&self, host_veth: &str) -> Result<(), CniError> {
            self.step("detach")?;
            self.attached.borrow_mut().remove(host_veth);
            Ok(())
        }
    }

    struct Scratch(std::path::PathBuf);

    impl Scratch {
        fn new(name: &str) -> Self {
            let dir = std::env::temp_dir().join(format!("skiff-cni-plugin-{name}-{}", std::process::id()));
            let _ = std::fs::remove_dir_all(&dir);
            Self(dir)
        }
    }

    impl Drop for Scratch {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }

    fn conf(cidr: &str) -> NetConf {
        let json = format!(
            r#"{{"cniVersion":"1.0.0","name":"skiff","type":"skiff-cni","podCIDR":"{cidr}","mtu":1450,"bpffsDir":"/x","dataDir":"/y"}}"#
        );
        NetConf::parse(json.as_bytes()).unwrap()
    }

    fn pod(id: &str) -> Target<'_> {
        Target { version: "1.0.0", container_id: id, ifname: "eth0" }
    }

    fn netns() -> File {
        File::open("/proc/self/ns/net").unwrap()
    }

    #[test]
    fn a_failed_add_undoes_every_step() {
        let dir = Scratch::new("undo");
        let store = Store::new(&dir.0);
        for step in ["delete_host_veth", "create_veth", "configure_host", "configure_pod", "insert_endpoint", "attach"]
        {
            let fake = Fake::failing(step);
            let err =
                add_with(&fake, &store, &conf("10.244.1.0/24"), &pod("c1"), "/run/netns/p", &netns()).unwrap_err();
            assert!(err.msg.contains(step), "{step}: {err:?}");
            assert!(fake.is_clean(), "{step}: something was left behind");
            assert!(store.read().unwrap().allocations.is_empty(), "{step}: the IPAM entry was left behind");
        }
    }

    #[test]
    fn add_is_idempotent_and_del_undoes_it() {
        let dir = Scratch::new("idem");
        let store = Store::new(&dir.0);
        let fake = Fake::default();
        let conf = conf("10.244.1.0/24");
        let first = add_with(&fake, &store, &conf, &pod("c1"), "/run/netns/p", &netns()).unwrap();
        let again = add_with(&fake, &store, &conf, &pod("c1"), "/run/netns/p", &netns()).unwrap();
        assert_eq!(first, again);
        let result: CniResult = serde_json::from_str(&first).unwrap();
        assert_eq!(result.ips[0].address, "10.244.1.2/32");
        assert_eq!(result.interfaces[1].mac, "02:00:00:00:01:01");
        assert_eq!(fake.links.borrow().len(), 1);
        let endpoint = fake.endpoints.borrow()[&Ipv4Addr::new(10, 244, 1, 2)];
        assert_eq!(endpoint.ifindex, 10);
        assert_eq!(endpoint.host_mac, Fake::link(10).mac);

        // The veth vanished (node reboot): ADD sets the pod up again, same address.
        fake.links.borrow_mut().clear();
        let redone = add_with(&fake, &store, &conf, &pod("c1"), "/run/netns/p", &netns()).unwrap();
        let redone: CniResult = serde_json::from_str(&redone).unwrap();
        assert_eq!(redone.ips, result.ips);

        del_with(&fake, &store, &pod("c1")).unwrap();
        del_with(&fake, &store, &pod("c1")).unwrap();
        assert!(fake.is_clean());
        assert!(store.read().unwrap().allocations.is_empty());
    }

    #[test]
    fn a_failed_del_keeps_the_address_for_a_retry() {
        let dir = Scratch::new("retry");
        let store = Store::new(&dir.0);
        let conf = conf("10.244.1.0/24");
        let fake = Fake::default();
        add_with(&fake, &store, &conf, &pod("c1"), "/run/netns/p", &netns()).unwrap();
        let broken = Fake { fail: Some("remove_endpoint"), ..fake };
        assert!(del_with(&broken, &store, &pod("c1")).is_err());
        // Every other step still ran; the address stays held until the map entry is gone.
        assert!(broken.links.borrow().is_empty() && broken.attached.borrow().is_empty());
        assert_eq!(store.read().unwrap().allocations.len(), 1);
        let fixed = Fake { fail: None, ..broken };
        del_with(&fixed, &store, &pod("c1")).unwrap();
        assert!(fixed.is_clean());
        assert!(store.read().unwrap().allocations.is_empty());
    }

    #[test]
    fn exhaustion_is_code_100_and_touches_nothing() {
        let dir = Scratch::new("full");
        let store = Store::new(&dir.0);
        let conf = conf("10.244.1.4/30");
        let fake = Fake::default();
        add_with(&fake, &store, &conf, &pod("c1"), "/run/netns/p", &netns()).unwrap();
        let err = add_with(&fake, &store, &conf, &pod("c2"), "/run/netns/q", &netns()).unwrap_err();
        assert_eq!(err.code, code::RANGE_EXHAUSTED);
        assert_eq!(fake.links.borrow().len(), 1);
        assert!(store.read().unwrap().find("c2", "eth0").is_none());
    }

    #[test]
    fn host_veth_names_fit_the_kernel_limit_and_are_stable() {
        let a = host_veth_name("2f9a6b3c4d5e", "eth0");
        assert_eq!(a.len(), 14);
        assert!(a.starts_with("sk"));
        assert_eq!(a, host_veth_name("2f9a6b3c4d5e", "eth0"));
        assert_ne!(a, host_veth_name("2f9a6b3c4d5f", "eth0"));
        assert_ne!(a, host_veth_name("2f9a6b3c4d5e", "net1"));
    }

    #[test]
    fn version_answers_without_a_config() {
        let out: serde_json::Value = serde_json::from_str(&version(b"")).unwrap();
        assert_eq!(out["cniVersion"], "1.0.0");
        assert_eq!(out["supportedVersions"].as_array().unwrap().len(), 4);
        let out: serde_json::Value = serde_json::from_str(&version(br#"{"cniVersion":"0.4.0"}"#)).unwrap();
        assert_eq!(out["cniVersion"], "0.4.0");
    }

    #[test]
    fn bad_environments_are_code_4() {
        let conf = r#"{"cniVersion":"1.0.0","name":"skiff","type":"skiff-cni","podCIDR":"10.244.1.0/24","mtu":1450,"bpffsDir":"/nonexistent/bpf","dataDir":"/nonexistent/data"}"#;
        let env = |pairs: &[(&str, &str)]| {
            Env::from_vars(|name| pairs.iter().find(|(k, _)| *k == name).map(|(_, v)| (*v).to_owned()))
        };
        let err =
            run(&env(&[("CNI_COMMAND", "ADD"), ("CNI_CONTAINERID", "abc"), ("CNI_IFNAME", "eth0")]), conf.as_bytes())
                .unwrap_err();
        assert_eq!(err.code, code::INVALID_ENV);
        assert!(err.msg.contains("CNI_NETNS"), "{err:?}");
        let err = run(
            &env(&[("CNI_COMMAND", "ADD"), ("CNI_CONTAINERID", "abc"), ("CNI_IFNAME", "eth0"), ("CNI_NETNS", "")]),
            conf.as_bytes(),
        )
        .unwrap_err();
        assert!(err.msg.contains("CNI_NETNS"), "{err:?}");
        let err =
            run(&env(&[("CNI_COMMAND", "ADD"), ("CNI_CONTAINERID", "../x"), ("CNI_IFNAME", "eth0")]), conf.as_bytes())
                .unwrap_err();
        assert!(err.msg.contains("CNI_CONTAINERID"), "{err:?}");
        assert_eq!(run(&env(&[("CNI_COMMAND", "FROB")]), conf.as_bytes()).unwrap_err().code, code::INVALID_ENV);
        assert_eq!(run(&env(&[]), conf.as_bytes()).unwrap_err().code, code::INVALID_ENV);
    }
}
