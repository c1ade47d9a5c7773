//! Failover tiers, locality and panic mode: which endpoints of a cluster may receive traffic, and
//! in what shares.
//!
//! Owns: turning per-endpoint verdicts (admitted, operator-available, tier, zone, weight) into a
//! [`Plan`] of groups with integer shares out of 10 000, and mapping a caller-drawn number to a
//! group ([`Plan::choose`]) or to a retry order ([`Plan::fallbacks`]). Does not own: the verdicts
//! themselves (`health`), picking an endpoint inside a group (`balancer`), slow start weights
//! (`slow_start`), or drawing the random number.
//!
//! The model is Envoy's: a tier is "fully available" while `overprovisioning x healthy` reaches
//! 100%; below that the shortfall spills to the next tier, and when the tiers together cannot
//! reach 100% the load is normalized over what there is. When the whole cluster is below the
//! panic threshold, traffic is spread over every operator-available endpoint (Envoy panic mode,
//! Sozu `fail_open`) rather than crushing the few survivors. Zone awareness keeps a tier's
//! traffic in the local zone while enough of it is admitted, spilling proportionally otherwise.
//!
//! [`plan`] runs in a background task whenever health changes and may allocate; [`Plan::choose`]
//! and [`Plan::fallbacks`] run per request and do not.

/// Shares are expressed out of this total (basis points).
const TOTAL: u32 = 10_000;

/// One endpoint as the planner sees it.
#[derive(Clone, Copy, Debug)]
pub struct MemberView {
    /// Failover tier: 0 = primary, 1 = first backup, ...
    pub priority: u8,
    /// In the proxy's own zone (always false when no local zone is configured).
    pub local: bool,
    /// Healthy by active checks, not ejected, and not drained/down by the operator.
    pub admitted: bool,
    /// False only when the operator marked it `down` or `drain`: never used, even in panic.
    pub available: bool,
    /// Relative weight within its tier; 0 counts as 1.
    pub weight: u32,
}

/// Planner settings of one cluster.
#[derive(Clone, Copy, Debug)]
pub struct PlanConfig {
    /// Envoy's overprovisioning factor, in percent (default 140: a tier is fully available while
    /// at least 1/1.4 = 71.4% of its weight is admitted). Values below 100 act as 100.
    pub overprovisioning_percent: u32,
    /// Panic mode starts when the cluster's normalized health is below this, in percent
    /// (default 50); 0 disables panic mode.
    pub panic_threshold_percent: u32,
    /// Split tiers by zone; true when a local zone is configured.
    pub zone_aware: bool,
    /// The local zone takes all of a tier's traffic while at least this % of its weight is
    /// admitted (default 70); below, it takes `admitted% / this%` of it and the tier's other
    /// zones take the rest. 0 means the local zone always takes everything it can.
    pub zone_min_healthy_percent: u32,
}

impl Default for PlanConfig {
    /// Envoy's defaults, zone-unaware.
    fn default() -> Self {
        Self {
            overprovisioning_percent: 140,
            panic_threshold_percent: 50,
            zone_aware: false,
            zone_min_healthy_percent: 70,
        }
    }
}

/// A set of endpoints that shares one slice of the traffic.
#[derive(Clone, Debug, PartialEq)]
pub struct Group {
    /// The tier these endpoints belong to (in panic: the most preferred tier present).
    pub priority: u8,
    /// `Some(true)` for the local zone's part of a split tier, `Some(false)` for the other
    /// zones' part; `None` when zone-unaware, the tier has no split, or in panic.
    pub local: Option<bool>,
    /// Indices into the slice given to [`plan`], ascending; never empty.
    pub members: Vec<usize>,
    /// This group's share of requests, out of 10 000; never 0.
    pub share: u32,
}

/// Where traffic may go, as computed by [`plan`].
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Plan {
    /// Groups by ascending (priority, local first); only groups with a share > 0 and members.
    /// Shares sum to exactly 10 000 unless the plan is empty.
    pub groups: Vec<Group>,
    /// Panic mode: the single group holds every available endpoint, admitted or not.
    pub panic: bool,
    /// Running sum of `groups[..=i].share`, for [`Plan::choose`].
    cumulative: Vec<u32>,
    /// See [`Plan::healthy_percent`].
    healthy_percent: u32,
}

impl Plan {
    /// The group a request goes to, for a uniform `r` in `0..10_000` (the caller draws it;
    /// larger values act as 9 999). None when the plan is empty (nothing can take traffic).
    pub fn choose(&self, r: u32) -> Option<&Group> {
        self.choose_index(r).and_then(|i| self.groups.get(i))
    }

    /// Whether nothing can take traffic (the caller answers 503 or uses a fallback cluster).
    pub fn is_empty(&self) -> bool {
        self.groups.is_empty()
    }

    /// Every group in order of preference, starting with the one `choose(r)` picks and then the
    /// others by ascending (priority, local first): a retry that found nothing left in its group
    /// moves along this order. Empty when the plan is.
    pub fn fallbacks(&self, r: u32) -> impl Iterator<Item = &Group> {
        let first = self.choose_index(r);
        let rest = self
            .groups
            .iter()
            .enumerate()
            .filter(move |&(i, _)| Some(i) != first)
            .map(|(_, g)| g);
        first
            .and_then(|i| self.groups.get(i))
            .into_iter()
            .chain(rest)
    }

    /// The cluster's normalized health in percent (0..=100): the sum over tiers of
    /// `min(100, overprovisioning x admitted weight / available weight)`, capped at 100. For
    /// metrics and `/clusters`; computed in panic too.
    pub fn healthy_percent(&self) -> u32 {
        self.healthy_percent
    }

    fn choose_index(&self, r: u32) -> Option<usize> {
        if self.groups.is_empty() {
            return None;
        }
        let r = r.min(TOTAL - 1);
        Some(self.cumulative.partition_point(|&end| end <= r))
    }
}

/// Weight tallies of one tier, over its available endpoints only.
#[derive(Clone, Copy, Debug)]
struct Tier {
    priority: u8,
    total: u64,
    admitted: u64,
    /// Only tallied when zone-aware.
    local_total: u64,
    local_admitted: u64,
}

impl Tier {
    /// The tier has available endpoints on both sides of the zone line.
    fn split(&self) -> bool {
        self.local_total > 0 && self.local_total < self.total
    }
}

/// Computes where traffic may go. Deterministic; never panics.
pub fn plan(members: &[MemberView], cfg: &PlanConfig) -> Plan {
    let tiers = tally(members, cfg.zone_aware);
    let Some(first_tier) = tiers.first() else {
        return Plan::default();
    };
    let health: Vec<u32> = tiers
        .iter()
        .map(|t| tier_health(t, cfg.overprovisioning_percent))
        .collect();
    let normalized = health
        .iter()
        .fold(0u32, |sum, &h| sum.saturating_add(h))
        .min(TOTAL);
    let healthy_percent = normalized / 100;

    let panic_bp = u64::from(cfg.panic_threshold_percent).saturating_mul(100);
    if cfg.panic_threshold_percent > 0 && u64::from(normalized) < panic_bp {
        let all = members
            .iter()
            .enumerate()
            .filter(|(_, m)| m.available)
            .map(|(i, _)| i)
            .collect();
        let group = Group {
            priority: first_tier.priority,
            local: None,
            members: all,
            share: TOTAL,
        };
        return finish(vec![group], true, healthy_percent);
    }
    if normalized == 0 {
        return Plan {
            healthy_percent,
            ..Plan::default()
        };
    }

    let mut groups = Vec::new();
    let mut remaining = TOTAL;
    for (tier, &h) in tiers.iter().zip(&health) {
        // Envoy's distributeLoad: with normalized = 100% this is min(remaining, health); below,
        // each tier's health is scaled up so the tiers that exist absorb everything.
        let scaled = u64::from(h) * u64::from(TOTAL) / u64::from(normalized);
        let load = u32::try_from(scaled).unwrap_or(u32::MAX).min(remaining);
        remaining -= load;
        if load > 0 {
            push_tier_groups(&mut groups, members, tier, load, cfg);
        }
    }
    // Rounding leftovers go to the most preferred group, as Envoy gives them to the first tier
    // with health. `groups` is non-empty: normalized > 0 means some tier has health > 0, and the
    // first such tier sees remaining = TOTAL and so gets load > 0.
    let assigned = groups
        .iter()
        .fold(0u32, |sum, g| sum.saturating_add(g.share));
    if let Some(g) = groups.first_mut() {
        g.share = g.share.saturating_add(TOTAL.saturating_sub(assigned));
    }
    finish(groups, false, healthy_percent)
}

/// Per-tier weight sums over available endpoints, sorted by priority; tiers without available
/// endpoints are absent.
fn tally(members: &[MemberView], zone_aware: bool) -> Vec<Tier> {
    let mut tiers: Vec<Tier> = Vec::new();
    for m in members.iter().filter(|m| m.available) {
        let pos = match tiers.binary_search_by_key(&m.priority, |t| t.priority) {
            Ok(pos) => pos,
            Err(pos) => {
                tiers.insert(
                    pos,
                    Tier {
                        priority: m.priority,
                        total: 0,
                        admitted: 0,
                        local_total: 0,
                        local_admitted: 0,
                    },
                );
                pos
            }
        };
        let Some(t) = tiers.get_mut(pos) else {
            continue;
        };
        let w = u64::from(m.weight.max(1));
        t.total += w;
        if m.admitted {
            t.admitted += w;
        }
        if zone_aware && m.local {
            t.local_total += w;
            if m.admitted {
                t.local_admitted += w;
            }
        }
    }
    tiers
}

/// `min(100%, overprovisioning x admitted / total)` in basis points, rounded to nearest.
fn tier_health(t: &Tier, overprovisioning_percent: u32) -> u32 {
    if t.admitted == 0 || t.total == 0 {
        return 0;
    }
    let factor = u128::from(overprovisioning_percent.max(100)) * 100;
    let bp = div_round(factor * u128::from(t.admitted), u128::from(t.total));
    // A tier with any admitted endpoint keeps at least 1 bp, so a single admitted endpoint among
    // billions of weight still makes the plan non-empty.
    u32::try_from(bp.min(u128::from(TOTAL)))
        .unwrap_or(TOTAL)
        .max(1)
}

/// Appends the group(s) of one tier carrying `load` basis points.
fn push_tier_groups(
    groups: &mut Vec<Group>,
    members: &[MemberView],
    tier: &Tier,
    load: u32,
    cfg: &PlanConfig,
) {
    if !(cfg.zone_aware && tier.split()) {
        groups.push(Group {
            priority: tier.priority,
            local: None,
            members: admitted_members(members, tier.priority, None),
            share: load,
        });
        return;
    }
    let mut local_share = local_share(tier, load, cfg.zone_min_healthy_percent);
    let mut other_share = load - local_share;
    // A side with nobody admitted hands its share to the other; load > 0 guarantees the tier has
    // someone admitted, so the share never gets lost.
    if tier.local_admitted == 0 {
        other_share = load;
        local_share = 0;
    } else if tier.admitted == tier.local_admitted {
        local_share = load;
        other_share = 0;
    }
    for (local, share) in [(true, local_share), (false, other_share)] {
        if share > 0 {
            groups.push(Group {
                priority: tier.priority,
                local: Some(local),
                members: admitted_members(members, tier.priority, Some(local)),
                share,
            });
        }
    }
}

/// `load x min(1, local_health / zone_min_healthy)` where `local_health` is the admitted
/// percentage of the tier's local weight; rounded to nearest.
fn local_share(tier: &Tier, load: u32, zone_min_healthy_percent: u32) -> u32 {
    if tier.local_admitted == 0 {
        return 0;
    }
    // f = (local_admitted x 100 / local_total) / zone_min, kept as one fraction to avoid
    // rounding twice.
    let num = u128::from(tier.local_admitted) * 100;
    let den = u128::from(tier.local_total) * u128::from(zone_min_healthy_percent);
    if den == 0 || num >= den {
        return load;
    }
    let share = div_round(u128::from(load) * num, den);
    u32::try_from(share).unwrap_or(load).min(load)
}

/// Available and admitted members of tier `priority` (of one zone side when `local` is given).
fn admitted_members(members: &[MemberView], priority: u8, local: Option<bool>) -> Vec<usize> {
    members
        .iter()
        .enumerate()
        .filter(|(_, m)| {
            m.available
                && m.admitted
                && m.priority == priority
                && local.is_none_or(|l| m.local == l)
        })
        .map(|(i, _)| i)
        .collect()
}

fn finish(groups: Vec<Group>, panic: bool, healthy_percent: u32) -> Plan {
    let mut sum = 0u32;
    let cumulative = groups
        .iter()
        .map(|g| {
            sum = sum.saturating_add(g.share);
            sum
        })
        .collect();
    Plan {
        groups,
        panic,
        cumulative,
        healthy_percent,
    }
}

/// `num / den` rounded half up; `den` must be non-zero (callers check).
fn div_round(num: u128, den: u128) -> u128 {
    num.saturating_add(den / 2).checked_div(den).unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn m(priority: u8, admitted: bool) -> MemberView {
        MemberView {
            priority,
            local: false,
            admitted,
            available: true,
            weight: 1,
        }
    }

    fn zm(priority: u8, local: bool, admitted: bool) -> MemberView {
        MemberView {
            local,
            ..m(priority, admitted)
        }
    }

    fn down(priority: u8) -> MemberView {
        MemberView {
            available: false,
            admitted: false,
            ..m(priority, false)
        }
    }

    fn zone_cfg() -> PlanConfig {
        PlanConfig {
            zone_aware: true,
            ..PlanConfig::default()
        }
    }

    /// (priority, local, members, share) of every group, for compact assertions.
    fn shape(p: &Plan) -> Vec<(u8, Option<bool>, Vec<usize>, u32)> {
        p.groups
            .iter()
            .map(|g| (g.priority, g.local, g.members.clone(), g.share))
            .collect()
    }

    #[test]
    fn all_healthy_is_one_primary_group() {
        let p = plan(
            &[m(0, true), m(0, true), m(0, true), m(1, true)],
            &PlanConfig::default(),
        );
        assert_eq!(shape(&p), vec![(0, None, vec![0, 1, 2], 10_000)]);
        assert!(!p.panic);
        assert_eq!(p.healthy_percent(), 100);
    }

    #[test]
    fn one_of_three_unhealthy_stays_on_single_tier() {
        let p = plan(
            &[m(0, true), m(0, false), m(0, true)],
            &PlanConfig::default(),
        );
        // 140 x 2/3 = 93.33%: below 100, but there is no other tier, so normalization gives P0
        // everything.
        assert_eq!(shape(&p), vec![(0, None, vec![0, 2], 10_000)]);
        assert_eq!(p.healthy_percent(), 93);
        assert!(!p.panic);
    }

    #[test]
    fn one_of_three_unhealthy_with_backup_spills_a_little() {
        let p = plan(
            &[m(0, true), m(0, false), m(0, true), m(1, true)],
            &PlanConfig::default(),
        );
        assert_eq!(
            shape(&p),
            vec![(0, None, vec![0, 2], 9_333), (1, None, vec![3], 667)]
        );
    }

    #[test]
    fn operator_down_is_not_counted_against_the_tier() {
        // Down/drained endpoints leave the denominator: 2 of 2 available is fully healthy.
        let p = plan(
            &[m(0, true), down(0), m(0, true), m(1, true)],
            &PlanConfig::default(),
        );
        assert_eq!(shape(&p), vec![(0, None, vec![0, 2], 10_000)]);
    }

    #[test]
    fn two_of_three_down_spills_to_backup() {
        let members = [m(0, false), m(0, true), m(0, false), m(1, true), m(1, true)];
        let p = plan(&members, &PlanConfig::default());
        assert_eq!(
            shape(&p),
            vec![(0, None, vec![1], 4_667), (1, None, vec![3, 4], 5_333)]
        );
        assert_eq!(p.healthy_percent(), 100);
    }

    #[test]
    fn all_primaries_down_sends_everything_to_backup() {
        let p = plan(
            &[m(0, false), m(0, false), m(1, true)],
            &PlanConfig::default(),
        );
        assert_eq!(shape(&p), vec![(1, None, vec![2], 10_000)]);
        assert!(!p.panic);
    }

    #[test]
    fn partial_tiers_are_normalized() {
        // P0 2/5 (56%) and P1 1/5 (28%): 84% in all, normalized to 2/3 and 1/3.
        let mut members = vec![
            m(0, true),
            m(0, true),
            m(0, false),
            m(0, false),
            m(0, false),
        ];
        members.extend([
            m(1, true),
            m(1, false),
            m(1, false),
            m(1, false),
            m(1, false),
        ]);
        let p = plan(&members, &PlanConfig::default());
        assert_eq!(
            shape(&p),
            vec![(0, None, vec![0, 1], 6_667), (1, None, vec![5], 3_333)]
        );
        assert_eq!(p.healthy_percent(), 84);
    }

    #[test]
    fn weights_count_and_zero_counts_as_one() {
        let heavy = MemberView {
            weight: 8,
            ..m(0, true)
        };
        let zero = MemberView {
            weight: 0,
            ..m(0, false)
        };
        // Admitted 8 of 8 + 1 + 1 = 10: 140 x 0.8 = 112% -> capped, P0 keeps everything.
        let p = plan(&[heavy, zero, zero, m(1, true)], &PlanConfig::default());
        assert_eq!(shape(&p), vec![(0, None, vec![0], 10_000)]);
    }

    #[test]
    fn overprovisioning_below_100_acts_as_100() {
        let cfg = PlanConfig {
            overprovisioning_percent: 0,
            ..PlanConfig::default()
        };
        let p = plan(&[m(0, true), m(0, true), m(1, true)], &cfg);
        assert_eq!(shape(&p), vec![(0, None, vec![0, 1], 10_000)]);
    }

    #[test]
    fn panic_below_threshold_uses_every_available_endpoint() {
        let members = [m(0, true), m(0, false), down(0), m(0, false), m(0, false)];
        let p = plan(&members, &PlanConfig::default());
        // 140 x 1/4 = 35% < 50%.
        assert!(p.panic);
        assert_eq!(shape(&p), vec![(0, None, vec![0, 1, 3, 4], 10_000)]);
        assert_eq!(p.healthy_percent(), 35);
    }

    #[test]
    fn panic_spans_all_tiers_and_reports_the_best_tier_present() {
        let members = [m(2, false), m(1, false), down(0), m(3, false)];
        let p = plan(&members, &PlanConfig::default());
        assert!(p.panic);
        assert_eq!(shape(&p), vec![(1, None, vec![0, 1, 3], 10_000)]);
    }

    #[test]
    fn just_at_threshold_is_not_panic() {
        // 140 x 5/14 = 50% exactly.
        let mut members = vec![m(0, true); 5];
        members.extend(vec![m(0, false); 9]);
        let p = plan(&members, &PlanConfig::default());
        assert_eq!(p.healthy_percent(), 50);
        assert!(!p.panic);
        assert_eq!(p.groups.len(), 1);
        assert_eq!(p.groups[0].members, vec![0, 1, 2, 3, 4]);
    }

    #[test]
    fn threshold_zero_disables_panic() {
        let cfg = PlanConfig {
            panic_threshold_percent: 0,
            ..PlanConfig::default()
        };
        let p = plan(&[m(0, true), m(0, false), m(0, false), m(0, false)], &cfg);
        assert!(!p.panic);
        assert_eq!(shape(&p), vec![(0, None, vec![0], 10_000)]);

        let none = plan(&[m(0, false), m(1, false)], &cfg);
        assert!(none.is_empty());
        assert!(!none.panic);
        assert_eq!(none.choose(0), None);
        assert_eq!(none.fallbacks(0).count(), 0);
        assert_eq!(none.healthy_percent(), 0);
    }

    #[test]
    fn nothing_available_is_empty_even_in_panic_config() {
        let p = plan(&[down(0), down(1)], &PlanConfig::default());
        assert!(p.is_empty());
        assert!(!p.panic);
        assert!(plan(&[], &PlanConfig::default()).is_empty());
    }

    #[test]
    fn operator_down_never_appears_even_in_panic() {
        let down_but_admitted = MemberView {
            available: false,
            ..m(0, true)
        };
        let p = plan(
            &[down_but_admitted, m(0, false), down(0)],
            &PlanConfig::default(),
        );
        assert!(p.panic);
        assert_eq!(shape(&p), vec![(0, None, vec![1], 10_000)]);
        // Outside panic too: an admitted flag on an unavailable endpoint is ignored.
        let p = plan(&[down_but_admitted, m(0, true)], &PlanConfig::default());
        assert_eq!(shape(&p), vec![(0, None, vec![1], 10_000)]);
    }

    #[test]
    fn zone_split_exact_numbers() {
        // Local: 2 of 4 admitted (50% < 70%) -> local f = 5/7; tier health 140 x 6/8 = 105%.
        let members = [
            zm(0, true, true),
            zm(0, true, false),
            zm(0, false, true),
            zm(0, true, true),
            zm(0, true, false),
            zm(0, false, true),
            zm(0, false, true),
            zm(0, false, true),
        ];
        let p = plan(&members, &zone_cfg());
        assert_eq!(
            shape(&p),
            vec![
                (0, Some(true), vec![0, 3], 7_143),
                (0, Some(false), vec![2, 5, 6, 7], 2_857),
            ]
        );
    }

    #[test]
    fn zone_split_applies_to_a_tier_load_below_full() {
        // P0: 2/3 admitted (93.33%), local 1 of 2 -> 50/70 of 9_333; P1 takes 667.
        let members = [
            zm(0, true, true),
            zm(0, true, false),
            zm(0, false, true),
            zm(1, false, true),
        ];
        let p = plan(&members, &zone_cfg());
        // 9_333 x 5/7 = 6_666.4 -> 6_666; the other side 2_667.
        assert_eq!(
            shape(&p),
            vec![
                (0, Some(true), vec![0], 6_666),
                (0, Some(false), vec![2], 2_667),
                (1, None, vec![3], 667),
            ]
        );
    }

    #[test]
    fn healthy_local_zone_takes_the_whole_tier() {
        // 3 of 4 local admitted = 75% >= 70%.
        let members = [
            zm(0, true, true),
            zm(0, true, true),
            zm(0, true, false),
            zm(0, true, true),
            zm(0, false, true),
        ];
        let p = plan(&members, &zone_cfg());
        assert_eq!(shape(&p), vec![(0, Some(true), vec![0, 1, 3], 10_000)]);
    }

    #[test]
    fn zone_side_without_admitted_members_hands_over_its_share() {
        let no_local = [zm(0, true, false), zm(0, false, true), zm(0, false, true)];
        let p = plan(&no_local, &zone_cfg());
        assert_eq!(shape(&p), vec![(0, Some(false), vec![1, 2], 10_000)]);

        // Local 1 of 2 (f = 5/7) but the remote side is all unhealthy: local takes it all.
        let no_remote = [
            zm(0, true, true),
            zm(0, true, true),
            zm(0, true, true),
            zm(0, true, false),
            zm(0, true, false),
            zm(0, true, false),
            zm(0, false, false),
        ];
        let p = plan(&no_remote, &zone_cfg());
        assert_eq!(shape(&p), vec![(0, Some(true), vec![0, 1, 2], 10_000)]);
    }

    #[test]
    fn no_split_without_both_sides_or_when_zone_unaware() {
        let all_remote = [zm(0, false, true), zm(0, false, true)];
        assert_eq!(
            shape(&plan(&all_remote, &zone_cfg())),
            vec![(0, None, vec![0, 1], 10_000)]
        );
        let all_local = [zm(0, true, true), zm(0, true, false)];
        assert_eq!(
            shape(&plan(&all_local, &zone_cfg())),
            vec![(0, None, vec![0], 10_000)]
        );
        let mixed = [zm(0, true, true), zm(0, true, false), zm(0, false, true)];
        assert_eq!(
            shape(&plan(&mixed, &PlanConfig::default())),
            vec![(0, None, vec![0, 2], 10_000)]
        );
    }

    #[test]
    fn zone_min_zero_keeps_everything_local() {
        let cfg = PlanConfig {
            zone_min_healthy_percent: 0,
            ..zone_cfg()
        };
        let members = [zm(0, true, true), zm(0, true, false), zm(0, false, true)];
        assert_eq!(
            shape(&plan(&members, &cfg)),
            vec![(0, Some(true), vec![0], 10_000)]
        );
    }

    #[test]
    fn choose_boundaries() {
        let members = [m(0, false), m(0, true), m(0, false), m(1, true)];
        let p = plan(&members, &PlanConfig::default());
        assert_eq!(p.groups[0].share, 4_667);
        let prio = |r| p.choose(r).map(|g| g.priority);
        assert_eq!(prio(0), Some(0));
        assert_eq!(prio(4_666), Some(0));
        assert_eq!(prio(4_667), Some(1));
        assert_eq!(prio(9_999), Some(1));
        // Out-of-range draws act as 9_999 instead of failing.
        assert_eq!(prio(10_000), Some(1));
        assert_eq!(prio(u32::MAX), Some(1));
    }

    #[test]
    fn fallbacks_start_with_the_choice_then_follow_preference() {
        let members = [
            zm(0, true, true),
            zm(0, true, false),
            zm(0, false, true),
            zm(1, false, true),
        ];
        let p = plan(&members, &zone_cfg());
        let order = |r| {
            p.fallbacks(r)
                .map(|g| (g.priority, g.local))
                .collect::<Vec<_>>()
        };
        let local0 = (0, Some(true));
        let other0 = (0, Some(false));
        let backup = (1, None);
        assert_eq!(order(0), vec![local0, other0, backup]);
        assert_eq!(order(6_666), vec![other0, local0, backup]);
        assert_eq!(order(9_999), vec![backup, local0, other0]);
    }

    fn member() -> impl Strategy<Value = MemberView> {
        (
            0u8..4,
            any::<bool>(),
            any::<bool>(),
            prop::bool::weighted(0.85),
            prop_oneof![4 => 0u32..5, 1 => any::<u32>()],
        )
            .prop_map(
                |(priority, local, admitted, available, weight)| MemberView {
                    priority,
                    local,
                    admitted,
                    available,
                    weight,
                },
            )
    }

    fn config() -> impl Strategy<Value = PlanConfig> {
        (
            prop_oneof![Just(140u32), 0u32..400],
            prop_oneof![Just(50u32), Just(0u32), 0u32..120],
            any::<bool>(),
            prop_oneof![Just(70u32), 0u32..150],
        )
            .prop_map(|(over, panic, zone_aware, zmin)| PlanConfig {
                overprovisioning_percent: over,
                panic_threshold_percent: panic,
                zone_aware,
                zone_min_healthy_percent: zmin,
            })
    }

    proptest! {
        #[test]
        fn shares_sum_and_groups_are_non_empty(
            members in prop::collection::vec(member(), 0..14),
            cfg in config(),
        ) {
            let p = plan(&members, &cfg);
            if !p.is_empty() {
                let sum: u32 = p.groups.iter().map(|g| g.share).sum();
                prop_assert_eq!(sum, TOTAL);
            }
            for g in &p.groups {
                prop_assert!(!g.members.is_empty());
                prop_assert!(g.share > 0);
            }
            prop_assert!(p.healthy_percent() <= 100);
        }

        #[test]
        fn membership_respects_availability_and_admission(
            members in prop::collection::vec(member(), 0..14),
            cfg in config(),
        ) {
            let p = plan(&members, &cfg);
            let mut seen = vec![false; members.len()];
            for g in &p.groups {
                prop_assert!(g.members.windows(2).all(|w| w[0] < w[1]));
                for &i in &g.members {
                    let mv = members[i];
                    prop_assert!(mv.available, "unavailable {} in {:?}", i, g);
                    prop_assert!(!seen[i], "{} in two groups", i);
                    seen[i] = true;
                    if !p.panic {
                        prop_assert!(mv.admitted, "unadmitted {} outside panic", i);
                        prop_assert_eq!(mv.priority, g.priority);
                        if let Some(local) = g.local {
                            prop_assert_eq!(mv.local, local);
                        }
                    }
                }
            }
            let key = |g: &Group| (g.priority, g.local != Some(true));
            prop_assert!(p.groups.windows(2).all(|w| key(&w[0]) < key(&w[1])));
            if p.panic {
                prop_assert_eq!(p.groups.len(), 1);
                let all: Vec<usize> = (0..members.len()).filter(|&i| members[i].available).collect();
                prop_assert_eq!(&p.groups[0].members, &all);
            }
        }

        #[test]
        fn emptiness_follows_availability_and_admission(
            members in prop::collection::vec(member(), 0..14),
            extra in member(),
            cfg in config(),
        ) {
            let p = plan(&members, &cfg);
            let any_available = members.iter().any(|m| m.available);
            let any_admitted = members.iter().any(|m| m.available && m.admitted);
            let expect_empty = !any_available || (cfg.panic_threshold_percent == 0 && !any_admitted);
            prop_assert_eq!(p.is_empty(), expect_empty);

            let mut more = members;
            more.push(MemberView { admitted: true, available: true, ..extra });
            prop_assert!(!plan(&more, &cfg).is_empty());
        }

        #[test]
        fn choose_covers_every_draw_in_proportion_to_shares(
            members in prop::collection::vec(member(), 0..10),
            cfg in config(),
        ) {
            let p = plan(&members, &cfg);
            let mut hits = vec![0u32; p.groups.len()];
            for r in 0..TOTAL {
                let chosen = p.choose(r);
                prop_assert_eq!(chosen.is_some(), !p.is_empty());
                if let Some(g) = chosen {
                    let idx = p.groups.iter().position(|x| std::ptr::eq(x, g));
                    prop_assert!(idx.is_some());
                    hits[idx.unwrap_or(0)] += 1;
                    if r % 97 == 0 {
                        let order: Vec<&Group> = p.fallbacks(r).collect();
                        prop_assert_eq!(order.len(), p.groups.len());
                        prop_assert!(std::ptr::eq(order[0], g));
                    }
                }
            }
            let shares: Vec<u32> = p.groups.iter().map(|g| g.share).collect();
            prop_assert_eq!(hits, shares);
        }
    }
}
