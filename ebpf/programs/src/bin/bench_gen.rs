//! The NodePort benchmark's traffic generator and sink (`cargo xtask bench nodeport`),
//! XDP programs that only the benchmark loads.
//!
//! BPF_PROG_TEST_RUN in live-frame mode hands the same pages to the program again and
//! again, restoring their pointers but not their bytes: a frame one run translated would
//! come back translated. `xdp_gen` therefore writes the frame afresh (`GEN_FRAME`) and
//! then tail-calls the program under test (`GEN_NEXT` slot 0), or passes the frame to the
//! node's stack when the slot is empty: the same generator for both sides measured.
//! With `GEN_FLOWS` at N > 1, successive frames take the template's source port plus
//! 0, 1, .., N-1 in turn: N established flows in one test run, so that the run's fixed
//! cost (the kernel sets up and tears down a page pool for each, tens of
//! milliseconds) is paid once, not once per flow. With `GEN_NEW_FLOWS` set instead,
//! each frame gets a source port (and address) no frame used before, so that every
//! packet starts a new flow. Both count frames in `GEN_SEQ`, which user space zeroes
//! before each run.
//! `xdp_sink`, on the receiving end, counts the VXLAN frames whose inner packet reached
//! the backend's port (translated and encapsulated, by either side) and drops them.
#![no_std]
#![no_main]
#![expect(unsafe_code, reason = "the generator writes packets and calls helpers through raw pointers")]

use aya_ebpf::{
    bindings::xdp_action::{XDP_ABORTED, XDP_DROP, XDP_PASS},
    macros::{map, xdp},
    maps::{Array, PerCpuArray, ProgramArray},
    programs::XdpContext,
};
use skiff_ebpf_programs::csum;

/// Length of the generated frame: Ethernet, IPv4, TCP and 10 bytes of payload.
const FRAME_LEN: usize = 64;
/// VXLAN's UDP port, and the benchmark backend's port.
const VXLAN_PORT: u16 = 8472;
const BACKEND_PORT: u16 = 8080;

#[map]
static GEN_FRAME: Array<[u8; FRAME_LEN]> = Array::with_max_entries(1, 0);

#[map]
static GEN_NEXT: ProgramArray = ProgramArray::with_max_entries(1, 0);

#[map]
static GEN_NEW_FLOWS: Array<u32> = Array::with_max_entries(1, 0);

#[map]
static GEN_FLOWS: Array<u32> = Array::with_max_entries(1, 0);

#[map]
static GEN_SEQ: PerCpuArray<u32> = PerCpuArray::with_max_entries(1, 0);

#[map]
static SINK_COUNT: PerCpuArray<u64> = PerCpuArray::with_max_entries(1, 0);

#[xdp]
pub fn xdp_gen(ctx: XdpContext) -> u32 {
    let data = ctx.data();
    if data + FRAME_LEN > ctx.data_end() {
        return XDP_ABORTED;
    }
    let Some(frame) = GEN_FRAME.get(0) else { return XDP_ABORTED };
    // SAFETY: the check above covers FRAME_LEN bytes of the packet.
    unsafe { core::ptr::write_unaligned(data as *mut [u8; FRAME_LEN], *frame) };
    if GEN_NEW_FLOWS.get(0).is_some_and(|on| *on != 0) {
        new_flow(data);
    } else if let Some(flows) = GEN_FLOWS.get(0).copied().filter(|flows| *flows > 1) {
        next_flow(data, flows);
    }
    // SAFETY: a tail call only returns when the slot is empty.
    let _ = unsafe { GEN_NEXT.tail_call(&ctx, 0) };
    XDP_PASS
}

/// The next frame's sequence number on this CPU (a test run stays on one CPU).
#[inline(always)]
fn next_seq() -> Option<u32> {
    let seq = GEN_SEQ.get_ptr_mut(0)?;
    // SAFETY: a per-CPU slot, only this CPU touches it.
    unsafe {
        let n = *seq;
        *seq = n.wrapping_add(1);
        Some(n)
    }
}

/// Gives the frame at `data` (FRAME_LEN bytes, checked) the template's source port
/// plus the frame's number modulo `flows`, the TCP checksum updated.
#[inline(always)]
fn next_flow(data: usize, flows: u32) {
    let Some(n) = next_seq() else { return };
    // SAFETY: the caller checked FRAME_LEN bytes; TCP at 34 (sport at 34, check at 50).
    unsafe {
        let sport = (data + 34) as *mut u16;
        let old_port = sport.read_unaligned();
        let port = u16::from_be(old_port).wrapping_add((n % flows) as u16).to_be();
        sport.write_unaligned(port);
        let tcp_check = (data + 50) as *mut u16;
        tcp_check.write_unaligned(csum::replace2(tcp_check.read_unaligned(), old_port, port));
    }
}

/// Gives the frame at `data` (FRAME_LEN bytes, checked) the next unused source: port
/// 1024 + n % 60,000 of address 192.168.79.(10 + n / 60,000), checksums updated.
#[inline(always)]
fn new_flow(data: usize) {
    let Some(n) = next_seq() else { return };
    let port = ((1024 + n % 60_000) as u16).to_be();
    let last_octet = (10 + (n / 60_000) % 200) as u8;
    // SAFETY: the caller checked FRAME_LEN bytes; IPv4 at 14 (check at 24, saddr at 26),
    // TCP at 34 (sport at 34, check at 50).
    unsafe {
        let saddr = (data + 26) as *mut u32;
        let old_saddr = saddr.read_unaligned();
        let mut octets = old_saddr.to_ne_bytes();
        octets[3] = last_octet;
        let new_saddr = u32::from_ne_bytes(octets);
        saddr.write_unaligned(new_saddr);
        let ip_check = (data + 24) as *mut u16;
        ip_check.write_unaligned(csum::replace4(ip_check.read_unaligned(), old_saddr, new_saddr));
        let sport = (data + 34) as *mut u16;
        let old_port = sport.read_unaligned();
        sport.write_unaligned(port);
        let tcp_check = (data + 50) as *mut u16;
        let sum = csum::replace4(tcp_check.read_unaligned(), old_saddr, new_saddr);
        tcp_check.write_unaligned(csum::replace2(sum, old_port, port));
    }
}

#[xdp]
pub fn xdp_sink(ctx: XdpContext) -> u32 {
    // Outer Ethernet, IPv4, UDP, VXLAN (50 bytes), inner Ethernet and IPv4 (34): the
    // inner TCP ports start at 84.
    let data = ctx.data();
    if data + 88 <= ctx.data_end() {
        // SAFETY: the check covers bytes 0..88.
        let (outer_dport, inner_dport) =
            unsafe { (*((data + 36) as *const [u8; 2]), *((data + 86) as *const [u8; 2])) };
        if u16::from_be_bytes(outer_dport) == VXLAN_PORT && u16::from_be_bytes(inner_dport) == BACKEND_PORT {
            if let Some(count) = SINK_COUNT.get_ptr_mut(0) {
                // SAFETY: a per-CPU slot, only this CPU touches it.
                unsafe { *count += 1 };
            }
        }
    }
    XDP_DROP
}

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    loop {}
}
