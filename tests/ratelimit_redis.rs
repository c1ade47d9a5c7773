//! `SharedStore` against a real `redis-server` (one per test, on its own port): the GCRA script is
//! atomic across proxies and agrees with `gcra::decide`, counters expire, instances announce
//! themselves and age out, and a dead, restarted or frozen Redis degrades to fast errors and comes
//! back by itself.
//!
//! Every wait is a bounded poll on a condition, never a bare sleep. Budgets are generous where
//! the test is not about timing (the machine is shared), tight where it is.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::{
    sync::Arc,
    time::{Duration, Instant},
};

use palisade::ratelimit::{
    gcra::{Decision, Quota, decide},
    store::{GCRA_LUA, SharedStore, StoreError, StoreSettings},
};
use support::{eventually, redis::RedisServer, refused_addr};

/// 100/s (10 ms apart), burst 10.
fn quota() -> Quota {
    Quota::new(100, Duration::from_secs(1), 10)
}

const EMISSION: Duration = Duration::from_millis(10);

fn settings(url: String, id: &str) -> StoreSettings {
    StoreSettings {
        url,
        timeout: Duration::from_secs(1),
        connect_timeout: Duration::from_millis(500),
        key_prefix: "palisade-test:".into(),
        instance_ttl: Duration::from_millis(600),
        instance_id: id.into(),
    }
}

async fn wait_up(store: &Arc<SharedStore>) {
    let s = store.clone();
    eventually("the store is up", Duration::from_secs(5), move || {
        let s = s.clone();
        async move { s.is_up() }
    })
    .await;
}

async fn started(redis: &RedisServer, id: &str) -> Arc<SharedStore> {
    let s = SharedStore::start(settings(redis.url(), id));
    wait_up(&s).await;
    s
}

async fn conn(redis: &RedisServer) -> redis::aio::MultiplexedConnection {
    redis::Client::open(redis.url())
        .unwrap()
        .get_multiplexed_async_connection()
        .await
        .unwrap()
}

/// The server's clock in µs.
async fn server_now_us(c: &mut redis::aio::MultiplexedConnection) -> u64 {
    let (s, us): (u64, u64) = redis::cmd("TIME").query_async(c).await.unwrap();
    s * 1_000_000 + us
}

async fn check(store: &SharedStore, key: u64) -> Decision {
    store.check("api", key, &quota()).await.unwrap().0
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_proxies_share_one_burst_then_one_rate() {
    let redis = RedisServer::start();
    let a = started(&redis, "a").await;
    let b = started(&redis, "b").await;

    let t0 = Instant::now();
    let mut allowed = 0u64;
    for i in 0..20u32 {
        let s = if i.is_multiple_of(2) { &a } else { &b };
        let d = check(s, 1).await;
        if i < 10 {
            assert!(d.allowed, "request {i} of a fresh burst of 10 was refused");
            // 9 − i when the burst takes under 10 ms, a slot more per 10 ms it takes.
            let freed = (t0.elapsed().as_nanos() / EMISSION.as_nanos()) as u32;
            assert!(
                (9 - i..=(9 - i + freed).min(9)).contains(&d.remaining),
                "remaining {} after {} requests over both proxies",
                d.remaining,
                i + 1
            );
        }
        allowed += u64::from(d.allowed);
    }
    let w = t0.elapsed();
    // At most B + ⌊w/T⌋ in any window of length w (the GCRA bound); each proxy alone would have
    // admitted 10, 20 together.
    let max = 10 + (w.as_nanos() / EMISSION.as_nanos()) as u64;
    assert!(
        (10..=max).contains(&allowed),
        "{allowed} of 20 admitted in {w:?} (at most {max})"
    );

    // Then the rate, still counted across both.
    let mut i = 0u32;
    while t0.elapsed() < Duration::from_millis(500) {
        let s = if i.is_multiple_of(2) { &a } else { &b };
        allowed += u64::from(check(s, 1).await.allowed);
        i += 1;
    }
    let w = t0.elapsed();
    let max = 10 + (w.as_nanos() / EMISSION.as_nanos()) as u64;
    assert!(
        allowed <= max && allowed + 3 >= max,
        "{allowed} admitted in {w:?} at 100/s burst 10 (expected {max}, at most 3 fewer)"
    );
    // Another key has its own counter.
    assert!(check(&a, 2).await.allowed);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_script_agrees_with_decide() {
    let redis = RedisServer::start();
    let store = started(&redis, "a").await;
    let mut c = conn(&redis).await;
    let q = quota();
    let key = store.counter_key("api", 7);
    let set = |tat_us: u64| {
        redis::cmd("SET")
            .arg(&key)
            .arg(tat_us.to_string())
            .arg("PX")
            .arg(60_000)
            .clone()
    };
    // What `decide` says for `tat` at every server instant in [t0, t1] (it is monotonic there).
    let bracket = |tat_us: u64, t0: u64, t1: u64| {
        (
            decide(&q, tat_us * 1000, t0 * 1000).0,
            decide(&q, tat_us * 1000, t1 * 1000).0,
        )
    };

    // Stale TAT: as good as a fresh key, whatever the exact instant.
    let now = server_now_us(&mut c).await;
    let _: () = set(now - 3_600_000_000).query_async(&mut c).await.unwrap();
    let d = check(&store, 7).await;
    assert_eq!(
        d,
        Decision {
            allowed: true,
            remaining: 9,
            reset_after_ns: 10_000_000,
            retry_after_ns: 0
        }
    );

    // TAT 35 ms ahead: admitted, the TAT moves by exactly one emission.
    let t0 = server_now_us(&mut c).await;
    let tat = t0 + 35_000;
    let _: () = set(tat).query_async(&mut c).await.unwrap();
    let d = check(&store, 7).await;
    let t1 = server_now_us(&mut c).await;
    let (early, late) = bracket(tat, t0, t1);
    assert!(d.allowed && early.allowed && late.allowed);
    assert!(
        (early.remaining..=late.remaining).contains(&d.remaining),
        "{d:?} vs {early:?}..{late:?}"
    );
    assert!(
        (late.reset_after_ns..=early.reset_after_ns).contains(&d.reset_after_ns),
        "{d:?} vs {early:?}..{late:?}"
    );
    assert_eq!(d.retry_after_ns, 0);
    let stored: u64 = redis::cmd("GET")
        .arg(&key)
        .query_async(&mut c)
        .await
        .unwrap();
    assert_eq!(stored, tat + 10_000);

    // TAT 200 ms ahead (> τ = 90 ms): refused, nothing written.
    let t0 = server_now_us(&mut c).await;
    let tat = t0 + 200_000;
    let _: () = set(tat).query_async(&mut c).await.unwrap();
    let d = check(&store, 7).await;
    let t1 = server_now_us(&mut c).await;
    let (early, late) = bracket(tat, t0, t1);
    assert!(!d.allowed && !early.allowed && !late.allowed);
    assert_eq!(d.remaining, 0);
    assert!(
        (late.retry_after_ns..=early.retry_after_ns).contains(&d.retry_after_ns),
        "{d:?} vs {early:?}..{late:?}"
    );
    assert!(
        (late.reset_after_ns..=early.reset_after_ns).contains(&d.reset_after_ns),
        "{d:?} vs {early:?}..{late:?}"
    );
    let stored: u64 = redis::cmd("GET")
        .arg(&key)
        .query_async(&mut c)
        .await
        .unwrap();
    assert_eq!(stored, tat, "a refusal must not move the TAT");
    let pttl: i64 = redis::cmd("PTTL")
        .arg(&key)
        .query_async(&mut c)
        .await
        .unwrap();
    assert!(
        pttl > 50_000,
        "a refusal must not rewrite the expiry (PTTL {pttl} ms)"
    );
}

/// One run of the script at `now_us` (its clock override) for a key holding `tat_us` (0: unset).
/// Returns (allowed, the TAT the script read, the TAT stored after).
async fn run_script(
    c: &mut redis::aio::MultiplexedConnection,
    emission_us: u64,
    burst: u32,
    tat_us: u64,
    now_us: u64,
) -> (bool, u64, u64) {
    let key = "palisade-test:rl:exact:0";
    let _: () = redis::cmd("DEL").arg(key).query_async(c).await.unwrap();
    if tat_us > 0 {
        let _: () = redis::cmd("SET")
            .arg(key)
            .arg(tat_us.to_string())
            .query_async(c)
            .await
            .unwrap();
    }
    // The stored TAT expires in real time while the script ran on a clock of its own, so it is
    // read in the same transaction.
    let ((allowed, read, now), stored): ((u8, u64, u64), Option<u64>) = redis::pipe()
        .atomic()
        .cmd("EVAL")
        .arg(GCRA_LUA)
        .arg(1)
        .arg(key)
        .arg(emission_us)
        .arg(burst)
        .arg(now_us)
        .cmd("GET")
        .arg(key)
        .query_async(c)
        .await
        .unwrap();
    assert_eq!(now, now_us);
    (allowed == 1, read, stored.unwrap_or(0))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_script_is_exactly_decide_on_a_given_clock() {
    let redis = RedisServer::start();
    let mut c = conn(&redis).await;
    let now = 1_700_000_000_000_000u64;
    // (emission µs, burst, tat µs): the edges of the rule, then random cases.
    let mut cases = vec![
        (10_000, 10, 0),
        (10_000, 10, now - 1),
        (10_000, 10, now),
        (10_000, 10, now + 90_000),
        (10_000, 10, now + 90_001),
        (10_000, 10, now + 100_000),
        (10_000, 1, now),
        (10_000, 1, now + 1),
        (1, 1, now),
        (3_600_000_000, 1000, now + 3_600_000_000 * 999),
        (3_600_000_000, 1000, now + 3_600_000_000 * 999 + 1),
    ];
    let mut rng = fastrand::Rng::with_seed(42);
    for _ in 0..200 {
        let emission = rng.u64(1..=100_000);
        let burst = rng.u32(1..=20);
        let tat = if rng.bool() {
            0
        } else {
            now - 1_000_000 + rng.u64(..=emission * u64::from(burst) + 2_000_000)
        };
        cases.push((emission, burst, tat));
    }
    for (emission, burst, tat) in cases {
        let q = Quota {
            emission_ns: emission * 1000,
            burst,
        };
        let (want, want_tat) = decide(&q, tat * 1000, now * 1000);
        let (allowed, read, stored) = run_script(&mut c, emission, burst, tat, now).await;
        let case = format!(
            "T={emission}µs B={burst} tat=now{:+}",
            tat as i128 - now as i128
        );
        assert_eq!(allowed, want.allowed, "{case}");
        assert_eq!(read, tat, "{case}");
        assert_eq!(stored * 1000, want_tat, "{case}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn counters_expire_when_they_stop_mattering() {
    let redis = RedisServer::start();
    let store = started(&redis, "a").await;
    let mut c = conn(&redis).await;
    let key = store.counter_key("api", 3);
    let mut d = check(&store, 3).await;
    for _ in 0..2 {
        d = check(&store, 3).await;
    }
    assert!(d.allowed);
    let pttl: i64 = redis::cmd("PTTL")
        .arg(&key)
        .query_async(&mut c)
        .await
        .unwrap();
    let reset_ms = d.reset_after_ns.div_ceil(1_000_000);
    assert!(
        pttl > 0 && pttl <= reset_ms as i64,
        "PTTL {pttl} ms, reset after {reset_ms} ms"
    );
    assert!(reset_ms <= 30, "three requests, 10 ms each: {d:?}");
    // And it does go away.
    eventually("the counter expires", Duration::from_secs(5), || {
        let url = redis.url();
        let key = key.clone();
        async move {
            let mut c = redis::Client::open(url)
                .unwrap()
                .get_multiplexed_async_connection()
                .await
                .unwrap();
            let n: i64 = redis::cmd("EXISTS")
                .arg(&key)
                .query_async(&mut c)
                .await
                .unwrap();
            n == 0
        }
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn instances_announce_themselves_and_age_out() {
    let redis = RedisServer::start();
    let a = started(&redis, "a").await;
    assert_eq!(a.live_instances(), 1);
    let b = started(&redis, "b").await;
    let (a2, b2) = (a.clone(), b.clone());
    eventually(
        "both see two instances",
        Duration::from_secs(5),
        move || {
            let (a, b) = (a2.clone(), b2.clone());
            async move { a.live_instances() == 2 && b.live_instances() == 2 }
        },
    )
    .await;

    drop(b);
    let a2 = a.clone();
    eventually(
        "a sees one instance again",
        Duration::from_secs(5),
        move || {
            let a = a2.clone();
            async move { a.live_instances() == 1 }
        },
    )
    .await;

    // An instance that crashed (no goodbye): it ages out after the ttl.
    let mut c = conn(&redis).await;
    let now_ms = server_now_us(&mut c).await / 1000;
    let _: () = redis::cmd("ZADD")
        .arg("palisade-test:instances")
        .arg(now_ms)
        .arg("crashed")
        .query_async(&mut c)
        .await
        .unwrap();
    let a2 = a.clone();
    eventually(
        "a counts the crashed one",
        Duration::from_secs(5),
        move || {
            let a = a2.clone();
            async move { a.live_instances() == 2 }
        },
    )
    .await;
    let seen = Instant::now();
    let a2 = a.clone();
    eventually(
        "the crashed one ages out",
        Duration::from_secs(5),
        move || {
            let a = a2.clone();
            async move { a.live_instances() == 1 }
        },
    )
    .await;
    assert!(
        seen.elapsed() >= Duration::from_millis(300),
        "aged out after {:?}, before the 600 ms ttl could pass",
        seen.elapsed()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unreachable_or_invalid_redis_is_just_down() {
    for url in [
        format!("redis://{}/", refused_addr()),
        "not a url".to_owned(),
    ] {
        let store = SharedStore::start(settings(url.clone(), "a"));
        assert!(!store.is_up());
        assert_eq!(store.live_instances(), 1);
        let t = Instant::now();
        let r = store.check("api", 1, &quota()).await;
        assert_eq!(r, Err(StoreError::Down), "{url}");
        assert!(
            t.elapsed() < Duration::from_millis(10),
            "{url}: {:?}",
            t.elapsed()
        );
        // Still down after a few probes.
        tokio::time::sleep(Duration::from_millis(600)).await;
        assert!(!store.is_up(), "{url}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_crashed_redis_fails_fast_and_is_picked_up_again() {
    let mut redis = RedisServer::start();
    let mut s = settings(redis.url(), "a");
    s.timeout = Duration::from_millis(200);
    s.instance_ttl = Duration::from_secs(5);
    let store = SharedStore::start(s);
    wait_up(&store).await;
    assert!(check(&store, 1).await.allowed);

    redis.stop();
    let t = Instant::now();
    let r = store.check("api", 1, &quota()).await;
    assert!(r.is_err(), "{r:?}");
    assert!(
        t.elapsed() < Duration::from_millis(200 + 150),
        "the failure took {:?}",
        t.elapsed()
    );
    assert!(!store.is_up());
    let t = Instant::now();
    assert_eq!(store.check("api", 1, &quota()).await, Err(StoreError::Down));
    assert!(t.elapsed() < Duration::from_millis(10), "{:?}", t.elapsed());

    redis.restart();
    let back = Instant::now();
    wait_up(&store).await;
    assert!(back.elapsed() < Duration::from_secs(5));
    let (d, latency) = store.check("api", 1, &quota()).await.unwrap();
    assert!(d.allowed, "{d:?}");
    assert!(latency < Duration::from_millis(200));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_frozen_redis_times_out_within_the_budget() {
    let redis = RedisServer::start();
    let budget = Duration::from_millis(50);
    let mut s = settings(redis.url(), "a");
    s.timeout = budget;
    // No heartbeat during the freeze: the request path is what must notice.
    s.instance_ttl = Duration::from_secs(30);
    let store = SharedStore::start(s);
    wait_up(&store).await;
    assert!(check(&store, 1).await.allowed);

    redis.freeze();
    let t = Instant::now();
    let r = store.check("api", 1, &quota()).await;
    let took = t.elapsed();
    assert_eq!(r, Err(StoreError::Timeout));
    assert!(
        took >= budget && took < budget + Duration::from_millis(150),
        "timed out after {took:?} (budget {budget:?})"
    );
    assert!(!store.is_up());
    assert_eq!(store.check("api", 1, &quota()).await, Err(StoreError::Down));

    redis.thaw();
    wait_up(&store).await;
    assert!(check(&store, 1).await.allowed);
}
