//! In-process rate-limit state: one bounded, sharded table of GCRA TATs per policy, and the
//! "most-limited keys" list the admin API shows.
//!
//! Owns: [`KeyTable`] (key hash → TAT, 16 mutex shards, bounded memory with eviction) and
//! [`TopKeys`] (a space-saving heavy-hitter list).
//!
//! Does not own: building keys from requests (the caller hands over the key bytes), the quota
//! (passed per call, so a reload that changes a rate keeps the table), the clock, the shared
//! Redis store, or exporting numbers (methods return them; the integrator exports).
//!
//! Keys are stored only as a 64-bit keyed hash (`RandomState`, so clients cannot aim collisions
//! or shard hot spots without knowing the per-process key). Two distinct keys colliding on 64
//! bits would share a bucket; at 2⁻⁶⁴ per pair that is accepted. Because the map's keys are
//! already uniformly random, the maps themselves use a pass-through hasher.

use std::collections::HashMap;
use std::collections::hash_map::RandomState;
use std::hash::{BuildHasher, BuildHasherDefault, Hasher};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, MutexGuard, PoisonError};

use super::gcra::{self, Decision, Quota};

/// Number of shards (a power of two).
const SHARDS: usize = 16;
/// Entries looked at when a full shard must evict a live key.
const EVICTION_SAMPLE: usize = 8;

/// Hasher for keys that are already a keyed 64-bit hash: passes the value through.
#[derive(Default)]
struct PreHashed(u64);

impl Hasher for PreHashed {
    fn finish(&self) -> u64 {
        self.0
    }

    fn write(&mut self, bytes: &[u8]) {
        // Only `write_u64` is used by `u64` keys; this keeps the hasher total anyway.
        for &b in bytes {
            self.0 = self.0.rotate_left(8) ^ u64::from(b);
        }
    }

    fn write_u64(&mut self, n: u64) {
        self.0 = n;
    }
}

type TatMap = HashMap<u64, u64, BuildHasherDefault<PreHashed>>;

/// The shard for a hash. Bits 32..36 pick it: hashbrown takes bucket positions from the low
/// bits and its tag from the top 7, so neither is left constant within a shard.
fn shard_index(hash: u64) -> usize {
    ((hash >> 32) as usize) & (SHARDS - 1)
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

#[derive(Default)]
struct Shard {
    tats: TatMap,
    /// A lower bound on every stored TAT (`u64::MAX` when empty). While `now` is below it no
    /// entry can have expired, so a full shard skips the expiry scan and a flood of fresh keys
    /// costs O(sample) per insert instead of O(shard).
    min_tat: u64,
}

impl Shard {
    fn new() -> Shard {
        Shard {
            tats: TatMap::default(),
            min_tat: u64::MAX,
        }
    }

    /// Drops every expired entry and makes `min_tat` exact again.
    fn purge(&mut self, now_ns: u64) {
        self.tats.retain(|_, tat| *tat > now_ns);
        self.min_tat = self.tats.values().copied().min().unwrap_or(u64::MAX);
    }
}

/// Per-policy in-process GCRA state, keyed by a hash of the caller's key bytes.
///
/// Memory is bounded: each of the 16 shards holds at most `ceil(max_keys / 16)` keys. A new key
/// arriving at a full shard first clears the shard's expired keys (an expired key decides
/// exactly like an unseen one, so that changes nothing); if none had expired, it evicts the key
/// with the smallest TAT among a sample of 8 entries. The smallest TAT is the
/// key closest to expiry — the one whose forgetting grants the least unearned capacity — and it
/// is never a key that is currently being refused while a less-indebted key is in the sample,
/// so an attacker minting fresh keys evicts other fresh keys before it evicts a throttled one.
/// The sample is the shard's first entries in bucket order, which is set by the keyed hash:
/// unrelated to TAT and unpredictable to clients.
pub struct KeyTable {
    hasher: RandomState,
    shards: [Mutex<Shard>; SHARDS],
    /// Keys per shard at most (>= 1).
    shard_cap: usize,
    evictions: AtomicU64,
}

impl KeyTable {
    /// A table holding at most `max_keys` keys, rounded up to a multiple of 16 (at least 16).
    pub fn new(max_keys: usize) -> KeyTable {
        KeyTable {
            hasher: RandomState::new(),
            shards: std::array::from_fn(|_| Mutex::new(Shard::new())),
            shard_cap: max_keys.div_ceil(SHARDS).max(1),
            evictions: AtomicU64::new(0),
        }
    }

    /// The 64-bit hash of a key's bytes; stable for this table's lifetime only.
    pub fn hash(&self, key: &[u8]) -> u64 {
        self.hasher.hash_one(key)
    }

    /// Decides one request for the key with this hash at `now_ns`, and records it.
    pub fn check(&self, hash: u64, quota: &Quota, now_ns: u64) -> Decision {
        let mut shard = lock(&self.shards[shard_index(hash)]);
        if let Some(tat) = shard.tats.get_mut(&hash) {
            let (d, new_tat) = gcra::decide(quota, *tat, now_ns);
            *tat = new_tat;
            return d;
        }
        // Unseen (or swept) key: a fresh key is always allowed, so it always gets stored.
        let (d, new_tat) = gcra::decide(quota, 0, now_ns);
        if shard.tats.len() >= self.shard_cap {
            if now_ns >= shard.min_tat {
                shard.purge(now_ns);
            }
            if shard.tats.len() >= self.shard_cap {
                let victim = shard
                    .tats
                    .iter()
                    .take(EVICTION_SAMPLE)
                    .min_by_key(|&(_, tat)| *tat)
                    .map(|(&h, _)| h);
                if let Some(victim) = victim {
                    shard.tats.remove(&victim);
                    self.evictions.fetch_add(1, Ordering::Relaxed);
                }
            }
        }
        shard.tats.insert(hash, new_tat);
        shard.min_tat = shard.min_tat.min(new_tat);
        d
    }

    /// Removes every key whose TAT is at or before `now_ns` and returns how many keys remain.
    /// Also gives memory back after a flood. Meant for a periodic background task.
    pub fn sweep(&self, now_ns: u64) -> usize {
        let mut remaining = 0;
        for shard in &self.shards {
            let mut shard = lock(shard);
            shard.purge(now_ns);
            let len = shard.tats.len();
            if len.saturating_mul(4) < shard.tats.capacity() {
                shard.tats.shrink_to(len.saturating_mul(2));
            }
            remaining += len;
        }
        remaining
    }

    /// Keys currently stored (locks each shard in turn; not for the request path).
    pub fn len(&self) -> usize {
        self.shards.iter().map(|s| lock(s).tats.len()).sum()
    }

    /// Whether no key is stored.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Live keys evicted to make room since construction.
    pub fn evictions(&self) -> u64 {
        self.evictions.load(Ordering::Relaxed)
    }

    #[cfg(test)]
    fn tat(&self, hash: u64) -> Option<u64> {
        lock(&self.shards[shard_index(hash)])
            .tats
            .get(&hash)
            .copied()
    }
}

struct TopEntry {
    hash: u64,
    count: u64,
    display: String,
}

/// The most-limited keys right now, for the admin API: a space-saving heavy-hitter list.
///
/// Space-saving (Metwally et al.): a key already listed gets `count += 1`; a new key takes a
/// free slot with count 1, or replaces the entry with the smallest count `m` and starts at
/// `m + 1`. Counts therefore overestimate by at most the count they inherited, and any key
/// recorded more than `total / capacity` times is guaranteed to be listed. [`TopKeys::decay`]
/// halves all counts (once per sweep), so the list reflects recent refusals.
pub struct TopKeys {
    /// Entries kept at most.
    capacity: usize,
    entries: Mutex<Vec<TopEntry>>,
}

impl TopKeys {
    /// A list of at most `capacity` keys (e.g. 32). A capacity of 0 records nothing.
    pub fn new(capacity: usize) -> TopKeys {
        TopKeys {
            capacity,
            entries: Mutex::new(Vec::with_capacity(capacity)),
        }
    }

    /// Counts one event for the key with this hash. `display` runs only when the key enters the
    /// list (outside the lock), so a repeat offender costs a short scan and no allocation.
    pub fn record(&self, hash: u64, display: impl FnOnce() -> String) {
        if self.capacity == 0 || self.bump(hash) {
            return;
        }
        let mut display = display();
        {
            let mut entries = lock(&self.entries);
            if let Some(e) = entries.iter_mut().find(|e| e.hash == hash) {
                // Another thread listed it while we were formatting.
                e.count = e.count.saturating_add(1);
            } else if entries.len() < self.capacity {
                entries.push(TopEntry {
                    hash,
                    count: 1,
                    display,
                });
                return;
            } else if let Some(min) = entries.iter_mut().min_by_key(|e| e.count) {
                min.hash = hash;
                min.count = min.count.saturating_add(1);
                // Swap so the evicted string is freed after the lock is released.
                std::mem::swap(&mut min.display, &mut display);
            }
        }
        drop(display);
    }

    fn bump(&self, hash: u64) -> bool {
        let mut entries = lock(&self.entries);
        match entries.iter_mut().find(|e| e.hash == hash) {
            Some(e) => {
                e.count = e.count.saturating_add(1);
                true
            }
            None => false,
        }
    }

    /// Halves every count and drops entries that reach 0.
    pub fn decay(&self) {
        let mut entries = lock(&self.entries);
        entries.retain_mut(|e| {
            e.count /= 2;
            e.count > 0
        });
    }

    /// Up to `n` keys with their counts, highest count first (ties by display text).
    pub fn list(&self, n: usize) -> Vec<(String, u64)> {
        let mut out: Vec<(String, u64)> = lock(&self.entries)
            .iter()
            .map(|e| (e.display.clone(), e.count))
            .collect();
        out.sort_unstable_by(|a, b| b.1.cmp(&a.1).then_with(|| a.0.cmp(&b.0)));
        out.truncate(n);
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use std::cell::Cell;

    fn quota(emission_ns: u64, burst: u32) -> Quota {
        Quota { emission_ns, burst }
    }

    /// `n` distinct keys whose hashes land in the same shard.
    fn same_shard_keys(table: &KeyTable, n: usize) -> Vec<u64> {
        let mut by_shard: Vec<Vec<u64>> = vec![Vec::new(); SHARDS];
        for i in 0u64.. {
            let h = table.hash(&i.to_le_bytes());
            let bucket = &mut by_shard[shard_index(h)];
            bucket.push(h);
            if bucket.len() == n {
                return bucket.clone();
            }
        }
        unreachable!()
    }

    #[test]
    fn check_follows_gcra_per_key() {
        let table = KeyTable::new(1_000);
        let q = quota(1_000, 2);
        let a = table.hash(b"client-a");
        let b = table.hash(b"client-b");
        assert_ne!(a, b);
        assert_eq!(a, table.hash(b"client-a"));
        assert!(table.check(a, &q, 10).allowed);
        let d = table.check(a, &q, 10);
        assert!(d.allowed && d.remaining == 0);
        let d = table.check(a, &q, 10);
        assert!(!d.allowed && d.retry_after_ns == 1_000);
        assert!(table.check(b, &q, 10).allowed, "keys are independent");
        assert!(table.check(a, &q, 1_010).allowed);
        assert_eq!(table.len(), 2);
    }

    #[test]
    fn sweep_drops_only_expired_keys() {
        let table = KeyTable::new(1_000);
        let a = table.hash(b"a");
        let b = table.hash(b"b");
        table.check(a, &quota(100, 5), 0); // tat 100
        table.check(b, &quota(1_000, 5), 0); // tat 1000
        assert_eq!(table.sweep(99), 2);
        assert_eq!(table.sweep(100), 1, "tat == now is expired");
        assert_eq!(table.tat(a), None);
        assert_eq!(table.tat(b), Some(1_000));
        assert_eq!(table.sweep(5_000), 0);
        assert!(table.is_empty());
    }

    #[test]
    fn full_shard_reuses_expired_slots_before_evicting() {
        let table = KeyTable::new(2 * SHARDS); // 2 per shard
        let keys = same_shard_keys(&table, 4);
        let q = quota(100, 1);
        table.check(keys[0], &q, 0);
        table.check(keys[1], &q, 0);
        // Both expired by 100: the newcomers take their place without an eviction.
        table.check(keys[2], &q, 100);
        table.check(keys[3], &q, 100);
        assert_eq!(table.evictions(), 0);
        assert_eq!(table.len(), 2);
        assert!(table.tat(keys[2]).is_some() && table.tat(keys[3]).is_some());
    }

    #[test]
    fn full_shard_evicts_the_key_closest_to_expiry() {
        let table = KeyTable::new(2 * SHARDS);
        let keys = same_shard_keys(&table, 3);
        let slow = quota(1_000_000, 1);
        table.check(keys[0], &slow, 0); // throttled for a long time: tat 1_000_000
        table.check(keys[1], &quota(10, 1), 0); // tat 10
        table.check(keys[2], &quota(10, 1), 5); // shard full, nothing expired
        assert_eq!(table.evictions(), 1);
        assert_eq!(table.tat(keys[1]), None);
        assert!(
            !table.check(keys[0], &slow, 6).allowed,
            "the throttled key keeps its state"
        );
        assert_eq!(table.len(), 2);
    }

    #[test]
    fn zero_max_keys_still_holds_one_key_per_shard() {
        let table = KeyTable::new(0);
        let q = quota(1_000, 1);
        for i in 0u64..100 {
            let h = table.hash(&i.to_le_bytes());
            assert!(table.check(h, &q, 0).allowed);
        }
        assert!(table.len() <= SHARDS);
        assert!(table.evictions() >= 100 - SHARDS as u64);
    }

    #[test]
    fn top_keys_counts_and_formats_once() {
        let top = TopKeys::new(4);
        let calls = Cell::new(0);
        for _ in 0..5 {
            top.record(1, || {
                calls.set(calls.get() + 1);
                "one".to_owned()
            });
        }
        top.record(2, || "two".to_owned());
        top.record(2, || "two".to_owned());
        assert_eq!(calls.get(), 1, "repeat offender formats once");
        assert_eq!(
            top.list(10),
            vec![("one".to_owned(), 5), ("two".to_owned(), 2)]
        );
        assert_eq!(top.list(1), vec![("one".to_owned(), 5)]);
    }

    #[test]
    fn top_keys_replaces_the_minimum_with_min_plus_one() {
        let top = TopKeys::new(2);
        top.record(1, || "a".into());
        top.record(1, || "a".into());
        top.record(2, || "b".into());
        top.record(3, || "c".into()); // replaces b (count 1) → c with 2
        assert_eq!(top.list(5), vec![("a".into(), 2), ("c".into(), 2)]);
        let zero = TopKeys::new(0);
        zero.record(1, || unreachable!("capacity 0 records nothing"));
        assert!(zero.list(5).is_empty());
    }

    #[test]
    fn top_keys_decay_halves_and_drops_zeros() {
        let top = TopKeys::new(4);
        for _ in 0..5 {
            top.record(1, || "a".into());
        }
        top.record(2, || "b".into());
        top.decay();
        assert_eq!(top.list(5), vec![("a".into(), 2)]);
        top.decay();
        top.decay();
        assert!(top.list(5).is_empty());
    }

    proptest! {
        #[test]
        fn len_never_exceeds_bound(
            max_keys in 0usize..200,
            stream in proptest::collection::vec((0u16..2_000, 0u64..50), 1..1_500),
            emission in 1u64..10_000,
        ) {
            let table = KeyTable::new(max_keys);
            let bound = max_keys.div_ceil(SHARDS).max(1) * SHARDS;
            let q = quota(emission, 3);
            let mut now = 0;
            for (key, dt) in stream {
                now += dt;
                table.check(table.hash(&key.to_le_bytes()), &q, now);
                prop_assert!(table.len() <= bound);
            }
        }

        /// With room for every key, the table is exactly a map of GCRA TATs; sweep keeps every
        /// key with tat > now (unchanged) and decisions after a sweep are the same as without it.
        #[test]
        fn sweep_keeps_live_keys_and_changes_no_decision(
            stream in proptest::collection::vec((0u8..40, 0u64..3_000), 1..400),
            sweep_every in 1usize..50,
        ) {
            let table = KeyTable::new(10_000);
            let q = quota(1_000, 3);
            let mut model: HashMap<u64, u64> = HashMap::new();
            let mut now = 0;
            for (i, (key, dt)) in stream.into_iter().enumerate() {
                now += dt;
                let h = table.hash(&[key]);
                let old = model.get(&h).copied().unwrap_or(0);
                let (want, tat) = gcra::decide(&q, old, now);
                model.insert(h, tat);
                prop_assert_eq!(table.check(h, &q, now), want);
                if i % sweep_every == 0 {
                    let remaining = table.sweep(now);
                    let live = model.values().filter(|&&t| t > now).count();
                    prop_assert_eq!(remaining, live);
                    for (&h, &t) in &model {
                        prop_assert_eq!(table.tat(h), (t > now).then_some(t));
                    }
                }
            }
            prop_assert_eq!(table.evictions(), 0);
        }

        /// Space-saving guarantee: a key with more than total/capacity events is listed, and a
        /// listed count never underestimates.
        #[test]
        fn top_keys_keeps_heavy_hitters(
            stream in proptest::collection::vec(
                prop_oneof![3 => 0u64..3, 1 => 3u64..500], 1..600),
        ) {
            let capacity = 8;
            let top = TopKeys::new(capacity);
            let mut truth: HashMap<u64, u64> = HashMap::new();
            for &k in &stream {
                top.record(k, || k.to_string());
                *truth.entry(k).or_default() += 1;
            }
            let listed: HashMap<String, u64> = top.list(capacity).into_iter().collect();
            prop_assert!(listed.len() <= capacity);
            for (k, &n) in &truth {
                if n > stream.len() as u64 / capacity as u64 {
                    prop_assert!(listed.contains_key(&k.to_string()), "heavy key {} missing", k);
                }
                if let Some(&c) = listed.get(&k.to_string()) {
                    prop_assert!(c >= n);
                }
            }
        }
    }
}
