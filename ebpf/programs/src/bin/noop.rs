//! A tc program that does nothing: the benchmark's baseline, so that P1 can report the
//! load balancer's own cost apart from BPF_PROG_TEST_RUN's fixed cost per run.
#![no_std]
#![no_main]

use aya_ebpf::{bindings::TC_ACT_OK, macros::classifier, programs::TcContext};

#[classifier]
pub fn noop(_ctx: TcContext) -> i32 {
    TC_ACT_OK as i32
}

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    loop {}
}
