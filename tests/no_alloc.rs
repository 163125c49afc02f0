//! The per-request choice of a version and an endpoint allocates nothing: counted by a global
//! allocator wrapper, so this is exact, not timed.
#![allow(unsafe_code)]

use std::alloc::{GlobalAlloc, Layout, System};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};

use weir::config::Balance;
use weir::data::pool::{Endpoint, EndpointState, Pool};
use weir::data::split::Split;

struct Counting;

static ALLOCATIONS: AtomicUsize = AtomicUsize::new(0);

// SAFETY: defers every call to the system allocator unchanged; only counts.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        ALLOCATIONS.fetch_add(1, Ordering::SeqCst);
        // SAFETY: same contract as the caller's.
        unsafe { System.alloc(layout) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: same contract as the caller's.
        unsafe { System.dealloc(ptr, layout) }
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

fn pool(n: usize, balance: Balance) -> Pool {
    let endpoints = (0..n)
        .map(|i| {
            let addr = SocketAddr::from(([10, 0, (i >> 8) as u8, i as u8], 8080));
            Endpoint::detached(&format!("ep-{i}"), addr, EndpointState::new(i % 3 == 0))
        })
        .collect();
    Pool::new(endpoints, balance)
}

#[test]
fn picking_a_version_and_an_endpoint_allocates_nothing() {
    let split = Split::new(&[90, 10, 0, 5]);
    let pools: Vec<Pool> =
        [2, 100, 1000].into_iter().flat_map(|n| [pool(n, Balance::P2c), pool(n, Balance::RoundRobin)]).collect();
    // Warm up thread-locals (fastrand's generator) outside the count.
    let _ = pools[0].pick();
    let before = ALLOCATIONS.load(Ordering::SeqCst);
    let mut sink = 0usize;
    for i in 0..100_000 {
        sink += split.pick() + split.pick_unit(i * 7919);
        for p in &pools {
            sink += p.pick().map_or(0, |e| e.addr.port() as usize);
        }
    }
    let after = ALLOCATIONS.load(Ordering::SeqCst);
    assert!(sink > 0);
    assert_eq!(after - before, 0, "the pick path allocated {} times", after - before);
}
