//! XDP on the node's underlay interface, before the kernel builds a socket buffer: ARP
//! answers for announced LoadBalancer addresses (`arp`) and the NodePort fast path. A
//! packet to a NodePort or external frontend gets its backend (conntrack, then the
//! frontend's selection, exactly as at tc) and is translated here: toward a pod of this
//! node it goes on to the stack, whose tc ingress (`from_underlay`) delivers it to the
//! pod untouched; toward another node's pod it is encapsulated in VXLAN and sent
//! straight back out, never seen by this node's stack (by direct server return, with
//! the frontend named in the VXLAN header, where the Service asks for it).
//!
//! Whatever this path cannot finish (the next hop's MAC not known yet, a packet too big
//! for the tunnel, a Service without backends to reject, a backend outside the cluster
//! network) goes on untouched to the tc path, which handles every case; so does every
//! packet that is not for a frontend. Replies come back through the tunnel or the
//! pod's veth, at tc.

use aya_ebpf::{
    bindings::xdp_action::{XDP_DROP, XDP_PASS},
    helpers::bpf_ktime_get_coarse_ns,
    programs::XdpContext,
};
use skiff_ebpf_common::stat;

use crate::{
    Drop, arp, hop, lb,
    maps::{self, count},
    overlay,
    xdp::{self, Tunnel},
};

/// The program's action for this frame: an ARP request for an announced LoadBalancer
/// address is answered here; NodePort and external frontends' packets are translated.
#[inline(always)]
pub fn xdp_underlay(ctx: &XdpContext) -> u32 {
    if let Some(action) = arp::answer_at_xdp(ctx) {
        return action;
    }
    match nodeport(ctx) {
        Ok(action) => action,
        Err(drop) => {
            drop.count();
            XDP_DROP
        }
    }
}

/// A NodePort packet left to the tc path.
#[inline(always)]
fn to_tc() -> Result<u32, Drop> {
    count(stat::XDP_TO_TC);
    Ok(XDP_PASS)
}

#[inline(always)]
fn nodeport(ctx: &XdpContext) -> Result<u32, Drop> {
    let Some(np) = maps::nodeport() else { return Ok(XDP_PASS) };
    let Some(pkt) = xdp::parse(ctx) else { return Ok(XDP_PASS) };
    if !lb::may_be_wire_frontend(&pkt, &np) {
        return Ok(XDP_PASS);
    }
    if pkt.ttl <= 1 {
        // Its TTL runs out at this node: tc leaves it to the stack, which answers.
        return to_tc();
    }
    let cfg = maps::config();
    // SAFETY: a plain helper call without arguments.
    let now = unsafe { bpf_ktime_get_coarse_ns() };
    let (target, new_flow) = match lb::established(&pkt, now, &cfg) {
        Some(target) => (target, None),
        None => {
            let Some((frontend, svc)) = lb::frontend_of(&pkt) else { return Ok(XDP_PASS) };
            if svc.count == 0 {
                return to_tc();
            }
            let Ok(flow) = lb::choose(&pkt, &frontend, &svc, now, &cfg, Some(&np)) else { return to_tc() };
            (flow.target, Some(flow))
        }
    };
    let tunnel = if overlay::is_local_pod(target.addr) {
        None
    } else {
        let Some((remote, vni)) = overlay::tunnel_to(target.addr) else { return to_tc() };
        let frame_len = ctx.data_end() - ctx.data();
        let hop = xdp::next_hop(ctx, ctx.ingress_ifindex() as u32, np.node_addr, remote, xdp::outer_len(frame_len));
        let Some((smac, dmac)) = hop else { return to_tc() };
        let flow_hash = lb::flow_hash(&pkt);
        Some((Tunnel { local: np.node_addr, remote, smac, dmac, vni, flow_hash, dsr: target.dsr }, frame_len))
    };
    let target = match &new_flow {
        Some(flow) => match lb::record(&pkt, flow, now) {
            Ok(target) => target,
            Err(_) => return to_tc(),
        },
        None => target,
    };
    xdp::rewrite(ctx, &pkt, (target.addr, target.port), (target.source, target.source_port))?;
    count(stat::TRANSLATED);
    count(stat::XDP_TRANSLATED);
    let Some((tunnel, frame_len)) = tunnel else { return Ok(XDP_PASS) };
    // Toward another node this is the node's hop (a local backend's comes at tc).
    hop::forward_at_xdp(ctx)?;
    xdp::encapsulate(ctx, frame_len, &tunnel)?;
    count(stat::XDP_TUNNELED);
    if tunnel.dsr.is_some() {
        count(stat::DSR_TUNNELED);
    }
    Ok(xdp::back_out(ctx))
}
