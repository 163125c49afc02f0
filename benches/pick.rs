//! The per-request pure choices: a version from the split, an endpoint from a pool.
//! `tests/no_alloc.rs` checks the same paths allocate nothing.
#![forbid(unsafe_code)]

use std::hint::black_box;
use std::net::SocketAddr;

use criterion::{BenchmarkId, Criterion, criterion_group, criterion_main};
use weir::config::Balance;
use weir::data::pool::{Endpoint, EndpointState, Pool};
use weir::data::split::Split;

fn pool(n: usize, balance: Balance) -> Pool {
    let endpoints = (0..n)
        .map(|i| {
            let addr = SocketAddr::from(([10, (i >> 16) as u8, (i >> 8) as u8, i as u8], 8080));
            Endpoint::detached(&format!("ep-{i}"), addr, EndpointState::new(false))
        })
        .collect();
    Pool::new(endpoints, balance)
}

fn versions(c: &mut Criterion) {
    let mut g = c.benchmark_group("version");
    for (name, weights) in [("2 versions 90/10", vec![90, 10]), ("5 versions", vec![10, 20, 30, 25, 15])] {
        let split = Split::new(&weights);
        g.bench_function(BenchmarkId::new("weighted", name), |b| b.iter(|| black_box(split.pick())));
        // A sticky user bucket: the version for a fixed hash.
        g.bench_function(BenchmarkId::new("bucketed", name), |b| {
            let mut user = 0u64;
            b.iter(|| {
                user = user.wrapping_add(0x9E37_79B9_7F4A_7C15);
                black_box(split.pick_unit(black_box(user)))
            })
        });
    }
    g.finish();
}

fn endpoints(c: &mut Criterion) {
    let mut g = c.benchmark_group("endpoint");
    for n in [2usize, 100, 10_000] {
        for (label, balance) in [("p2c", Balance::P2c), ("round_robin", Balance::RoundRobin)] {
            let p = pool(n, balance);
            g.bench_with_input(BenchmarkId::new(label, n), &n, |b, _| b.iter(|| black_box(p.pick().map(|e| e.addr))));
        }
        // Half the pool down: the cost of skipping unhealthy endpoints.
        let p = pool(n, Balance::P2c);
        for e in p.endpoints().iter().step_by(2) {
            e.state.set_healthy(false);
        }
        g.bench_with_input(BenchmarkId::new("p2c_half_down", n), &n, |b, _| {
            b.iter(|| black_box(p.pick().map(|e| e.addr)))
        });
    }
    g.finish();
}

criterion_group!(benches, versions, endpoints);
criterion_main!(benches);
