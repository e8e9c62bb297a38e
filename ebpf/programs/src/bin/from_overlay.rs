//! tc ingress on the node's VXLAN device: traffic from other nodes.
#![no_std]
#![no_main]

use aya_ebpf::{macros::classifier, programs::TcContext};
use skiff_ebpf_programs::{pipeline, verdict};

#[classifier]
pub fn from_overlay(ctx: TcContext) -> i32 {
    verdict(pipeline::from_overlay(&ctx))
}

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    loop {}
}
