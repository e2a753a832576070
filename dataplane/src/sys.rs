//! Small OS services: a per-process random seed.

/// 64 random bits from the kernel (getrandom(2)), for hash seeds.
pub fn random_seed() -> u64 {
    let mut b = [0u8; 8];
    if let Ok(mut f) = std::fs::File::open("/dev/urandom") {
        use std::io::Read;
        if f.read_exact(&mut b).is_ok() {
            return u64::from_ne_bytes(b);
        }
    }
    // No /dev/urandom (a minimal container): fall back to std's per-process keys.
    use std::hash::{BuildHasher, Hasher};
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u64(std::process::id().into());
    h.finish()
}

/// Asks the kernel to back large tables with transparent huge pages, before they are
/// first written (tables are allocated untouched; see `holdfast_pipeline::raw`). With
/// 4 KiB pages a lookup in a large table costs a TLB miss on top of the cache miss.
/// Best effort: on failure (THP disabled) the tables simply use small pages.
pub fn advise_huge_pages(regions: &[(usize, usize)]) {
    const HUGE: usize = 2 << 20;
    for &(addr, len) in regions {
        // Only whole huge pages inside the region.
        let start = addr.next_multiple_of(HUGE);
        let end = (addr + len) & !(HUGE - 1);
        if end > start {
            // SAFETY: madvise only changes how the kernel backs pages of a range that
            // this process owns (it lies inside a live allocation); MADV_HUGEPAGE does
            // not alter contents or validity of the memory.
            unsafe {
                libc::madvise(start as *mut libc::c_void, end - start, libc::MADV_HUGEPAGE);
            }
        }
    }
}
