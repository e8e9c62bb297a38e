//! tc ingress on the node's underlay interface: everything the node receives from the
//! wire.

use aya_ebpf::{bindings::TC_ACT_OK, programs::TcContext};

use crate::{
    Drop, arp, dsr,
    lb::{self, Outcome},
    masq, overlay, packet,
};

/// An ARP request for a LoadBalancer address this node announces is answered. A VXLAN
/// packet for this node goes on to the VXLAN device, with no lookup but that of the
/// frontend it carries if another node sent it by direct server return (`dsr`). A packet
/// to a NodePort or external frontend goes to its backend: straight into the pod on this
/// node, or into the tunnel toward another node's (with the frontend named in the
/// tunnel header, by direct server return, where its Service asks). A reply of a
/// masqueraded flow goes back to its pod: its destination translated back, then its source too if the pod
/// had reached a Service whose backend lives outside the cluster network (the API server
/// behind `kubernetes`), then delivered straight to the pod. Anything else goes on to
/// the node's stack untouched.
#[inline(always)]
pub fn from_underlay(ctx: &TcContext) -> Result<i32, Drop> {
    let Some(pkt) = packet::parse(ctx) else {
        return Ok(arp::answer(ctx)?.unwrap_or(TC_ACT_OK as i32));
    };
    if overlay::is_own_tunnel_packet(&pkt) {
        // On to the VXLAN device, once the frontend it may carry is read.
        dsr::learn(ctx, &pkt)?;
        return Ok(TC_ACT_OK as i32);
    }
    match lb::from_wire(ctx, &pkt)? {
        Some(Outcome::Forward(daddr) | Outcome::IntoPod(daddr)) => {
            return Ok(overlay::to_pod_addr(ctx, daddr)?.unwrap_or(TC_ACT_OK as i32));
        }
        Some(Outcome::Dsr { backend, frontend }) => {
            return Ok(overlay::to_pod_addr_dsr(ctx, backend, Some(frontend))?.unwrap_or(TC_ACT_OK as i32));
        }
        Some(Outcome::Done(action)) => return Ok(action),
        Some(Outcome::Wire) | None => {}
    }
    let Some(pkt) = masq::unsnat(ctx, &pkt)? else {
        return Ok(TC_ACT_OK as i32);
    };
    let daddr = lb::reverse(ctx, &pkt)?.map_or(pkt.daddr, |reply| reply.client);
    Ok(overlay::to_local_pod(ctx, daddr)?.unwrap_or(TC_ACT_OK as i32))
}
