//! tc ingress on each pod's host-side veth: traffic that leaves a pod.
#![no_std]
#![no_main]

use aya_ebpf::{macros::classifier, programs::TcContext};
use skiff_ebpf_programs::{pipeline, verdict};

#[classifier]
pub fn from_pod(ctx: TcContext) -> i32 {
    verdict(pipeline::from_pod(&ctx))
}

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    loop {}
}
