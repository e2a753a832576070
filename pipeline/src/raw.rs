//! The pipeline's only `unsafe`: zeroed allocation of plain-data tables, and cache
//! prefetch. Everything else in the crate is `#![deny(unsafe_code)]`.

use std::alloc::{alloc_zeroed, handle_alloc_error, Layout};

/// Types whose all-zero bit pattern is a valid value: structs and arrays of integers.
///
/// # Safety
/// Implement only for `#[repr(C)]` types made solely of integers (or arrays of them),
/// without references, `bool`s, enums or padding-sensitive invariants.
pub unsafe trait Zeroable: Sized {}

// SAFETY (all below): integers, arrays of integers, or `#[repr(C)]` structs of them.
unsafe impl Zeroable for u32 {}
unsafe impl Zeroable for u128 {}
unsafe impl Zeroable for crate::conntrack::Conn {}
unsafe impl Zeroable for crate::conntrack::ConnStats {}
unsafe impl Zeroable for crate::conntrack::ConnAux {}
unsafe impl Zeroable for crate::conntrack::table::Bucket {}
// Zero means "not armed" for a timer node.
unsafe impl Zeroable for crate::conntrack::wheel::Node {}

/// Allocates `n` zeroed elements without touching them: for large tables the memory
/// comes straight from `mmap` and is committed page by page on first write, so the
/// dataplane can ask for huge pages (`madvise`) before anything is written, and parts
/// of a table that are never used (the IPv6 side array under IPv4 traffic) cost no RAM.
pub fn zeroed_slice<T: Zeroable>(n: usize) -> Box<[T]> {
    if n == 0 || size_of::<T>() == 0 {
        return Vec::new().into_boxed_slice();
    }
    let layout = Layout::array::<T>(n).expect("table size overflows the address space");
    // SAFETY: `layout` has non-zero size (checked above). The pointer comes from the
    // global allocator with `T`'s layout for `n` elements, every zero bit pattern is a
    // valid `T` (`Zeroable`), and `Box<[T]>` frees it with the same layout.
    unsafe {
        let p = alloc_zeroed(layout) as *mut T;
        if p.is_null() {
            handle_alloc_error(layout);
        }
        Box::from_raw(std::ptr::slice_from_raw_parts_mut(p, n))
    }
}

/// Hints the CPU to bring the cache line holding `r` into all cache levels.
#[inline(always)]
pub fn prefetch<T>(r: &T) {
    #[cfg(target_arch = "x86_64")]
    {
        use core::arch::x86_64::{_MM_HINT_T0, _mm_prefetch};
        // SAFETY: prefetch is a hint: it never faults, even on an invalid address, and
        // `r` is a valid reference anyway. SSE is part of the x86_64 baseline.
        unsafe { _mm_prefetch::<_MM_HINT_T0>(r as *const T as *const i8) }
    }
    #[cfg(not(target_arch = "x86_64"))]
    let _ = r;
}

/// Writes every page of `s` (each element at a page's start is read and written back),
/// so that the kernel commits the memory now rather than on first use: a table that
/// cannot be backed fails at start, never in the middle of traffic. Contents are
/// unchanged. Safe code: `black_box` keeps the compiler from dropping the stores.
pub fn touch<T: Copy>(s: &mut [T]) {
    let step = (4096 / std::mem::size_of::<T>().max(1)).max(1);
    for i in (0..s.len()).step_by(step) {
        s[i] = std::hint::black_box(s[i]);
    }
}

/// Start address and length of a table, for `madvise` by the dataplane.
pub fn region_of<T>(s: &[T]) -> (usize, usize) {
    (s.as_ptr() as usize, std::mem::size_of_val(s))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn zeroed_slices_are_zero_and_sized() {
        let s: Box<[u128]> = zeroed_slice(1000);
        assert_eq!(s.len(), 1000);
        assert!(s.iter().all(|&x| x == 0));
        assert!(zeroed_slice::<u32>(0).is_empty());
        prefetch(&s[10]);
        assert_eq!(region_of(&s[..]).1, 16_000);
    }
}
