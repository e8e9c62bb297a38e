//! Checksum arithmetic for headers that a program builds from scratch (rejects).
//! At tc, rewrites of single fields use the kernel's `l3/l4_csum_replace` helpers; at XDP,
//! where there are none, [`replace4`] and [`replace2`] update a checksum in place.

use aya_ebpf::helpers::bpf_csum_diff;

/// Folds a 32-bit one's-complement sum into the 16-bit checksum to store.
#[inline(always)]
pub fn fold(sum: u64) -> u16 {
    let mut sum = sum & 0xffff_ffff;
    sum = (sum & 0xffff) + (sum >> 16);
    sum = (sum & 0xffff) + (sum >> 16);
    !(sum as u16)
}

/// The one's-complement sum of `len` bytes at `buf` (a multiple of 4), plus `seed`.
///
/// # Safety
/// `buf` must point to `len` readable bytes of stack or map memory.
#[inline(always)]
pub unsafe fn sum(buf: *const u8, len: u32, seed: u32) -> Option<u64> {
    // SAFETY: the caller guarantees `buf` covers `len` bytes; the helper only reads.
    let r = unsafe { bpf_csum_diff(core::ptr::null_mut(), 0, buf as *mut u32, len, seed) };
    if r < 0 { None } else { Some(r as u64) }
}

/// Incremental update of a stored 16-bit checksum when a 32-bit field changes
/// (RFC 1624: HC' = ~(~HC + ~m + m')). Works on values exactly as they sit in memory.
#[inline(always)]
pub fn replace4(check: u16, from: u32, to: u32) -> u16 {
    let mut sum = (!check) as u32;
    sum += (!(from as u16)) as u32 + (!((from >> 16) as u16)) as u32;
    sum += (to as u16) as u32 + ((to >> 16) as u16) as u32;
    sum = (sum & 0xffff) + (sum >> 16);
    sum = (sum & 0xffff) + (sum >> 16);
    !(sum as u16)
}

/// [`replace4`] for a 16-bit field (a port).
#[inline(always)]
pub fn replace2(check: u16, from: u16, to: u16) -> u16 {
    let mut sum = (!check) as u32 + (!from) as u32 + to as u32;
    sum = (sum & 0xffff) + (sum >> 16);
    sum = (sum & 0xffff) + (sum >> 16);
    !(sum as u16)
}
