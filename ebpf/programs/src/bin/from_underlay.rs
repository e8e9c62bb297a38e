//! tc ingress on the node's underlay interface: replies of masqueraded flows back to their pods.
#![no_std]
#![no_main]

use aya_ebpf::{macros::classifier, programs::TcContext};
use skiff_ebpf_programs::{pipeline, verdict};

#[classifier]
pub fn from_underlay(ctx: TcContext) -> i32 {
    verdict(pipeline::from_underlay(&ctx))
}

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    loop {}
}
