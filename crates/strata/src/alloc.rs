//! The global allocator: jemalloc (large buffers cached like small ones), except that
//! very large requests are mapped with `MAP_NORESERVE`.
//!
//! Why jemalloc: measured side by side with glibc malloc (tuned with `mallopt`) and
//! mimalloc by `scripts/bench-memory.sh` (500k x 1 KiB produced and read back, then 2,000
//! connections at once): jemalloc peaked at 225-229 MB RSS against glibc's 379-394 and
//! settled at 156-186 MB (128 MiB of it the tail cache) against 401-416, at the same
//! throughput; mimalloc produced at half the rate. Idle, all three sit near 20 MB. A
//! background thread returns freed pages to the kernel while the broker is idle.
//!
//! Large buffers are cached like the others: jemalloc's `oversize_threshold` (8 MiB by
//! default) would give requests above it a dedicated arena that returns their pages to
//! the kernel at once, so every fetch of a partition with a large
//! `max.partition.fetch.bytes` (strata bench asks 16 MiB) faulted in and zeroed its read
//! buffer afresh: a third of a replay's broker CPU. Measured with `strata bench
//! --consume-only` of 1 GB from a local log on tmpfs, three replays each: 0.89-0.98 s of
//! broker CPU per GB at 1.6-1.7 GB/s before, 0.43-0.60 s at 2.2-2.8 GB/s after. The
//! price is memory while such fetches run: freed buffers stay mapped for jemalloc's
//! decay time (10 s) instead of going back at once; `scripts/bench-memory.sh` peaked at
//! 297-338 MB against 231, and settled at 159-191 MB against 161.
//!
//! `MAP_NORESERVE` for very large requests, because `kafka-protocol` 0.18 decodes an
//! array by first calling `Vec::with_capacity` with the element count read from the wire
//! (upstream kafka-protocol-rs PRs #152 and #200, open as of this writing). A 14-byte
//! Metadata request claiming two billion topics asks for hundreds of GiB; under Linux's
//! default overcommit heuristic that allocation fails, and a failed allocation aborts the
//! whole broker. Mapped with `MAP_NORESERVE` the reservation succeeds (it is only address
//! space), the decoder then runs out of input and returns an error, and the mapping is
//! released unused. Memory that is actually written is committed page by page exactly as
//! with any other allocation, so legitimate large buffers behave as before.
#![allow(unsafe_code)]

use std::alloc::{GlobalAlloc, Layout};

use tikv_jemallocator::Jemalloc;

/// The allocator behind everything that is not huge.
const INNER: Jemalloc = Jemalloc;

/// jemalloc's options, read before `main` (the `_RJEM_MALLOC_CONF` variable still
/// overrides them): no oversize arena (see the module's docs).
// SAFETY: jemalloc declares this symbol weak and reads it as a C string; ours is
// NUL-terminated and immutable.
#[unsafe(no_mangle)]
#[allow(non_upper_case_globals)]
static _rjem_malloc_conf: Option<&'static std::ffi::c_char> =
    Some(unsafe { &*c"oversize_threshold:0".as_ptr() });

/// Starts jemalloc's background thread, which purges freed pages after its decay time
/// even when nothing allocates (without it, an idle broker keeps what its last burst
/// freed). A failure only costs that, so it is returned for a warning.
pub fn purge_in_background() -> Result<(), String> {
    tikv_jemalloc_ctl::background_thread::write(true).map_err(|e| e.to_string())
}

/// Requests at or above this size bypass malloc.
const HUGE: usize = 1 << 30;
const PAGE: usize = 4096;

pub struct Allocator;

fn is_huge(layout: &Layout) -> bool {
    layout.size() >= HUGE && layout.align() <= PAGE
}

unsafe fn map(size: usize) -> *mut u8 {
    // SAFETY: an anonymous private mapping with no address hint has no preconditions.
    let p = unsafe {
        libc::mmap(
            std::ptr::null_mut(),
            size,
            libc::PROT_READ | libc::PROT_WRITE,
            libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_NORESERVE,
            -1,
            0,
        )
    };
    if p == libc::MAP_FAILED {
        std::ptr::null_mut()
    } else {
        p.cast()
    }
}

// SAFETY: every block is returned by the same path that allocated it: the decision
// depends only on the layout, which Rust passes unchanged to `dealloc`.
unsafe impl GlobalAlloc for Allocator {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        if is_huge(&layout) {
            // SAFETY: see `map`.
            unsafe { map(layout.size()) }
        } else {
            // SAFETY: forwarded with the caller's guarantees.
            unsafe { INNER.alloc(layout) }
        }
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        if is_huge(&layout) {
            // Anonymous mappings are zero-filled.
            // SAFETY: see `map`.
            unsafe { map(layout.size()) }
        } else {
            // SAFETY: forwarded with the caller's guarantees.
            unsafe { INNER.alloc_zeroed(layout) }
        }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        if is_huge(&layout) {
            // SAFETY: `ptr` came from `map` with this size.
            unsafe {
                libc::munmap(ptr.cast(), layout.size());
            }
        } else {
            // SAFETY: `ptr` came from `INNER` with this layout.
            unsafe { INNER.dealloc(ptr, layout) }
        }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        // SAFETY: the caller guarantees `new_size` and the alignment form a valid layout.
        let new_layout = unsafe { Layout::from_size_align_unchecked(new_size, layout.align()) };
        if !is_huge(&layout) && !is_huge(&new_layout) {
            // SAFETY: both sides belong to `INNER`.
            return unsafe { INNER.realloc(ptr, layout, new_size) };
        }
        // SAFETY: allocate, copy the common prefix, free: each call within its contract.
        unsafe {
            let new = self.alloc(new_layout);
            if !new.is_null() {
                std::ptr::copy_nonoverlapping(ptr, new, layout.size().min(new_size));
                self.dealloc(ptr, layout);
            }
            new
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    #[test]
    fn large_buffers_get_no_arena_of_their_own() {
        // jemalloc's default is 8 MiB; 0 turns the oversize arena off.
        // SAFETY: the option is a size_t.
        let threshold: usize =
            unsafe { tikv_jemalloc_ctl::raw::read(b"opt.oversize_threshold\0") }.unwrap();
        assert_eq!(threshold, 0);
    }

    #[test]
    fn a_huge_unused_reservation_does_not_abort() {
        // 64 GiB: more than this machine's RAM, so malloc under the overcommit heuristic
        // would fail and abort the test binary.
        let v: Vec<u64> = Vec::with_capacity(8 << 30);
        assert!(v.capacity() >= 8 << 30);
        let mut small: Vec<u8> = Vec::with_capacity(16);
        small.extend_from_slice(b"still allocating");
        assert_eq!(small.len(), 16);
    }
}
