//! Values built on the BPF stack for helpers that take a C struct.
//!
//! `mem::zeroed()` (or a literal of zeros the optimiser merges into one) compiles to a
//! call of the object's `memset`: there is no such instruction, and the one the
//! object carries stores one byte per loop turn. [`zeroed`] writes words instead.

use core::mem::{MaybeUninit, align_of, size_of};

/// Zeroes `slot` with one 32-bit store per word and returns it, for a plain C struct
/// (every field an integer, an array or a union of those) whose size and alignment are
/// multiples of 4.
#[inline(always)]
pub fn zeroed<T: Copy>(slot: &mut MaybeUninit<T>) -> &mut T {
    const { assert!(size_of::<T>() % 4 == 0 && align_of::<T>() >= 4) };
    let words = slot.as_mut_ptr().cast::<u32>();
    for word in 0..size_of::<T>() / 4 {
        // SAFETY: within `slot`, which is u32-aligned (checked above); volatile so that
        // the stores stay stores and are not merged back into a `memset` call.
        unsafe { words.add(word).write_volatile(0) };
    }
    // SAFETY: every byte is written, and all zeros is a valid value of a plain C struct.
    unsafe { slot.assume_init_mut() }
}
