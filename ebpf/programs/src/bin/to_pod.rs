//! tc egress on each pod's host-side veth: reverse NAT of replies from the node's own stack.
#![no_std]
#![no_main]

use aya_ebpf::{macros::classifier, programs::TcContext};
use skiff_ebpf_programs::{pipeline, verdict};

#[classifier]
pub fn to_pod(ctx: TcContext) -> i32 {
    verdict(pipeline::to_pod(&ctx))
}

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    loop {}
}
