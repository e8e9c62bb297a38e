//! tc ingress on each pod's host-side veth: traffic that leaves a pod.
#![no_std]
#![no_main]

use aya_ebpf::{bindings::TC_ACT_SHOT, macros::classifier, programs::TcContext};
use skiff_ebpf_common::stat;
use skiff_ebpf_programs::{lb, maps::count};

#[classifier]
pub fn from_pod(ctx: TcContext) -> i32 {
    match lb::from_pod(&ctx) {
        Ok(action) => action,
        Err(_) => {
            count(stat::ERRORS);
            TC_ACT_SHOT as i32
        }
    }
}

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    loop {}
}
