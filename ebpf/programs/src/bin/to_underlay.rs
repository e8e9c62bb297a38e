//! tc egress on the node's underlay interface: masquerade of pod traffic leaving the cluster network.
#![no_std]
#![no_main]

use aya_ebpf::{macros::classifier, programs::TcContext};
use skiff_ebpf_programs::{pipeline, verdict};

#[classifier]
pub fn to_underlay(ctx: TcContext) -> i32 {
    verdict(pipeline::to_underlay(&ctx))
}

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    loop {}
}
