//! Micro-benchmarks of the per-request and per-accept rate-limit work: a local GCRA decision
//! through `KeyTable` (one hot key, and 10k rotating keys), `PerIp::admit` + drop,
//! `IpFilter::permits` over 1000 CIDRs, and formatting the `RateLimit` header.
//!
//! Owns: bench-only fixtures. Does not measure the Redis store, sweeping, or config compilation.
//!
//! Run with `cargo bench --bench ratelimit`.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::sync::Arc;
use std::time::Duration;

use divan::{Bencher, black_box};
use ipnet::{IpNet, Ipv4Net, Ipv6Net};
use palisade::ratelimit::gcra::{Decision, Quota};
use palisade::ratelimit::{headers, table::KeyTable};
use palisade::server::admission::{IpFilter, PerIp};

fn main() {
    divan::main();
}

/// A generous quota, so the benches mostly measure the allowed path (the common one).
fn quota() -> Quota {
    Quota::new(1_000, Duration::from_secs(1), 100)
}

/// Key bytes shaped like a real one (policy prefix plus a client address).
fn key(i: u64) -> Vec<u8> {
    format!(
        "api:per-ip:10.{}.{}.{}",
        (i >> 16) & 255,
        (i >> 8) & 255,
        i & 255
    )
    .into_bytes()
}

#[divan::bench]
fn table_hot_key(bencher: Bencher) {
    let table = KeyTable::new(100_000);
    let q = quota();
    let k = key(7);
    let mut now = 1_000_000_000u64;
    bencher.bench_local(|| {
        now += 1_000_000; // exactly the quota's rate: allowed every time
        let h = table.hash(black_box(&k));
        black_box(table.check(h, &q, now))
    });
}

#[divan::bench]
fn table_10k_rotating_keys(bencher: Bencher) {
    let table = KeyTable::new(100_000);
    let q = quota();
    let keys: Vec<Vec<u8>> = (0..10_000).map(key).collect();
    let mut i = 0usize;
    let mut now = 1_000_000_000u64;
    bencher.bench_local(|| {
        i = (i + 1) % keys.len();
        now += 100;
        let h = table.hash(black_box(&keys[i]));
        black_box(table.check(h, &q, now))
    });
}

/// More distinct keys than the table holds: every insert evicts (the key-flood case).
#[divan::bench]
fn table_flood_full_table(bencher: Bencher) {
    let table = KeyTable::new(10_000);
    let q = Quota::new(1, Duration::from_secs(3600), 1);
    let mut i = 0u64;
    let now = 1_000_000_000u64;
    bencher.bench_local(|| {
        i += 1;
        let h = table.hash(black_box(&i.to_le_bytes()));
        black_box(table.check(h, &q, now))
    });
}

#[divan::bench]
fn per_ip_admit_drop(bencher: Bencher) {
    let per_ip = Arc::new(PerIp::new(64, Some(quota()), 100_000));
    let ips: Vec<IpAddr> = (0..1_000u32)
        .map(|i| IpAddr::V4(Ipv4Addr::from(0xc633_6400 + i)))
        .collect();
    let mut i = 0usize;
    let mut now = 1_000_000_000u64;
    bencher.bench_local(|| {
        i = (i + 1) % ips.len();
        now += 1_000;
        black_box(per_ip.admit(black_box(ips[i]), now).is_ok())
    });
}

#[divan::bench]
fn ip_filter_1000_cidrs(bencher: Bencher) {
    let mut rng = fastrand::Rng::with_seed(0x5eed);
    let mut deny: Vec<IpNet> = (0..800)
        .filter_map(|_| Ipv4Net::new(Ipv4Addr::from(rng.u32(..)), rng.u8(16..=32)).ok())
        .map(IpNet::V4)
        .collect();
    deny.extend(
        (0..200)
            .filter_map(|_| Ipv6Net::new(Ipv6Addr::from(rng.u128(..)), rng.u8(32..=64)).ok())
            .map(IpNet::V6),
    );
    assert_eq!(deny.len(), 1_000);
    let filter = IpFilter::new(&[], &deny);
    let probes: Vec<IpAddr> = (0..1_024)
        .map(|i| {
            if i % 4 == 0 {
                IpAddr::V6(Ipv6Addr::from(rng.u128(..)))
            } else {
                IpAddr::V4(Ipv4Addr::from(rng.u32(..)))
            }
        })
        .collect();
    let mut i = 0usize;
    bencher.bench_local(|| {
        i = (i + 1) & 1_023;
        black_box(filter.permits(black_box(probes[i])))
    });
}

#[divan::bench]
fn headers_limit_value(bencher: Bencher) {
    let d = Decision {
        allowed: true,
        remaining: 42,
        reset_after_ns: 12_345_678_901,
        retry_after_ns: 0,
    };
    bencher.bench_local(|| black_box(headers::limit_value(black_box("per-user"), black_box(&d))));
}
