//! XDP on the node's underlay interface: the NodePort fast path.
#![no_std]
#![no_main]

use aya_ebpf::{macros::xdp, programs::XdpContext};
use skiff_ebpf_programs::pipeline;

#[xdp]
pub fn xdp_underlay(ctx: XdpContext) -> u32 {
    pipeline::xdp_underlay(&ctx)
}

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    loop {}
}
