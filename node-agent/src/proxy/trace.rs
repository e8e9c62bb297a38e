//! `skiff-node trace <namespace>/<service>`: what this node's datapath does with a
//! Service, read from the live maps (nothing like it exists in kube-proxy): each
//! frontend (cluster IP, node ports, external addresses), the backends a new flow may
//! pick and why (random, session affinity with the client's entry, this node's
//! endpoints only), the node each backend lives on and whether the tunnel leads there,
//! and the client's conntrack entries.
//!
//! It only reads: the Service from the API, the maps from bpffs.

use std::fmt::Write as _;
use std::net::Ipv4Addr;
use std::path::Path;

use anyhow::{Context, Result};
use aya::maps::{HashMap as AyaHashMap, LpmTrie, Map, MapData, lpm_trie::Key};
use k8s_openapi::api::core::v1::Service;
use skiff_ebpf_common::{
    Affinity4Key, Affinity4Value, BACKEND_FLAG_TERMINATING, Backend4, CT_DIR_FORWARD, CT_FLAG_CLOSING, CT_FLAG_DSR,
    CT_FLAG_NODEPORT, CT_FLAG_SNAT, Ct4Entry, Ct4Key, Endpoint4, NodeInfo4, SERVICE_FLAG_AFFINITY, SERVICE_FLAG_DSR,
    SERVICE_FLAG_MAGLEV, Service4Key, Service4Value, SockAffinity4Key, addr_from_map, addr_to_map, pin, port_from_map,
    port_to_map,
};

use super::model::{FrontendKey, LocalNode, ObjectRef, plan_service};

/// What to trace: the client a flow would come from and the Service port.
#[derive(Debug, Default, Clone)]
pub struct TraceOptions {
    /// The client's address: its affinity entry and conntrack entries are shown.
    pub from: Option<Ipv4Addr>,
    /// Only frontends on this port (the Service port, or a node port).
    pub port: Option<u16>,
    /// This node's address, for its node port frontends.
    pub node_addr: Option<Ipv4Addr>,
}

/// The maps the trace reads.
struct Maps {
    services: AyaHashMap<MapData, Service4Key, Service4Value>,
    backends: AyaHashMap<MapData, u32, Backend4>,
    affinity: AyaHashMap<MapData, Affinity4Key, Affinity4Value>,
    /// The socket-level load balancer's affinity; absent before it first loaded.
    sock_affinity: Option<AyaHashMap<MapData, SockAffinity4Key, Affinity4Value>>,
    ct: AyaHashMap<MapData, Ct4Key, Ct4Entry>,
    endpoints: AyaHashMap<MapData, u32, Endpoint4>,
    nodes: Option<LpmTrie<MapData, u32, NodeInfo4>>,
}

fn open(dir: &Path, name: &str) -> Result<Map> {
    let path = dir.join(name);
    let data = MapData::from_pin(&path).with_context(|| format!("opening {}", path.display()))?;
    Map::from_map_data(data).with_context(|| format!("reading {}", path.display()))
}

impl Maps {
    fn open(dir: &Path) -> Result<Self> {
        let hash = |name: &str| -> Result<Map> { open(dir, name) };
        Ok(Self {
            services: AyaHashMap::try_from(hash(pin::SERVICES)?)?,
            backends: AyaHashMap::try_from(hash(pin::BACKENDS)?)?,
            affinity: AyaHashMap::try_from(hash(pin::AFFINITY)?)?,
            sock_affinity: open(dir, pin::SOCK_AFFINITY).ok().and_then(|m| AyaHashMap::try_from(m).ok()),
            ct: AyaHashMap::try_from(hash(pin::CT)?)?,
            endpoints: AyaHashMap::try_from(hash(pin::ENDPOINTS)?)?,
            // A node without the overlay has no peers to show.
            nodes: open(dir, pin::NODES).ok().and_then(|m| LpmTrie::try_from(m).ok()),
        })
    }
}

/// The trace of `svc` as text.
pub fn trace(pin_dir: &Path, svc: &Service, options: &TraceOptions) -> Result<String> {
    let maps = Maps::open(pin_dir)?;
    let service = ObjectRef::from_meta(&svc.metadata).context("the Service has no name")?;
    let node = options.node_addr.map(|addr| LocalNode { name: String::new(), addr });
    // Only the frontends' keys are wanted: planned without endpoints.
    let plan = plan_service(svc, [], node.as_ref());
    let local_only = svc.spec.as_ref().and_then(|s| s.external_traffic_policy.as_deref()) == Some("Local");
    let mut out = String::new();
    let _ = writeln!(out, "Service {service}");
    if plan.frontends.is_empty() {
        let _ = writeln!(out, "  no frontends: headless, ExternalName, or no cluster IP yet");
    }
    for frontend in plan.frontends.iter().filter(|f| options.port.is_none_or(|p| p == f.key.port)) {
        let cluster_ip = Some(frontend.key.vip) == plan.frontends.first().map(|f| f.key.vip);
        trace_frontend(&mut out, &maps, &frontend.key, !cluster_ip && local_only, options)?;
    }
    Ok(out)
}

fn trace_frontend(
    out: &mut String,
    maps: &Maps,
    key: &FrontendKey,
    local_only: bool,
    options: &TraceOptions,
) -> Result<()> {
    let frontend = Service4Key::new(addr_to_map(key.vip.octets()), port_to_map(key.port), key.proto.ip_proto(), 0);
    let _ = write!(out, "  {key}: ");
    let Ok(slot0) = maps.services.get(&frontend, 0) else {
        let _ = writeln!(out, "not programmed on this node");
        return Ok(());
    };
    let affinity = slot0.flags & SERVICE_FLAG_AFFINITY != 0;
    let maglev = slot0.flags & SERVICE_FLAG_MAGLEV != 0;
    // Each backend once, in slot order, with how many slots it holds (a Maglev table
    // holds each many times).
    let mut held: Vec<(u32, usize)> = Vec::new();
    for slot in 1..=slot0.count {
        let Ok(entry) = maps.services.get(&Service4Key { backend_slot: slot, ..frontend }, 0) else { continue };
        match held.iter_mut().find(|(id, _)| *id == entry.backend_id) {
            Some((_, n)) => *n += 1,
            None => held.push((entry.backend_id, 1)),
        }
    }
    let n = held.len();
    let pick = if maglev {
        format!("a new flow takes the entry its hash names in a {}-entry Maglev table", slot0.count)
    } else {
        "a new flow takes one at random".to_owned()
    };
    let how = match (slot0.count, affinity, local_only) {
        (0, _, _) => "no backend takes new flows: they are refused (TCP RST, ICMP port unreachable)".to_owned(),
        (_, true, _) => format!(
            "{n} backend(s); session affinity (ClientIP, {} s): a client keeps the backend it had, else {pick}",
            slot0.affinity_timeout_s
        ),
        (_, false, true) => format!("{n} backend(s) on this node only (externalTrafficPolicy: Local); {pick}"),
        (_, false, false) => format!("{n} backend(s); {pick}"),
    };
    let _ = writeln!(out, "{how}");
    if slot0.flags & SERVICE_FLAG_DSR != 0 {
        let _ = writeln!(
            out,
            "    direct server return: a backend on another node gets the client's own address, and its node answers the client from this frontend"
        );
    }
    for (id, entries) in held {
        let Ok(backend) = maps.backends.get(&id, 0) else { continue };
        let terminating = if backend.flags & BACKEND_FLAG_TERMINATING != 0 { " (terminating)" } else { "" };
        let share = if maglev { format!(" ({entries} entries)") } else { String::new() };
        let _ = writeln!(
            out,
            "    backend {}{terminating}{share}: {}",
            show_backend(&backend),
            where_is(maps, backend.addr)
        );
    }
    if affinity && let Some(sock_affinity) = &maps.sock_affinity {
        for (key, value) in sock_affinity.iter().flatten().filter(|(k, _)| k.rev_nat_index == slot0.rev_nat_index) {
            if let Ok(b) = maps.backends.get(&value.backend_id, 0) {
                let _ = writeln!(
                    out,
                    "    socket-level affinity of network namespace {}: {}",
                    key.netns_cookie,
                    show_backend(&b)
                );
            }
        }
    }
    if let Some(client) = options.from {
        let client_map = addr_to_map(client.octets());
        if affinity {
            let akey = Affinity4Key { client_addr: client_map, rev_nat_index: slot0.rev_nat_index };
            match maps.affinity.get(&akey, 0).ok().and_then(|a| maps.backends.get(&a.backend_id, 0).ok()) {
                Some(b) => {
                    let _ = writeln!(
                        out,
                        "    {client}'s affinity: {} (new flows go there while it is fresh)",
                        show_backend(&b)
                    );
                }
                None => {
                    let _ = writeln!(out, "    {client} has no affinity entry: its next flow picks at random");
                }
            }
        }
        let mut flows = 0;
        for item in maps.ct.iter() {
            let (ct_key, entry) = item?;
            if ct_key.dir != CT_DIR_FORWARD
                || ct_key.saddr != client_map
                || ct_key.daddr != frontend.addr
                || ct_key.dport != frontend.dport
                || ct_key.proto != frontend.proto
            {
                continue;
            }
            flows += 1;
            let backend =
                Backend4 { addr: entry.backend_addr, port: entry.backend_port, proto: ct_key.proto, flags: 0 };
            let mut flags = Vec::new();
            for (bit, name) in [
                (CT_FLAG_CLOSING, "closing"),
                (CT_FLAG_SNAT, "source translated"),
                (CT_FLAG_NODEPORT, "from the wire"),
                (CT_FLAG_DSR, "direct server return"),
            ] {
                if entry.flags & bit != 0 {
                    flags.push(name);
                }
            }
            let _ = writeln!(
                out,
                "    conntrack: {client}:{} → {}{}",
                port_from_map(ct_key.sport),
                show_backend(&backend),
                if flags.is_empty() { String::new() } else { format!(" ({})", flags.join(", ")) }
            );
        }
        if flows == 0 {
            let _ = writeln!(out, "    conntrack: no flow from {client} (a socket-balanced connection has none)");
        }
    }
    Ok(())
}

fn show_backend(b: &Backend4) -> String {
    format!("{}:{}", Ipv4Addr::from(addr_from_map(b.addr)), port_from_map(b.port))
}

/// Where an address lives: a pod of this node, a pod of a peer (through the tunnel),
/// or elsewhere (routed by the node).
fn where_is(maps: &Maps, addr: u32) -> String {
    if let Ok(ep) = maps.endpoints.get(&addr, 0) {
        return format!("a pod on this node (veth ifindex {}), delivered directly", ep.ifindex);
    }
    let peer = maps.nodes.as_ref().and_then(|n| n.get(&Key::new(32, addr), 0).ok());
    match peer {
        Some(peer) => {
            format!(
                "a pod on the node at {}, through the VXLAN tunnel",
                Ipv4Addr::from(addr_from_map(peer.underlay_addr))
            )
        }
        None => "not a pod of the cluster network: routed by the node".to_owned(),
    }
}
