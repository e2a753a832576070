//! The pipeline's only `unsafe`: zeroed allocation of plain-data tables, cache
//! prefetch, and the index buckets' SSE2 tag compare. Everything else in the crate is
//! `#![deny(unsafe_code)]`.

use std::alloc::{Layout, alloc_zeroed, dealloc, handle_alloc_error};
use std::mem::{align_of, size_of};
use std::ptr::NonNull;

/// Types whose all-zero bit pattern is a valid value: bytemuck's derive checks each
/// field (next to each type: `Conn`, `ConnStats`, `ConnAux`, `Bucket`, `Node`).
pub(crate) use bytemuck::Zeroable;

/// A table of `n` zeroed elements allocated without touching them: for large tables
/// the memory comes straight from `mmap` and is committed page by page on first write,
/// so the dataplane can ask for huge pages (`madvise`) before anything is written, the
/// appliance commits it deliberately at start ([`touch`]), and parts never used (the
/// IPv6 side array under IPv4 traffic, offline) cost no RAM.
///
/// Not a `Box<[T]>`: the global allocator zeroes over-aligned allocations by writing
/// them (std's `System` does, for alignment above 16), which would commit every page
/// of a 64-byte-aligned table at once. So the block is requested with 16-byte alignment
/// (`calloc`, lazily zero) and `align_of::<T>()` spare bytes, and the elements start at
/// the first aligned address in it.
pub(crate) struct Zeroed<T> {
    ptr: NonNull<T>,
    len: usize,
    base: *mut u8,
    layout: Layout,
}

// SAFETY: `Zeroed<T>` owns its block exclusively, like `Box<[T]>`.
unsafe impl<T: Send> Send for Zeroed<T> {}
// SAFETY: shared access only hands out `&[T]`.
unsafe impl<T: Sync> Sync for Zeroed<T> {}

pub(crate) fn zeroed_slice<T: Zeroable + Copy>(n: usize) -> Zeroed<T> {
    let align = align_of::<T>();
    if n == 0 || size_of::<T>() == 0 {
        return Zeroed { ptr: NonNull::dangling(), len: 0, base: std::ptr::null_mut(), layout: Layout::new::<()>() };
    }
    let bytes = size_of::<T>().checked_mul(n).and_then(|b| b.checked_add(align)).expect("table size overflows the address space");
    let layout = Layout::from_size_align(bytes, 16).expect("table size overflows the address space");
    // SAFETY: `layout` has non-zero size. The block is zeroed, holds `n` elements from
    // the first `align`-aligned address in it (at most `align - 1` bytes in, and
    // `align` spare bytes were asked for), and every zero bit pattern is a valid `T`
    // (`Zeroable`). `Drop` frees `base` with the same layout.
    unsafe {
        let base = alloc_zeroed(layout);
        if base.is_null() {
            handle_alloc_error(layout);
        }
        let start = base.add(base.align_offset(align)) as *mut T;
        Zeroed { ptr: NonNull::new_unchecked(start), len: n, base, layout }
    }
}

impl<T> std::ops::Deref for Zeroed<T> {
    type Target = [T];
    #[inline(always)]
    fn deref(&self) -> &[T] {
        // SAFETY: `ptr` points at `len` initialised (zeroed or written) elements owned
        // by `self` (or is dangling with `len` 0).
        unsafe { std::slice::from_raw_parts(self.ptr.as_ptr(), self.len) }
    }
}

impl<T> std::ops::DerefMut for Zeroed<T> {
    #[inline(always)]
    fn deref_mut(&mut self) -> &mut [T] {
        // SAFETY: as in `deref`, and `&mut self` makes the access exclusive.
        unsafe { std::slice::from_raw_parts_mut(self.ptr.as_ptr(), self.len) }
    }
}

impl<T> Drop for Zeroed<T> {
    fn drop(&mut self) {
        if !self.base.is_null() {
            // SAFETY: `base` came from `alloc_zeroed(self.layout)`; elements are plain
            // data (`Copy`: nothing to drop in them).
            unsafe { dealloc(self.base, self.layout) }
        }
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

/// Bit i set when `tags[i] & !1 == tag`: an index bucket's ten tags compared at once
/// (`Bucket::matches`). Two 8-lane compares, of ways 0..8 and of ways 2..10, packed
/// into one byte mask.
#[cfg(target_arch = "x86_64")]
#[inline]
pub(crate) fn tag_matches(tags: &[u16; 10], tag: u16) -> u32 {
    use core::arch::x86_64::{_mm_and_si128, _mm_cmpeq_epi16, _mm_movemask_epi8, _mm_packs_epi16, _mm_set1_epi16};
    let lo: [u16; 8] = [tags[0], tags[1], tags[2], tags[3], tags[4], tags[5], tags[6], tags[7]];
    let hi: [u16; 8] = [tags[2], tags[3], tags[4], tags[5], tags[6], tags[7], tags[8], tags[9]];
    // SAFETY: these intrinsics only need SSE2, which every x86-64 CPU has (the
    // architecture's baseline, always enabled by rustc for this target); they compute on
    // values and read no memory.
    let bits = unsafe {
        let keep = _mm_set1_epi16(!1);
        let want = _mm_set1_epi16(tag as i16);
        let a = _mm_cmpeq_epi16(_mm_and_si128(bytemuck::cast(lo), keep), want);
        let b = _mm_cmpeq_epi16(_mm_and_si128(bytemuck::cast(hi), keep), want);
        // packs turns each 0 / -1 lane into one 0 / 0xff byte: bytes 0..8 are ways
        // 0..8, bytes 8..16 ways 2..10.
        _mm_movemask_epi8(_mm_packs_epi16(a, b)) as u32
    };
    (bits & 0xff) | (bits >> 8) << 2
}

/// Writes every page of `s` (each element at a page's start is read and written back),
/// so that the kernel commits the memory now rather than on first use: a table that
/// cannot be backed fails at start, never in the middle of traffic. Contents are
/// unchanged. Safe code: `black_box` keeps the compiler from dropping the stores.
pub(crate) fn touch<T: Copy>(s: &mut [T]) {
    let step = (4096 / std::mem::size_of::<T>().max(1)).max(1);
    for i in (0..s.len()).step_by(step) {
        s[i] = std::hint::black_box(s[i]);
    }
}

/// Start address and length of a table, for `madvise` by the dataplane.
pub(crate) fn region_of<T>(s: &[T]) -> (usize, usize) {
    (s.as_ptr() as usize, std::mem::size_of_val(s))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn zeroed_slices_are_zero_and_sized() {
        let s: Zeroed<u128> = zeroed_slice(1000);
        assert_eq!(s.len(), 1000);
        assert!(s.iter().all(|&x| x == 0));
        assert!(zeroed_slice::<u32>(0).is_empty());
        prefetch(&s[10]);
        assert_eq!(region_of(&s[..]).1, 16_000);
    }
}
