//! A counting global allocator, only in builds with the `count-allocs` feature (`make bench`
//! builds one to report allocations per request; the shipped binary never has it). Every
//! allocation and reallocation goes to the system allocator and bumps a counter that
//! `/metrics` shows as `modelmux_allocations_total` and `modelmux_reallocations_total`.

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicU64, Ordering};

struct Counting;

static ALLOCS: AtomicU64 = AtomicU64::new(0);
static REALLOCS: AtomicU64 = AtomicU64::new(0);

#[global_allocator]
static GLOBAL: Counting = Counting;

// SAFETY: every call is passed to `System` unchanged; the counters are plain atomics.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        ALLOCS.fetch_add(1, Ordering::Relaxed);
        System.alloc(layout)
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        ALLOCS.fetch_add(1, Ordering::Relaxed);
        System.alloc_zeroed(layout)
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        System.dealloc(ptr, layout)
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        REALLOCS.fetch_add(1, Ordering::Relaxed);
        System.realloc(ptr, layout, new_size)
    }
}

/// The counters in Prometheus' text format, read before the text is built (so a scrape
/// counts none of its own allocations).
pub fn metrics_text() -> String {
    let (a, r) = (
        ALLOCS.load(Ordering::Relaxed),
        REALLOCS.load(Ordering::Relaxed),
    );
    format!(
        "# HELP modelmux_allocations_total Heap allocations since start (count-allocs build).\n\
         # TYPE modelmux_allocations_total counter\n\
         modelmux_allocations_total {}\n\
         # HELP modelmux_reallocations_total Heap reallocations since start (count-allocs build).\n\
         # TYPE modelmux_reallocations_total counter\n\
         modelmux_reallocations_total {}\n",
        a, r
    )
}
