//! Connection admission for a listener: the checks made at accept, before any TLS or HTTP work,
//! so an abusive or unwanted client costs one accept and one close.
//!
//! Owns: [`IpFilter`] (allow/deny CIDR lists) and [`PerIp`] (a per-client concurrent-connection
//! cap and new-connection rate, with the [`IpSlot`] guard that holds a connection's place), and
//! [`Refusal`] (why, as a metric label).
//!
//! Does not own: the accept loop, closing refused sockets, metrics export, config, or which
//! address counts as the client (the caller passes the socket peer; PROXY-protocol or trusted
//! forwarding headers are resolved elsewhere, and too late for this stage anyway). Time comes in
//! as `now_ns` on the caller's monotonic scale.
//!
//! Addresses are canonicalised first: an IPv4-mapped IPv6 address (`::ffff:a.b.c.d`, what a
//! dual-stack socket reports for an IPv4 peer) is treated as that IPv4 address everywhere.

use std::collections::HashMap;
use std::collections::hash_map::RandomState;
use std::fmt;
use std::hash::BuildHasher;
use std::net::IpAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use ipnet::IpNet;

use crate::ratelimit::gcra::{self, Quota};

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

/// Sorts inclusive ranges and merges overlapping or adjacent ones, so that lookups can binary
/// search and at most one range can contain any address.
fn merge<T: Ord + Copy>(mut ranges: Vec<(T, T)>, succ: impl Fn(T) -> Option<T>) -> Vec<(T, T)> {
    ranges.sort_unstable();
    let mut out: Vec<(T, T)> = Vec::with_capacity(ranges.len());
    for (start, end) in ranges {
        match out.last_mut() {
            Some(last) if start <= last.1 || succ(last.1) == Some(start) => {
                last.1 = last.1.max(end);
            }
            _ => out.push((start, end)),
        }
    }
    out.shrink_to_fit();
    out
}

/// Whether `x` falls in one of the sorted, disjoint inclusive `ranges`.
fn in_ranges<T: Ord + Copy>(ranges: &[(T, T)], x: T) -> bool {
    let after = ranges.partition_point(|r| r.0 <= x);
    after
        .checked_sub(1)
        .and_then(|i| ranges.get(i))
        .is_some_and(|r| x <= r.1)
}

/// A set of CIDRs as merged address ranges per family.
#[derive(Debug, Clone, Default)]
struct Ranges {
    v4: Vec<(u32, u32)>,
    v6: Vec<(u128, u128)>,
}

impl Ranges {
    fn new(nets: &[IpNet]) -> Ranges {
        let (mut v4, mut v6) = (Vec::new(), Vec::new());
        for net in nets {
            match net {
                IpNet::V4(n) => v4.push((u32::from(n.network()), u32::from(n.broadcast()))),
                IpNet::V6(n) => {
                    let (lo, hi) = (u128::from(n.network()), u128::from(n.broadcast()));
                    // A CIDR written inside ::ffff:0:0/96 names IPv4 clients; since clients are
                    // canonicalised to IPv4, store it as the IPv4 range it means. Wider IPv6
                    // CIDRs (e.g. ::/0) keep to IPv6 clients.
                    if n.prefix_len() >= 96 && lo >> 32 == 0xffff {
                        v4.push((lo as u32, hi as u32));
                    } else {
                        v6.push((lo, hi));
                    }
                }
            }
        }
        Ranges {
            v4: merge(v4, |x| x.checked_add(1)),
            v6: merge(v6, |x| x.checked_add(1)),
        }
    }

    fn contains(&self, canonical: IpAddr) -> bool {
        match canonical {
            IpAddr::V4(a) => in_ranges(&self.v4, u32::from(a)),
            IpAddr::V6(a) => in_ranges(&self.v6, u128::from(a)),
        }
    }

    fn is_empty(&self) -> bool {
        self.v4.is_empty() && self.v6.is_empty()
    }
}

/// Allow/deny CIDR lists for a listener. Deny wins; an empty allow list allows everyone; a
/// non-empty allow list admits only what it lists, in either family (an allow list of IPv4
/// CIDRs alone refuses every IPv6 client). Lookup is two binary searches over merged ranges,
/// O(log n) for any list size.
#[derive(Debug, Clone, Default)]
pub struct IpFilter {
    allow: Ranges,
    deny: Ranges,
}

impl IpFilter {
    /// Compiles the lists (overlapping and adjacent CIDRs are merged).
    pub fn new(allow: &[IpNet], deny: &[IpNet]) -> IpFilter {
        IpFilter {
            allow: Ranges::new(allow),
            deny: Ranges::new(deny),
        }
    }

    /// Whether a client at `ip` may connect.
    pub fn permits(&self, ip: IpAddr) -> bool {
        let ip = ip.to_canonical();
        !self.deny.contains(ip) && (self.allow.is_empty() || self.allow.contains(ip))
    }

    /// [`IpFilter::permits`] as a `Result`, to chain with [`PerIp::admit`].
    pub fn check(&self, ip: IpAddr) -> Result<(), Refusal> {
        if self.permits(ip) {
            Ok(())
        } else {
            Err(Refusal::Denied)
        }
    }

    /// Whether both lists are empty (the filter permits everyone and can be skipped).
    pub fn is_empty(&self) -> bool {
        self.allow.is_empty() && self.deny.is_empty()
    }
}

/// Why a connection was refused at accept.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Refusal {
    /// The IP filter denies the client.
    Denied,
    /// The client already holds the per-IP maximum of concurrent connections.
    TooManyConnections,
    /// The client opens connections faster than the per-IP rate.
    ConnectionRate,
}

impl Refusal {
    /// Metric label.
    pub fn as_str(self) -> &'static str {
        match self {
            Refusal::Denied => "denied",
            Refusal::TooManyConnections => "per_ip_connections",
            Refusal::ConnectionRate => "per_ip_rate",
        }
    }
}

/// Number of shards (a power of two).
const SHARDS: usize = 16;
/// Idle entries compared when a full shard must evict one that still holds rate state.
const EVICTION_SAMPLE: usize = 8;
/// Entries looked at, at most, to find those idle ones (bounds the cost when most are busy).
const EVICTION_SCAN: usize = 64;

/// The identity a client is counted under. IPv4 clients by address (as `::ffff:a.b.c.d`, whose
/// low 64 bits are never zero); IPv6 clients by their /64 (low 64 bits zero): one host normally
/// owns a whole /64 — SLAAC and privacy extensions let it pick any of 2⁶⁴ addresses, so a
/// per-address count would be evaded by simply rotating source addresses, and ISPs assign a
/// subscriber at least a /64.
fn client_key(ip: IpAddr) -> u128 {
    match ip.to_canonical() {
        IpAddr::V4(a) => 0xffff_0000_0000 | u128::from(u32::from(a)),
        IpAddr::V6(a) => u128::from(a) & !u128::from(u64::MAX),
    }
}

#[derive(Debug, Clone, Copy)]
struct Entry {
    /// Open connections holding an [`IpSlot`].
    conns: u32,
    /// GCRA theoretical arrival time of the connection rate (0 without a rate).
    tat: u64,
}

#[derive(Debug)]
struct IpShard {
    map: HashMap<u128, Entry>,
    /// A lower bound on the TAT of every zero-count entry (`u64::MAX` if none): while `now` is
    /// below it, scanning for expired idle entries would find nothing.
    idle_min_tat: u64,
    /// The latest `now_ns` an admit in this shard saw, never ahead of the caller's clock. Lets
    /// a dropped slot (which has no `now`) tell that its entry's rate state has expired.
    clock: u64,
}

impl IpShard {
    fn new() -> IpShard {
        IpShard {
            map: HashMap::new(),
            idle_min_tat: u64::MAX,
            clock: 0,
        }
    }

    /// Removes idle entries whose rate state has expired; makes `idle_min_tat` exact.
    fn purge(&mut self, now_ns: u64) {
        self.map.retain(|_, e| e.conns > 0 || e.tat > now_ns);
        self.idle_min_tat = self
            .map
            .values()
            .filter(|e| e.conns == 0)
            .map(|e| e.tat)
            .min()
            .unwrap_or(u64::MAX);
    }
}

/// Per-client-IP limits at accept: at most `max_conns_per_ip` concurrent connections and a GCRA
/// rate of new connections per client (IPv4 address or IPv6 /64).
///
/// An entry lives while the client holds connections, and after its last one closes for as long
/// as its rate state matters (its TAT is in the future); [`PerIp::sweep`] removes the rest.
/// Memory is bounded at `ceil(max_ips / 16)` entries per shard. The bound never refuses a
/// client: a new client arriving at a full shard first clears idle entries whose rate state has
/// expired, then evicts the idle entry closest to expiry among a small sample (forgetting it
/// grants the least unearned rate), and if every sampled entry holds connections it is admitted
/// without tracking (counted by [`PerIp::untracked`]). Entries with open connections are never
/// evicted, so the cap stays exact for every tracked client.
pub struct PerIp {
    /// Concurrent connections per client; 0 = no cap.
    max_conns: u32,
    /// New-connection rate per client; `None` = no rate limit.
    rate: Option<Quota>,
    /// Entries per shard at most (>= 1).
    shard_cap: usize,
    hasher: RandomState,
    shards: [Mutex<IpShard>; SHARDS],
    untracked: AtomicU64,
    evictions: AtomicU64,
}

impl fmt::Debug for PerIp {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PerIp")
            .field("max_conns", &self.max_conns)
            .field("rate", &self.rate)
            .field("shard_cap", &self.shard_cap)
            .finish_non_exhaustive()
    }
}

impl PerIp {
    /// Limits with at most `max_ips` clients tracked (rounded up to a multiple of 16, at least
    /// 16). With neither a cap nor a rate, [`PerIp::admit`] tracks nothing.
    pub fn new(max_conns_per_ip: u32, rate: Option<Quota>, max_ips: usize) -> PerIp {
        PerIp {
            max_conns: max_conns_per_ip,
            rate,
            shard_cap: max_ips.div_ceil(SHARDS).max(1),
            hasher: RandomState::new(),
            shards: std::array::from_fn(|_| Mutex::new(IpShard::new())),
            untracked: AtomicU64::new(0),
            evictions: AtomicU64::new(0),
        }
    }

    fn shard_index(&self, key: u128) -> usize {
        ((self.hasher.hash_one(key) >> 32) as usize) & (SHARDS - 1)
    }

    /// Admits a new connection from `ip` at `now_ns`, or says why not. Checks the cap before the
    /// rate, and a refusal consumes nothing: a client at its cap does not also burn rate, and a
    /// rate-refused connection does not take a slot.
    pub fn admit(self: &Arc<Self>, ip: IpAddr, now_ns: u64) -> Result<IpSlot, Refusal> {
        if self.max_conns == 0 && self.rate.is_none() {
            return Ok(IpSlot::untracked());
        }
        let key = client_key(ip);
        let index = self.shard_index(key);
        let mut guard = lock(&self.shards[index]);
        let shard = &mut *guard;
        shard.clock = shard.clock.max(now_ns);
        if let Some(e) = shard.map.get_mut(&key) {
            if self.max_conns != 0 && e.conns >= self.max_conns {
                return Err(Refusal::TooManyConnections);
            }
            if let Some(q) = &self.rate {
                let (d, tat) = gcra::decide(q, e.tat, now_ns);
                if !d.allowed {
                    return Err(Refusal::ConnectionRate);
                }
                e.tat = tat;
            }
            e.conns = e.conns.saturating_add(1);
            return Ok(IpSlot::tracked(self, key, index));
        }
        // A client with no entry passes both checks (cap >= 1, burst >= 1).
        let tat = self
            .rate
            .as_ref()
            .map_or(0, |q| gcra::decide(q, 0, now_ns).1);
        if !self.make_room(shard, now_ns) {
            drop(guard);
            self.untracked.fetch_add(1, Ordering::Relaxed);
            return Ok(IpSlot::untracked());
        }
        shard.map.insert(key, Entry { conns: 1, tat });
        Ok(IpSlot::tracked(self, key, index))
    }

    /// Frees room in a full shard for one new entry; false if nothing may go.
    fn make_room(&self, shard: &mut IpShard, now_ns: u64) -> bool {
        if shard.map.len() < self.shard_cap {
            return true;
        }
        if now_ns >= shard.idle_min_tat {
            shard.purge(now_ns);
            if shard.map.len() < self.shard_cap {
                return true;
            }
        }
        let victim = shard
            .map
            .iter()
            .take(EVICTION_SCAN)
            .filter(|(_, e)| e.conns == 0)
            .take(EVICTION_SAMPLE)
            .min_by_key(|(_, e)| e.tat)
            .map(|(&k, _)| k);
        match victim {
            Some(k) => {
                shard.map.remove(&k);
                self.evictions.fetch_add(1, Ordering::Relaxed);
                true
            }
            None => false,
        }
    }

    fn release(&self, key: u128, index: usize) {
        let mut guard = lock(&self.shards[index]);
        let shard = &mut *guard;
        let Some(e) = shard.map.get_mut(&key) else {
            return;
        };
        e.conns = e.conns.saturating_sub(1);
        if e.conns > 0 {
            return;
        }
        if e.tat <= shard.clock {
            // No rate, or its state has expired: the entry says nothing an absent one would not.
            shard.map.remove(&key);
        } else {
            shard.idle_min_tat = shard.idle_min_tat.min(e.tat);
        }
    }

    /// Removes idle clients whose rate state has expired by `now_ns` (meant for a periodic
    /// background task) and returns how many clients remain tracked.
    pub fn sweep(&self, now_ns: u64) -> usize {
        let mut remaining = 0;
        for shard in &self.shards {
            let mut shard = lock(shard);
            shard.clock = shard.clock.max(now_ns);
            shard.purge(now_ns);
            let len = shard.map.len();
            if len.saturating_mul(4) < shard.map.capacity() {
                shard.map.shrink_to(len.saturating_mul(2));
            }
            remaining += len;
        }
        remaining
    }

    /// Open tracked connections of the client `ip` belongs to (admin/debug).
    pub fn connections(&self, ip: IpAddr) -> u32 {
        let key = client_key(ip);
        lock(&self.shards[self.shard_index(key)])
            .map
            .get(&key)
            .map_or(0, |e| e.conns)
    }

    /// Clients currently tracked (locks each shard in turn; not for the accept path).
    pub fn len(&self) -> usize {
        self.shards.iter().map(|s| lock(s).map.len()).sum()
    }

    /// Whether no client is tracked.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Connections admitted without tracking because the table was full of busy clients.
    pub fn untracked(&self) -> u64 {
        self.untracked.load(Ordering::Relaxed)
    }

    /// Idle clients whose unexpired rate state was dropped to make room.
    pub fn evictions(&self) -> u64 {
        self.evictions.load(Ordering::Relaxed)
    }
}

/// A connection's place in its client's count; dropping it gives the place back. Keep it alive
/// exactly as long as the connection.
pub struct IpSlot {
    owner: Option<Arc<PerIp>>,
    key: u128,
    shard: usize,
}

impl IpSlot {
    fn tracked(owner: &Arc<PerIp>, key: u128, shard: usize) -> IpSlot {
        IpSlot {
            owner: Some(Arc::clone(owner)),
            key,
            shard,
        }
    }

    fn untracked() -> IpSlot {
        IpSlot {
            owner: None,
            key: 0,
            shard: 0,
        }
    }

    /// Whether this connection counts toward its client's cap.
    pub fn is_tracked(&self) -> bool {
        self.owner.is_some()
    }
}

impl fmt::Debug for IpSlot {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("IpSlot")
            .field("tracked", &self.is_tracked())
            .finish_non_exhaustive()
    }
}

impl Drop for IpSlot {
    fn drop(&mut self) {
        if let Some(owner) = self.owner.take() {
            owner.release(self.key, self.shard);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use std::net::{Ipv4Addr, Ipv6Addr};
    use std::sync::atomic::AtomicU32;

    fn nets(list: &[&str]) -> Vec<IpNet> {
        list.iter().map(|s| s.parse().unwrap()).collect()
    }

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn empty_filter_permits_everyone() {
        let f = IpFilter::new(&[], &[]);
        assert!(f.is_empty());
        assert!(f.permits(ip("1.2.3.4")) && f.permits(ip("2001:db8::1")));
        assert!(!IpFilter::new(&[], &nets(&["10.0.0.0/8"])).is_empty());
    }

    #[test]
    fn deny_wins_over_allow() {
        let f = IpFilter::new(&nets(&["10.0.0.0/8"]), &nets(&["10.1.0.0/16"]));
        assert!(f.permits(ip("10.0.255.255")));
        assert!(!f.permits(ip("10.1.0.0")));
        assert!(!f.permits(ip("10.1.255.255")));
        assert!(f.permits(ip("10.2.0.0")));
        assert!(!f.permits(ip("11.0.0.0")), "not in the allow list");
        assert!(!f.permits(ip("2001:db8::1")), "allow list has no IPv6");
        assert_eq!(f.check(ip("10.1.2.3")), Err(Refusal::Denied));
        assert_eq!(f.check(ip("10.2.2.3")), Ok(()));
    }

    #[test]
    fn deny_only_list() {
        let f = IpFilter::new(&[], &nets(&["192.0.2.0/24", "2001:db8::/32"]));
        assert!(!f.permits(ip("192.0.2.7")));
        assert!(f.permits(ip("192.0.3.0")));
        assert!(!f.permits(ip("2001:db8:ffff::1")));
        assert!(f.permits(ip("2001:db9::1")));
    }

    #[test]
    fn mapped_addresses_match_as_ipv4() {
        let f = IpFilter::new(&[], &nets(&["192.0.2.0/24"]));
        assert!(!f.permits(ip("::ffff:192.0.2.1")));
        assert!(f.permits(ip("::ffff:192.0.3.1")));
        // A CIDR written in mapped form means IPv4 clients.
        let f = IpFilter::new(&nets(&["::ffff:10.0.0.0/104"]), &[]);
        assert!(f.permits(ip("10.9.9.9")) && f.permits(ip("::ffff:10.9.9.9")));
        assert!(!f.permits(ip("11.0.0.1")));
        // ::/0 is "all IPv6 clients", not IPv4 ones arriving on a dual-stack socket.
        let f = IpFilter::new(&[], &nets(&["::/0"]));
        assert!(f.permits(ip("::ffff:1.2.3.4")) && !f.permits(ip("::1")));
    }

    #[test]
    fn ranges_merge_overlaps_and_neighbours() {
        let r = Ranges::new(&nets(&[
            "10.0.1.0/24",
            "10.0.0.0/24",
            "10.0.0.128/25",
            "10.0.3.0/24",
            "255.255.255.255/32",
            "0.0.0.0/32",
        ]));
        assert_eq!(
            r.v4,
            vec![
                (0, 0),
                (0x0a00_0000, 0x0a00_01ff),
                (0x0a00_0300, 0x0a00_03ff),
                (u32::MAX, u32::MAX),
            ]
        );
        let all = Ranges::new(&nets(&["0.0.0.0/0", "1.0.0.0/8", "::/0", "::1/128"]));
        assert_eq!(all.v4, vec![(0, u32::MAX)]);
        assert_eq!(all.v6, vec![(0, u128::MAX)]);
    }

    #[test]
    fn client_keys() {
        let k = |s| client_key(ip(s));
        assert_eq!(k("1.2.3.4"), k("::ffff:1.2.3.4"));
        assert_ne!(k("1.2.3.4"), k("1.2.3.5"));
        assert_eq!(k("2001:db8:1:2::1"), k("2001:db8:1:2:ffff:1:2:3"));
        assert_ne!(k("2001:db8:1:2::1"), k("2001:db8:1:3::1"));
        assert_ne!(k("0.0.0.0"), k("::"));
        assert_ne!(k("0.0.0.0"), k("::ffff:0:0:0"));
    }

    #[test]
    fn refusal_labels() {
        assert_eq!(Refusal::Denied.as_str(), "denied");
        assert_eq!(Refusal::TooManyConnections.as_str(), "per_ip_connections");
        assert_eq!(Refusal::ConnectionRate.as_str(), "per_ip_rate");
    }

    #[test]
    fn cap_holds_and_drop_frees() {
        let p = Arc::new(PerIp::new(2, None, 1_000));
        let a = ip("198.51.100.1");
        let s1 = p.admit(a, 0).unwrap();
        let s2 = p.admit(a, 0).unwrap();
        assert!(s1.is_tracked() && s2.is_tracked());
        assert_eq!(p.admit(a, 0).unwrap_err(), Refusal::TooManyConnections);
        assert_eq!(p.connections(a), 2);
        let other = p.admit(ip("198.51.100.2"), 0).unwrap();
        drop(s1);
        assert_eq!(p.connections(a), 1);
        let s3 = p.admit(a, 0).unwrap();
        assert_eq!(
            p.admit(ip("::ffff:198.51.100.1"), 0).unwrap_err(),
            Refusal::TooManyConnections
        );
        drop((s2, s3, other));
        assert_eq!(p.connections(a), 0);
        assert!(
            p.is_empty(),
            "without a rate, an idle client leaves at once"
        );
    }

    #[test]
    fn ipv6_clients_share_their_slash_64() {
        let p = Arc::new(PerIp::new(1, None, 1_000));
        let _s = p.admit(ip("2001:db8:0:1::a"), 0).unwrap();
        assert_eq!(
            p.admit(ip("2001:db8:0:1:dead:beef::1"), 0).unwrap_err(),
            Refusal::TooManyConnections
        );
        assert!(p.admit(ip("2001:db8:0:2::a"), 0).is_ok());
    }

    #[test]
    fn rate_refusals_follow_gcra() {
        let q = Quota {
            emission_ns: 1_000,
            burst: 2,
        };
        let p = Arc::new(PerIp::new(0, Some(q), 1_000));
        let a = ip("203.0.113.9");
        let _s1 = p.admit(a, 10).unwrap();
        drop(p.admit(a, 10).unwrap());
        assert_eq!(p.admit(a, 10).unwrap_err(), Refusal::ConnectionRate);
        assert_eq!(p.admit(a, 1_009).unwrap_err(), Refusal::ConnectionRate);
        assert!(p.admit(a, 1_010).is_ok());
        assert!(p.admit(ip("203.0.113.10"), 10).is_ok(), "per client");
        assert_eq!(
            p.connections(a),
            1,
            "refused and dropped ones are not counted"
        );
    }

    #[test]
    fn refusals_consume_nothing() {
        let q = Quota {
            emission_ns: 1_000,
            burst: 2,
        };
        let p = Arc::new(PerIp::new(1, Some(q), 1_000));
        let a = ip("203.0.113.9");
        let s = p.admit(a, 0).unwrap();
        for _ in 0..5 {
            assert_eq!(p.admit(a, 0).unwrap_err(), Refusal::TooManyConnections);
        }
        drop(s);
        // The cap refusals did not burn the second burst token.
        let s = p.admit(a, 0).unwrap();
        drop(s);
        assert_eq!(p.admit(a, 0).unwrap_err(), Refusal::ConnectionRate);
        assert_eq!(p.connections(a), 0);
    }

    #[test]
    fn idle_entry_lives_while_its_rate_state_matters() {
        let q = Quota {
            emission_ns: 1_000,
            burst: 1,
        };
        let p = Arc::new(PerIp::new(0, Some(q), 1_000));
        let a = ip("192.0.2.1");
        drop(p.admit(a, 0).unwrap()); // tat 1000
        assert_eq!(p.len(), 1);
        assert_eq!(p.sweep(999), 1);
        assert_eq!(p.admit(a, 999).unwrap_err(), Refusal::ConnectionRate);
        assert_eq!(p.sweep(1_000), 0);
        // Dropped after the shard has seen a later clock: removed at once.
        let s = p.admit(a, 1_000).unwrap(); // tat 2000
        drop(p.admit(ip("192.0.2.2"), 5_000));
        let busy = p.admit(ip("192.0.2.3"), 5_000).unwrap();
        assert_eq!(p.sweep(10_000), 2, "open connections are never swept");
        drop(s);
        assert_eq!(p.connections(a), 0);
        assert_eq!(p.len(), 1, "expired by the shard clock, so removed on drop");
        drop(busy);
        assert!(p.is_empty());
    }

    #[test]
    fn no_limits_track_nothing() {
        let p = Arc::new(PerIp::new(0, None, 1_000));
        let slots: Vec<_> = (0..100)
            .map(|i| p.admit(IpAddr::V4(Ipv4Addr::from(i)), 0).unwrap())
            .collect();
        assert!(slots.iter().all(|s| !s.is_tracked()));
        assert!(p.is_empty());
        assert_eq!(p.untracked(), 0);
    }

    #[test]
    fn full_table_of_busy_clients_admits_untracked() {
        let p = Arc::new(PerIp::new(1, None, SHARDS)); // one client per shard
        let slots: Vec<_> = (0..200u32)
            .map(|i| p.admit(IpAddr::V4(Ipv4Addr::from(i)), 0).unwrap())
            .collect();
        assert!(p.len() <= SHARDS);
        let tracked = slots.iter().filter(|s| s.is_tracked()).count();
        assert_eq!(tracked, p.len());
        assert_eq!(p.untracked(), (200 - tracked) as u64);
        assert_eq!(p.evictions(), 0, "busy clients are never evicted");
        drop(slots);
        assert!(p.is_empty());
    }

    #[test]
    fn full_table_reuses_expired_then_evicts_idle() {
        let q = Quota {
            emission_ns: 1_000,
            burst: 1,
        };
        let p = Arc::new(PerIp::new(0, Some(q), SHARDS));
        for i in 0..200u32 {
            drop(p.admit(IpAddr::V4(Ipv4Addr::from(i)), 0).unwrap());
        }
        // Idle but unexpired entries were evicted for newcomers; every client was tracked.
        assert_eq!(p.untracked(), 0);
        assert!(p.len() <= SHARDS);
        assert_eq!(p.evictions(), 200 - p.len() as u64);
        let before = p.evictions();
        for i in 200..400u32 {
            drop(
                p.admit(IpAddr::V4(Ipv4Addr::from(i)), 1_000 * u64::from(i))
                    .unwrap(),
            );
        }
        assert_eq!(
            p.evictions(),
            before,
            "expired entries make room without evicting"
        );
    }

    #[test]
    fn concurrent_holders_never_exceed_the_cap() {
        const CAP: u32 = 3;
        let p = Arc::new(PerIp::new(CAP, None, 1_000));
        let held: Vec<AtomicU32> = (0..4).map(|_| AtomicU32::new(0)).collect();
        std::thread::scope(|scope| {
            for t in 0..4u32 {
                let (p, held) = (&p, &held);
                scope.spawn(move || {
                    let mut rng = fastrand::Rng::with_seed(u64::from(t));
                    let mut mine = Vec::new();
                    for _ in 0..5_000 {
                        let c = rng.usize(0..4);
                        if rng.bool() {
                            if let Ok(slot) = p.admit(IpAddr::V4(Ipv4Addr::from(c as u32)), 0) {
                                let now = held[c].fetch_add(1, Ordering::SeqCst) + 1;
                                assert!(now <= CAP, "{now} holders of client {c}");
                                mine.push((c, slot));
                            }
                        } else if !mine.is_empty() {
                            let (c, slot) = mine.swap_remove(rng.usize(0..mine.len()));
                            held[c].fetch_sub(1, Ordering::SeqCst);
                            drop(slot);
                        }
                    }
                    for (c, slot) in mine {
                        held[c].fetch_sub(1, Ordering::SeqCst);
                        drop(slot);
                    }
                });
            }
        });
        for c in 0..4u32 {
            assert_eq!(p.connections(IpAddr::V4(Ipv4Addr::from(c))), 0);
        }
        assert!(p.is_empty());
    }

    #[derive(Debug, Clone)]
    enum Op {
        Admit(u8, u64),
        Drop(usize),
    }

    fn op() -> impl Strategy<Value = Op> {
        prop_oneof![
            3 => (0u8..6, 0u64..600).prop_map(|(c, dt)| Op::Admit(c, dt)),
            2 => any::<usize>().prop_map(Op::Drop),
        ]
    }

    /// Half the clients are IPv6 (two addresses per /64 map to one client).
    fn addr(c: u8) -> IpAddr {
        if c.is_multiple_of(2) {
            IpAddr::V4(Ipv4Addr::new(192, 0, 2, c))
        } else {
            IpAddr::V6(Ipv6Addr::new(
                0x2001,
                0xdb8,
                0,
                u16::from(c / 4),
                0,
                0,
                0,
                u16::from(c),
            ))
        }
    }

    proptest! {
        /// Against a model: exactly the cap and GCRA decide; counts never exceed the cap and
        /// return to 0 when every slot is dropped.
        #[test]
        fn per_ip_matches_model(
            cap in 0u32..4,
            rate in proptest::option::of((1u64..500, 1u32..4)),
            ops in proptest::collection::vec(op(), 1..300),
        ) {
            let quota = rate.map(|(emission_ns, burst)| Quota { emission_ns, burst });
            let p = Arc::new(PerIp::new(cap, quota, 1_000));
            let mut live: HashMap<u128, u32> = HashMap::new();
            let mut tats: HashMap<u128, u64> = HashMap::new();
            let mut slots: Vec<(u128, IpSlot)> = Vec::new();
            let mut now = 0;
            for op in ops {
                match op {
                    Op::Admit(c, dt) => {
                        now += dt;
                        let a = addr(c);
                        let k = client_key(a);
                        let n = live.get(&k).copied().unwrap_or(0);
                        let want = if cap != 0 && n >= cap {
                            Err(Refusal::TooManyConnections)
                        } else if let Some(q) = &quota {
                            let (d, tat) = gcra::decide(q, tats.get(&k).copied().unwrap_or(0), now);
                            if d.allowed {
                                tats.insert(k, tat);
                                Ok(())
                            } else {
                                Err(Refusal::ConnectionRate)
                            }
                        } else {
                            Ok(())
                        };
                        let got = p.admit(a, now);
                        prop_assert_eq!(got.as_ref().map(|_| ()).map_err(|e| *e), want);
                        if let Ok(slot) = got {
                            prop_assert_eq!(slot.is_tracked(), cap != 0 || quota.is_some());
                            *live.entry(k).or_default() += 1;
                            slots.push((k, slot));
                        }
                        if cap != 0 || quota.is_some() {
                            prop_assert_eq!(p.connections(a), live[&k]);
                        }
                        if cap != 0 {
                            prop_assert!(p.connections(a) <= cap);
                        }
                    }
                    Op::Drop(i) => {
                        if !slots.is_empty() {
                            let (k, slot) = slots.swap_remove(i % slots.len());
                            drop(slot);
                            *live.entry(k).or_default() -= 1;
                        }
                    }
                }
            }
            drop(slots);
            for c in 0..6 {
                prop_assert_eq!(p.connections(addr(c)), 0);
            }
            prop_assert_eq!(p.sweep(u64::MAX), 0);
            prop_assert_eq!(p.untracked(), 0);
        }

        /// The merged-range filter agrees with a linear scan over the CIDRs.
        #[test]
        fn filter_matches_linear_scan(
            allow in proptest::collection::vec(net(), 0..12),
            deny in proptest::collection::vec(net(), 0..12),
            probes in proptest::collection::vec(probe(), 1..64),
        ) {
            let f = IpFilter::new(&allow, &deny);
            let hit = |list: &[IpNet], a: IpAddr| list.iter().any(|n| match (n, a.to_canonical()) {
                (IpNet::V4(n), IpAddr::V4(v4)) => n.contains(&v4),
                (IpNet::V6(n), IpAddr::V6(v6)) => n.contains(&v6),
                // A mapped-form CIDR names IPv4 clients.
                (IpNet::V6(n), IpAddr::V4(v4)) => {
                    n.prefix_len() >= 96 && n.contains(&v4.to_ipv6_mapped())
                }
                (IpNet::V4(_), IpAddr::V6(_)) => false,
            });
            for a in probes {
                let want = !hit(&deny, a) && (allow.is_empty() || hit(&allow, a));
                prop_assert_eq!(f.permits(a), want, "{}", a);
            }
        }
    }

    /// CIDRs clustered around a few bases so that they overlap, nest and touch.
    fn net() -> impl Strategy<Value = IpNet> {
        prop_oneof![
            (0u32..4, any::<u32>(), 0u8..=32).prop_map(|(base, low, len)| {
                let a = Ipv4Addr::from(((0x0a + base) << 24) | (low & 0x00ff_ffff));
                IpNet::V4(ipnet::Ipv4Net::new(a, len.max(4)).unwrap())
            }),
            (any::<u32>(), 96u8..=128).prop_map(|(low, len)| {
                let a = Ipv4Addr::from(0x0a00_0000 | (low & 0x03ff_ffff)).to_ipv6_mapped();
                IpNet::V6(ipnet::Ipv6Net::new(a, len).unwrap())
            }),
            (0u16..3, any::<u64>(), 0u8..=128).prop_map(|(base, low, len)| {
                let a = Ipv6Addr::from(
                    (u128::from(0x2001_0db8_0000_u64 + u64::from(base)) << 80) | u128::from(low),
                );
                IpNet::V6(ipnet::Ipv6Net::new(a, len.max(16)).unwrap())
            }),
        ]
    }

    fn probe() -> impl Strategy<Value = IpAddr> {
        prop_oneof![
            any::<u32>().prop_map(|x| IpAddr::V4(Ipv4Addr::from(0x0a00_0000 | (x & 0x03ff_ffff)))),
            any::<u32>().prop_map(|x| IpAddr::V6(
                Ipv4Addr::from(0x0a00_0000 | (x & 0x03ff_ffff)).to_ipv6_mapped()
            )),
            (0u16..3, any::<u64>()).prop_map(|(base, low)| {
                IpAddr::V6(Ipv6Addr::from(
                    (u128::from(0x2001_0db8_0000_u64 + u64::from(base)) << 80) | u128::from(low),
                ))
            }),
            any::<u32>().prop_map(|x| IpAddr::V4(Ipv4Addr::from(x))),
        ]
    }
}
