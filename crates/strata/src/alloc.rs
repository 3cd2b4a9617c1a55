//! The global allocator: the system allocator, except that very large requests are
//! mapped with `MAP_NORESERVE`.
//!
//! Why: `kafka-protocol` 0.18 decodes an array by first calling `Vec::with_capacity` with
//! the element count read from the wire (upstream kafka-protocol-rs PRs #152 and #200,
//! open as of this writing). A 14-byte Metadata request claiming two billion topics asks
//! for hundreds of GiB; under Linux's default overcommit heuristic that allocation fails,
//! and a failed allocation aborts the whole broker. Mapped with `MAP_NORESERVE` the
//! reservation succeeds (it is only address space), the decoder then runs out of input
//! and returns an error, and the mapping is released unused. Memory that is actually
//! written is committed page by page exactly as with any other allocation, so legitimate
//! large buffers behave as before.
#![allow(unsafe_code)]

use std::alloc::{GlobalAlloc, Layout, System};

/// Keeps glibc from returning large buffers to the kernel after every use: fetch and
/// produce buffers of megabytes are allocated per request, and with glibc's defaults
/// each one is a fresh `mmap` whose pages fault in one by one and are unmapped again on
/// free. With these settings they come from (and go back to) the heap, already mapped.
pub fn tune_malloc() {
    // SAFETY: mallopt only changes glibc's allocation policy; it has no preconditions.
    unsafe {
        libc::mallopt(libc::M_MMAP_THRESHOLD, 64 << 20);
        libc::mallopt(libc::M_TRIM_THRESHOLD, 512 << 20);
    }
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
            unsafe { System.alloc(layout) }
        }
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        if is_huge(&layout) {
            // Anonymous mappings are zero-filled.
            // SAFETY: see `map`.
            unsafe { map(layout.size()) }
        } else {
            // SAFETY: forwarded with the caller's guarantees.
            unsafe { System.alloc_zeroed(layout) }
        }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        if is_huge(&layout) {
            // SAFETY: `ptr` came from `map` with this size.
            unsafe {
                libc::munmap(ptr.cast(), layout.size());
            }
        } else {
            // SAFETY: `ptr` came from `System` with this layout.
            unsafe { System.dealloc(ptr, layout) }
        }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        // SAFETY: the caller guarantees `new_size` and the alignment form a valid layout.
        let new_layout = unsafe { Layout::from_size_align_unchecked(new_size, layout.align()) };
        if !is_huge(&layout) && !is_huge(&new_layout) {
            // SAFETY: both sides belong to `System`.
            return unsafe { System.realloc(ptr, layout, new_size) };
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
mod tests {
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
