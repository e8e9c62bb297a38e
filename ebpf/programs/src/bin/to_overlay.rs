//! tc egress on the node's VXLAN device: gives every packet its tunnel key.
#![no_std]
#![no_main]

use aya_ebpf::{macros::classifier, programs::TcContext};
use skiff_ebpf_programs::{pipeline, verdict};

#[classifier]
pub fn to_overlay(ctx: TcContext) -> i32 {
    verdict(pipeline::to_overlay(&ctx))
}

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    loop {}
}
