//! tc ingress on the node's VXLAN device: traffic from other nodes.
#![no_std]
#![no_main]

use aya_ebpf::{bindings::TC_ACT_SHOT, macros::classifier, programs::TcContext};
use skiff_ebpf_common::stat;
use skiff_ebpf_programs::{maps::count, overlay};

#[classifier]
pub fn from_overlay(ctx: TcContext) -> i32 {
    match overlay::from_overlay(&ctx) {
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
