//! What-if before rollout: re-route the requests of a Palisade access log through a new config and,
//! optionally, compare with what another config (the one running now) does with the same requests.
//! This is the engine behind `palisade validate -c new.toml --replay access.log [--against old.toml]`.
//!
//! This module owns reading the log (streamed line by line, so a large log needs no more memory
//! than one line plus per-route tallies and a few examples), the classification of each request
//! (same, different route, different cluster, newly unrouted, newly routed) and the terminal report.
//! It does not load or validate configs, open files or choose the exit code (the CLI does), and it
//! does not match anything itself: routing is [`Router`], exactly as the proxy does it.
//!
//! What a log line can tell: the method, the host and the path as routed (the log has no query,
//! and routes never look at one), and, in `match_headers`, the headers that the routes of the
//! config that *wrote* the line matched on. A header that only the new config matches on is
//! therefore absent from older lines; the report says so rather than guess.

use std::collections::BTreeMap;
use std::io::{BufRead, Read};

use http::{HeaderMap, HeaderName, HeaderValue, Method};
use serde::Deserialize;

use crate::{
    access_log::MatchHeaders,
    config::Config,
    route::{RouteRequest, Router},
};

/// Examples kept per kind of change; beyond it only the counts grow.
pub const MAX_EXAMPLES: usize = 5;

/// A line longer than this (bytes) is counted unparsable and skipped without being held in memory:
/// real lines are bounded by the listener's `max_uri_bytes` and the few logged headers.
const MAX_LINE: u64 = 1 << 20;

/// Hops followed down a `fallback` chain (the proxy's own bound; validation refuses loops).
const MAX_FALLBACK_HOPS: usize = 8;

/// The result of replaying one log.
#[derive(Debug, Clone, PartialEq)]
pub struct Replay {
    /// Non-blank lines read.
    pub total: u64,
    /// Lines that are not an access log entry (bad JSON, a missing field, an invalid method or
    /// header); counted, not replayed.
    pub unparsable: u64,
    /// Lines the proxy refused before routing (flags `DPE` or `LOOP` and no route): their host was
    /// never recorded, so they are not replayed.
    pub skipped: u64,
    /// Where the replayed requests land under the new config.
    pub new: Tally,
    /// The new config against the other one (`--against`), request by request.
    pub against: Option<Comparison>,
    /// Without `--against`: the new config against what each line recorded (its `route` and
    /// `cluster`, possibly written by an older config). `None` when `against` is given.
    pub recorded: Option<Comparison>,
    /// Header names the new or the other config matches on that no replayed line carries in
    /// `match_headers`: either no client sent them or the config that wrote the log did not match
    /// on them (it logs only those), so requests that carried them replay as if they had not.
    pub headers_never_logged: Vec<String>,
}

/// Per route and per cluster counts of the replayed requests under one config.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Tally {
    /// Every route of the config in file order, those no request took included (a dead rule).
    pub routes: Vec<RouteTally>,
    /// Requests per cluster that may serve them: a split route counts towards each of its targets
    /// of positive weight (so these may add up to more than the routed requests).
    pub clusters: BTreeMap<String, u64>,
    /// Requests no route takes (the proxy's 404).
    pub unrouted: u64,
}

/// One route's share of the replayed requests.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RouteTally {
    pub name: String,
    /// Its target clusters of positive weight, sorted (one unless it is a split).
    pub clusters: Vec<String>,
    /// Replayed requests this route takes.
    pub requests: u64,
}

/// Request-by-request differences between a baseline (the other config, or the log line) and the
/// new config. The counts add up to the replayed requests.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Comparison {
    /// Same route name and same set of clusters.
    pub same: u64,
    /// Another route name (its clusters may or may not differ).
    pub different_route: u64,
    /// Same route name, another set of clusters (a split is the set of its positive-weight
    /// targets, not a random pick).
    pub different_cluster: u64,
    /// Routed by the baseline, no route under the new config: these would be 404s.
    pub newly_unrouted: u64,
    /// No route in the baseline, routed under the new config.
    pub newly_routed: u64,
    /// Lines whose baseline is unknown: the log recorded no route although routing was not what
    /// failed (e.g. `UH`, where the proxy logs no route name). Always 0 against a config.
    pub unknown: u64,
    /// At most [`MAX_EXAMPLES`] per kind, each a different (before, after) pair, in log order.
    pub examples: Vec<Example>,
}

/// The kinds of difference that get examples.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Change {
    DifferentRoute,
    DifferentCluster,
    NewlyUnrouted,
    NewlyRouted,
}

/// One request whose fate changes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Example {
    pub change: Change,
    /// 1-based line number in the log.
    pub line: u64,
    pub method: String,
    pub host: String,
    pub path: String,
    /// The logged `match_headers`, if any.
    pub headers: Option<MatchHeaders>,
    /// In the baseline; `None` = no route.
    pub before: Option<Landing>,
    /// Under the new config; `None` = no route.
    pub after: Option<Landing>,
}

/// Where a request lands: a route and the clusters it may go to (for a log line: the one cluster
/// it recorded, if any).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Landing {
    pub route: String,
    pub clusters: Vec<String>,
}

/// Re-routes every request of `log` through `new` and, if given, `against`.
///
/// Errors are for what makes the whole replay meaningless: a config whose routes do not compile
/// (validation normally refused it first) or a log that cannot be read. A bad line is counted in
/// [`Replay::unparsable`] and the replay goes on.
pub fn replay(
    new: &Config,
    against: Option<&Config>,
    mut log: impl BufRead,
) -> Result<Replay, String> {
    let mut state = Replayer::new(new, against)?;
    let mut buf = Vec::new();
    let mut line_no = 0u64;
    loop {
        buf.clear();
        let n = (&mut log)
            .take(MAX_LINE)
            .read_until(b'\n', &mut buf)
            .map_err(|e| format!("reading the log: {e}"))?;
        if n == 0 {
            break;
        }
        line_no = line_no.saturating_add(1);
        if buf.last() != Some(&b'\n') && n as u64 == MAX_LINE {
            skip_rest_of_line(&mut log).map_err(|e| format!("reading the log: {e}"))?;
            state.total = state.total.saturating_add(1);
            state.unparsable = state.unparsable.saturating_add(1);
            continue;
        }
        state.feed(line_no, &buf);
    }
    Ok(state.finish())
}

fn skip_rest_of_line(r: &mut impl BufRead) -> std::io::Result<()> {
    loop {
        let chunk = r.fill_buf()?;
        if chunk.is_empty() {
            return Ok(());
        }
        match chunk.iter().position(|&b| b == b'\n') {
            Some(i) => {
                r.consume(i.saturating_add(1));
                return Ok(());
            }
            None => {
                let n = chunk.len();
                r.consume(n);
            }
        }
    }
}

/// The fields of an access log line that replay needs; every other field is ignored. Owned
/// strings rather than `access_log::Entry` itself, whose `protocol` is a `&'static str`.
#[derive(Debug, Deserialize)]
struct Line {
    method: String,
    #[serde(default)]
    host: String,
    path: String,
    #[serde(default)]
    route: Option<String>,
    #[serde(default)]
    cluster: Option<String>,
    #[serde(default)]
    flags: String,
    #[serde(default)]
    match_headers: Option<MatchHeaders>,
}

impl Line {
    fn has_flag(&self, flag: &str) -> bool {
        self.flags.split(',').any(|f| f.trim() == flag)
    }
}

/// A config's router with, per route index, what a comparison needs.
struct Compiled {
    router: Router,
    /// Positive-weight target clusters, sorted and deduplicated.
    targets: Vec<Vec<String>>,
    /// `targets` plus every cluster down their `fallback` chains: what a log line may have
    /// recorded as `cluster` (the proxy logs the cluster that served).
    serving: Vec<Vec<String>>,
}

impl Compiled {
    fn new(config: &Config, which: &str) -> Result<Self, String> {
        let router = Router::compile(&config.routes).map_err(|e| format!("{which} config: {e}"))?;
        let targets: Vec<Vec<String>> = router
            .routes()
            .iter()
            .map(|r| {
                let mut set: Vec<String> = r
                    .targets
                    .iter()
                    .filter(|(_, w)| *w > 0)
                    .map(|(c, _)| c.clone())
                    .collect();
                set.sort_unstable();
                set.dedup();
                set
            })
            .collect();
        let serving = targets
            .iter()
            .map(|set| {
                let mut all = set.clone();
                for first in set {
                    let mut at = first;
                    for _ in 0..MAX_FALLBACK_HOPS {
                        match config.clusters.get(at).and_then(|c| c.fallback.as_ref()) {
                            Some(next) => {
                                all.push(next.clone());
                                at = next;
                            }
                            None => break,
                        }
                    }
                }
                all.sort_unstable();
                all.dedup();
                all
            })
            .collect();
        Ok(Self {
            router,
            targets,
            serving,
        })
    }

    fn land(&self, req: &RouteRequest<'_>) -> Option<usize> {
        self.router.route(req).map(|r| r.index)
    }

    fn view(&self, index: usize) -> Option<View<'_>> {
        Some(View {
            route: self.router.routes().get(index)?.name.as_ref(),
            clusters: self.targets.get(index)?,
        })
    }
}

/// A borrowed [`Landing`], so that lines whose example is not kept allocate nothing for it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct View<'a> {
    route: &'a str,
    clusters: &'a [String],
}

impl View<'_> {
    fn to_landing(self) -> Landing {
        Landing {
            route: self.route.to_owned(),
            clusters: self.clusters.to_vec(),
        }
    }
}

fn same_landing(kept: Option<&Landing>, view: Option<View<'_>>) -> bool {
    match (kept, view) {
        (None, None) => true,
        (Some(l), Some(v)) => l.route == v.route && l.clusters == v.clusters,
        _ => false,
    }
}

/// The streaming state of one replay.
struct Replayer {
    new: Compiled,
    against: Option<Compiled>,
    total: u64,
    unparsable: u64,
    skipped: u64,
    /// Per route index of the new config.
    per_route: Vec<u64>,
    unrouted: u64,
    comparison: Comparison,
    /// Header names either config matches on, and whether some line logged it.
    watched: Vec<(HeaderName, bool)>,
    /// Reused for every line.
    headers: HeaderMap,
}

impl Replayer {
    fn new(new: &Config, against: Option<&Config>) -> Result<Self, String> {
        let new = Compiled::new(new, "new")?;
        let against = against.map(|c| Compiled::new(c, "--against")).transpose()?;
        let mut watched: Vec<(HeaderName, bool)> = Vec::new();
        let names = against
            .iter()
            .flat_map(|a| a.router.match_header_names())
            .chain(new.router.match_header_names());
        for name in names {
            if !watched.iter().any(|(n, _)| n == name) {
                watched.push((name.clone(), false));
            }
        }
        Ok(Self {
            per_route: vec![0; new.router.routes().len()],
            new,
            against,
            total: 0,
            unparsable: 0,
            skipped: 0,
            unrouted: 0,
            comparison: Comparison::default(),
            watched,
            headers: HeaderMap::new(),
        })
    }

    /// One raw line (with or without its newline).
    fn feed(&mut self, line_no: u64, raw: &[u8]) {
        if raw.iter().all(u8::is_ascii_whitespace) {
            return;
        }
        self.total = self.total.saturating_add(1);
        let Some((line, method)) = self.parse(raw) else {
            self.unparsable = self.unparsable.saturating_add(1);
            return;
        };
        if line.route.is_none() && (line.has_flag("DPE") || line.has_flag("LOOP")) {
            self.skipped = self.skipped.saturating_add(1);
            return;
        }
        // The handler logs the path without its query; a '?' here comes from elsewhere.
        let path = line.path.split_once('?').map_or(&*line.path, |(p, _)| p);
        let req = RouteRequest {
            host: Some(line.host.as_str()).filter(|h| !h.is_empty()),
            path,
            method: &method,
            headers: &self.headers,
        };
        let after = self.new.land(&req);
        let before = self.against.as_ref().map(|a| a.land(&req));
        match after.and_then(|i| self.per_route.get_mut(i)) {
            Some(n) => *n = n.saturating_add(1),
            None => self.unrouted = self.unrouted.saturating_add(1),
        }
        let after_view = after.and_then(|i| self.new.view(i));
        let change = match (&self.against, before) {
            (Some(against), Some(before)) => {
                let before_view = before.and_then(|i| against.view(i));
                let change = classify(before_view, after_view, |b, a| b.clusters == a.clusters);
                Some((change, before_view))
            }
            _ => {
                let cluster = line.cluster.as_ref().map(std::slice::from_ref);
                let before_view = line.route.as_deref().map(|route| View {
                    route,
                    clusters: cluster.unwrap_or_default(),
                });
                if before_view.is_none() && !line.has_flag("NR") {
                    self.comparison.unknown = self.comparison.unknown.saturating_add(1);
                    None
                } else {
                    let serving = after.and_then(|i| self.new.serving.get(i));
                    let change = classify(before_view, after_view, |b, _| {
                        b.clusters
                            .iter()
                            .all(|c| serving.is_some_and(|s| s.contains(c)))
                    });
                    Some((change, before_view))
                }
            }
        };
        if let Some((change, before_view)) = change {
            self.comparison
                .count(change, line_no, &line, before_view, after_view);
        }
    }

    /// Parses a line and fills `self.headers` from its `match_headers`.
    fn parse(&mut self, raw: &[u8]) -> Option<(Line, Method)> {
        let mut line: Line = serde_json::from_slice(raw).ok()?;
        let method = Method::from_bytes(line.method.as_bytes()).ok()?;
        self.headers.clear();
        if let Some(logged) = &line.match_headers {
            for (name, values) in logged {
                let name = HeaderName::from_bytes(name.as_bytes()).ok()?;
                if let Some((_, seen)) = self.watched.iter_mut().find(|(n, _)| *n == name) {
                    *seen = true;
                }
                for v in values.as_slice() {
                    self.headers
                        .append(name.clone(), HeaderValue::from_str(v).ok()?);
                }
            }
        }
        if line.match_headers.as_ref().is_some_and(|m| m.is_empty()) {
            line.match_headers = None;
        }
        Some((line, method))
    }

    fn finish(self) -> Replay {
        let mut clusters: BTreeMap<String, u64> = BTreeMap::new();
        let routes = self
            .new
            .router
            .routes()
            .iter()
            .zip(&self.new.targets)
            .zip(&self.per_route)
            .map(|((route, targets), &requests)| {
                for c in targets {
                    let n = clusters.entry(c.clone()).or_default();
                    *n = n.saturating_add(requests);
                }
                RouteTally {
                    name: route.name.to_string(),
                    clusters: targets.clone(),
                    requests,
                }
            })
            .collect();
        let (against, recorded) = if self.against.is_some() {
            (Some(self.comparison), None)
        } else {
            (None, Some(self.comparison))
        };
        Replay {
            total: self.total,
            unparsable: self.unparsable,
            skipped: self.skipped,
            new: Tally {
                routes,
                clusters,
                unrouted: self.unrouted,
            },
            against,
            recorded,
            headers_never_logged: self
                .watched
                .into_iter()
                .filter(|(_, seen)| !seen)
                .map(|(n, _)| n.as_str().to_owned())
                .collect(),
        }
    }
}

/// `None` = the same; `same_clusters(before, after)` is asked only when the route names agree.
fn classify(
    before: Option<View<'_>>,
    after: Option<View<'_>>,
    same_clusters: impl Fn(&View<'_>, &View<'_>) -> bool,
) -> Option<Change> {
    match (before, after) {
        (None, None) => None,
        (None, Some(_)) => Some(Change::NewlyRouted),
        (Some(_), None) => Some(Change::NewlyUnrouted),
        (Some(b), Some(a)) if b.route != a.route => Some(Change::DifferentRoute),
        (Some(b), Some(a)) if !same_clusters(&b, &a) => Some(Change::DifferentCluster),
        (Some(_), Some(_)) => None,
    }
}

impl Comparison {
    fn count(
        &mut self,
        change: Option<Change>,
        line_no: u64,
        line: &Line,
        before: Option<View<'_>>,
        after: Option<View<'_>>,
    ) {
        let counter = match change {
            None => &mut self.same,
            Some(Change::DifferentRoute) => &mut self.different_route,
            Some(Change::DifferentCluster) => &mut self.different_cluster,
            Some(Change::NewlyUnrouted) => &mut self.newly_unrouted,
            Some(Change::NewlyRouted) => &mut self.newly_routed,
        };
        *counter = counter.saturating_add(1);
        let Some(change) = change else {
            return;
        };
        let mut of_kind = self.examples.iter().filter(|e| e.change == change);
        // One example per (before, after) pair: five lines of the same mistake teach less than
        // five different mistakes.
        if of_kind.clone().count() >= MAX_EXAMPLES
            || of_kind.any(|e| {
                same_landing(e.before.as_ref(), before) && same_landing(e.after.as_ref(), after)
            })
        {
            return;
        }
        self.examples.push(Example {
            change,
            line: line_no,
            method: line.method.clone(),
            host: line.host.clone(),
            path: line.path.clone(),
            headers: line.match_headers.clone(),
            before: before.map(View::to_landing),
            after: after.map(View::to_landing),
        });
    }

    /// Requests whose fate changes.
    pub fn changed(&self) -> u64 {
        self.different_route
            .saturating_add(self.different_cluster)
            .saturating_add(self.newly_unrouted)
            .saturating_add(self.newly_routed)
    }
}

impl Replay {
    /// Requests actually re-routed: neither unparsable nor refused before routing.
    pub fn replayed(&self) -> u64 {
        self.total
            .saturating_sub(self.unparsable)
            .saturating_sub(self.skipped)
    }

    /// Whether some request that had a route (under `--against`, or else as the log recorded)
    /// gets none under the new config: it would become a 404. What should fail the command.
    pub fn regressions(&self) -> bool {
        self.against
            .as_ref()
            .or(self.recorded.as_ref())
            .is_some_and(|c| c.newly_unrouted > 0)
    }

    /// The report for a terminal: counts first, then examples, then caveats.
    pub fn render(&self) -> String {
        use std::fmt::Write as _;
        let mut out = String::new();
        let _ = write!(out, "replayed {} request(s)", self.replayed());
        if self.unparsable > 0 || self.skipped > 0 {
            let _ = write!(
                out,
                " ({} line(s) read: {} unparsable, {} refused before routing and not replayed)",
                self.total, self.unparsable, self.skipped
            );
        }
        out.push_str("\n\nunder the new config:\n");
        let width = self
            .new
            .routes
            .iter()
            .map(|r| r.name.chars().count())
            .max()
            .unwrap_or(0)
            .max("(no route)".len());
        for r in &self.new.routes {
            let _ = write!(
                out,
                "  {:<width$}  {:>9}  -> {}",
                r.name,
                r.requests,
                r.clusters.join(", ")
            );
            if r.clusters.len() > 1 {
                out.push_str(" (split)");
            }
            if r.requests == 0 {
                out.push_str("  (no request matched)");
            }
            out.push('\n');
        }
        let _ = writeln!(out, "  {:<width$}  {:>9}", "(no route)", self.new.unrouted);
        let (c, baseline) = match (&self.against, &self.recorded) {
            (Some(c), _) => (c, "the --against config"),
            (None, Some(c)) => (c, "what the log recorded"),
            (None, None) => return out,
        };
        let _ = writeln!(
            out,
            "\ncompared with {baseline}:\n  same {}, different route {}, different cluster {}, \
             newly unrouted {}, newly routed {}",
            c.same, c.different_route, c.different_cluster, c.newly_unrouted, c.newly_routed
        );
        if c.unknown > 0 {
            let _ = writeln!(
                out,
                "  {} line(s) record no route though routing did not fail (e.g. UH): not compared",
                c.unknown
            );
        }
        for (kind, label) in [
            (Change::NewlyUnrouted, "newly unrouted (would be 404)"),
            (Change::DifferentRoute, "different route"),
            (Change::DifferentCluster, "different cluster"),
            (Change::NewlyRouted, "newly routed"),
        ] {
            let mut examples = c.examples.iter().filter(|e| e.change == kind).peekable();
            if examples.peek().is_none() {
                continue;
            }
            let _ = writeln!(out, "  {label}, e.g.:");
            for e in examples {
                let _ = write!(
                    out,
                    "    line {}: {} {}{}",
                    e.line,
                    e.method.escape_debug(),
                    e.host.escape_debug(),
                    e.path.escape_debug()
                );
                for (name, values) in e.headers.iter().flatten() {
                    for v in values.as_slice() {
                        let _ = write!(out, " [{name}: {}]", v.escape_debug());
                    }
                }
                let _ = writeln!(
                    out,
                    ": {} => {}",
                    landing_text(e.before.as_ref()),
                    landing_text(e.after.as_ref())
                );
            }
        }
        if c.different_cluster > 0 {
            out.push_str(
                "  (a split's clusters are the targets of positive weight: a weight change alone \
                 is not a different cluster; a logged cluster reached by fallback counts as the \
                 same)\n",
            );
        }
        if !self.headers_never_logged.is_empty() {
            let _ = writeln!(
                out,
                "\nnote: routes match on {}, which no replayed line records; the log keeps only \
                 the headers the routes of its own config matched on, so requests that carried \
                 them replay as if they had not",
                self.headers_never_logged.join(", ")
            );
        }
        if self.regressions() {
            let _ = writeln!(
                out,
                "\nREGRESSION: {} request(s) that had a route would get none (404)",
                c.newly_unrouted
            );
        }
        out
    }
}

fn landing_text(l: Option<&Landing>) -> String {
    match l {
        None => "no route".to_owned(),
        Some(l) if l.clusters.is_empty() => l.route.clone(),
        Some(l) => format!("{} ({})", l.route, l.clusters.join(", ")),
    }
}

#[cfg(test)]
mod tests {
    use std::path::PathBuf;

    use proptest::prelude::*;

    use super::*;
    use crate::{
        access_log::{Entry, LoggedValues},
        config::{
            Dur, HeaderMatch, HeaderRewrite, OneOrMany, RouteConfig, RouteMatch, SplitTarget,
        },
    };

    fn config(toml: &str) -> Config {
        crate::config::parse(toml, PathBuf::new()).unwrap().config
    }

    /// A log line exactly as the proxy writes it: `serde_json` of the real `Entry`.
    struct Logged {
        method: &'static str,
        host: &'static str,
        path: &'static str,
        headers: Vec<(&'static str, &'static str)>,
        route: Option<&'static str>,
        cluster: Option<&'static str>,
        flags: &'static str,
    }

    fn get(host: &'static str, path: &'static str) -> Logged {
        Logged {
            method: "GET",
            host,
            path,
            headers: Vec::new(),
            route: None,
            cluster: None,
            flags: "-",
        }
    }

    impl Logged {
        fn header(mut self, name: &'static str, value: &'static str) -> Self {
            self.headers.push((name, value));
            self
        }
        fn recorded(mut self, route: &'static str, cluster: &'static str) -> Self {
            self.route = Some(route);
            self.cluster = Some(cluster);
            self
        }
        fn flags(mut self, flags: &'static str) -> Self {
            self.flags = flags;
            self
        }
        fn json(&self) -> String {
            let mut map = http::HeaderMap::new();
            for (n, v) in &self.headers {
                map.append(*n, HeaderValue::from_static(v));
            }
            let names: Vec<HeaderName> = self
                .headers
                .iter()
                .map(|(n, _)| HeaderName::from_static(n))
                .collect();
            serde_json::to_string(&Entry {
                ts: "2024-01-01T00:00:00.000Z".into(),
                request_id: "r".into(),
                method: self.method.into(),
                host: self.host.into(),
                path: self.path.into(),
                match_headers: crate::access_log::match_headers(&map, &names),
                protocol: "HTTP/1.1",
                status: 200,
                route: self.route.map(Into::into),
                cluster: self.cluster.map(Into::into),
                flags: self.flags.into(),
                ..Entry::default()
            })
            .unwrap()
        }
    }

    fn log(lines: &[Logged]) -> String {
        lines.iter().map(|l| l.json() + "\n").collect()
    }

    fn run(new: &Config, against: Option<&Config>, text: &str) -> Replay {
        replay(new, against, text.as_bytes()).unwrap()
    }

    const WITH_CANARY: &str = r#"
        [[routes]]
        name = "canary"
        match = { path_prefix = "/", headers = [{ name = "X-Canary", value = "1" }] }
        cluster = "api-v2"
        [[routes]]
        name = "api"
        match = { host = "api.example.com", path_prefix = "/" }
        cluster = "api-v1"
        [[routes]]
        name = "admin"
        match = { host = "admin.example.com" }
        cluster = "admin"
    "#;

    #[test]
    fn entry_lines_round_trip_into_what_replay_reads() {
        let text = get("api.example.com:8443", "/v1/x")
            .header("x-canary", "1")
            .header("x-tier", "a")
            .header("x-tier", "b")
            .recorded("api", "api-v1")
            .flags("UF,UT")
            .json();
        let line: Line = serde_json::from_str(&text).unwrap();
        assert_eq!(line.method, "GET");
        assert_eq!(line.host, "api.example.com:8443");
        assert_eq!(line.path, "/v1/x");
        assert_eq!(line.route.as_deref(), Some("api"));
        assert_eq!(line.cluster.as_deref(), Some("api-v1"));
        assert!(line.has_flag("UT") && line.has_flag("UF") && !line.has_flag("U"));
        let headers = line.match_headers.unwrap();
        assert_eq!(headers["x-canary"], LoggedValues::One("1".into()));
        assert_eq!(headers["x-tier"].as_slice(), ["a", "b"]);
        // A line without the optional fields (an older proxy) still parses.
        let bare = serde_json::to_string(&Entry {
            method: "GET".into(),
            ..Entry::default()
        })
        .unwrap();
        let line: Line = serde_json::from_str(&bare).unwrap();
        assert!(line.match_headers.is_none() && line.route.is_none());
    }

    #[test]
    fn deleted_header_canary_shows_as_a_different_route() {
        let old = config(WITH_CANARY);
        let new = config(&WITH_CANARY.replacen(
            r#"name = "canary"
        match = { path_prefix = "/", headers = [{ name = "X-Canary", value = "1" }] }
        cluster = "api-v2""#,
            r#"name = "canary"
        match = { path = "/nothing" }
        cluster = "api-v2""#,
            1,
        ));
        assert_ne!(old, new);
        let text = log(&[
            get("api.example.com", "/v1/x").header("x-canary", "1"),
            get("api.example.com", "/v1/x"),
            get("API.example.com:443", "/v1/y").header("x-canary", "0"),
        ]);
        let r = run(&new, Some(&old), &text);
        let c = r.against.as_ref().unwrap();
        assert_eq!((c.same, c.different_route, c.newly_unrouted), (2, 1, 0));
        assert_eq!(c.examples.len(), 1);
        let e = &c.examples[0];
        assert_eq!((e.change, e.line), (Change::DifferentRoute, 1));
        assert_eq!(
            e.before,
            Some(Landing {
                route: "canary".into(),
                clusters: vec!["api-v2".into()]
            })
        );
        assert_eq!(e.after.as_ref().unwrap().route, "api");
        assert!(!r.regressions());
        assert!(r.recorded.is_none());
        let text = r.render();
        assert!(text.contains("different route 1"), "{text}");
        assert!(
            text.contains("line 1: GET api.example.com/v1/x [x-canary: 1]"),
            "{text}"
        );
        assert!(text.contains("canary (api-v2) => api (api-v1)"), "{text}");
    }

    #[test]
    fn a_removed_route_is_newly_unrouted_and_a_regression() {
        let old = config(WITH_CANARY);
        let new = config(&WITH_CANARY.replace("admin.example.com", "adm.example.com"));
        let text = log(&[
            get("admin.example.com", "/users"),
            get("api.example.com", "/v1"),
            get("nowhere.example.com", "/"),
        ]);
        let r = run(&new, Some(&old), &text);
        let c = r.against.as_ref().unwrap();
        assert_eq!((c.same, c.newly_unrouted, c.changed()), (2, 1, 1));
        assert_eq!(c.examples[0].after, None);
        assert!(r.regressions());
        assert!(r.render().contains("REGRESSION: 1 request(s)"));
        // The other way round the same requests are newly routed: not a regression.
        let back = run(&old, Some(&new), &text);
        assert_eq!(back.against.as_ref().unwrap().newly_routed, 1);
        assert!(!back.regressions());
    }

    #[test]
    fn identical_configs_change_nothing() {
        let cfg = config(
            r#"
            [[routes]]
            name = "split"
            match = { path_prefix = "/s" }
            split = [{ cluster = "b", weight = 5 }, { cluster = "a", weight = 95 }]
            [[routes]]
            name = "rest"
            cluster = "a"
            "#,
        );
        let text = log(&[
            get("x.com", "/s/1"),
            get("x.com", "/t"),
            get("", "/s"),
            get("x.com", "/").header("x-canary", "1"),
        ]);
        let r = run(&cfg, Some(&cfg), &text);
        let c = r.against.as_ref().unwrap();
        assert_eq!(c.same, 4);
        assert_eq!(c.changed(), 0);
        assert!(c.examples.is_empty());
        assert!(!r.regressions());
    }

    #[test]
    fn split_clusters_compare_as_sets_of_positive_weight_targets() {
        let split = |targets: &str| {
            config(&format!(
                "[[routes]]\nname = \"api\"\nsplit = [{targets}]\n"
            ))
        };
        let base = split(r#"{ cluster = "v1", weight = 95 }, { cluster = "v2", weight = 5 }"#);
        let reweighted =
            split(r#"{ cluster = "v2", weight = 50 }, { cluster = "v1", weight = 50 }"#);
        let off = split(r#"{ cluster = "v1", weight = 1 }, { cluster = "v2", weight = 0 }"#);
        let text = log(&[get("a.com", "/")]);
        let c = |new: &Config| run(new, Some(&base), &text).against.unwrap();
        assert_eq!(
            c(&reweighted).same,
            1,
            "weights alone are not a different cluster"
        );
        let dropped = c(&off);
        assert_eq!(
            dropped.different_cluster, 1,
            "a weight-0 target is never chosen"
        );
        assert_eq!(dropped.examples[0].after.as_ref().unwrap().clusters, ["v1"]);
        let r = run(&base, None, &text);
        assert_eq!(r.new.routes[0].clusters, ["v1", "v2"]);
        assert_eq!(r.new.clusters["v1"], 1);
        assert_eq!(r.new.clusters["v2"], 1);
    }

    #[test]
    fn unparsable_lines_are_counted_not_fatal() {
        let cfg = config(WITH_CANARY);
        let good = get("api.example.com", "/").json();
        let text = format!(
            "not json\n\n{{}}\n{}\n{}\n   \n{good}\n{}",
            r#"{"method":"GE T","path":"/"}"#,
            r#"{"method":"GET","path":"/","match_headers":{"bad name":"1"}}"#,
            // The last line has no newline: still read.
            r#"{"method":"GET","host":"api.example.com","path":"/x"}"#
        );
        let r = run(&cfg, None, &text);
        assert_eq!((r.total, r.unparsable, r.replayed()), (6, 4, 2));
        assert_eq!(r.new.routes[1].requests, 2);
        assert!(r.render().contains("4 unparsable"));
    }

    #[test]
    fn an_oversized_line_is_skipped_without_losing_the_next() {
        let cfg = config(WITH_CANARY);
        let huge = "x".repeat(usize::try_from(MAX_LINE).unwrap() + 10);
        let text = format!("{huge}\n{}\n", get("api.example.com", "/").json());
        // A small buffer, so the skip has to go through several refills.
        let r = replay(
            &cfg,
            None,
            std::io::BufReader::with_capacity(64, text.as_bytes()),
        )
        .unwrap();
        assert_eq!((r.total, r.unparsable, r.replayed()), (2, 1, 1));
        assert_eq!(r.new.routes[1].requests, 1);
    }

    #[test]
    fn examples_are_bounded_per_kind_and_distinct() {
        let mut new = String::new();
        for i in 0..10 {
            new.push_str(&format!(
                "[[routes]]\nname = \"r{i}\"\nmatch = {{ path = \"/{i}\" }}\ncluster = \"c\"\n"
            ));
        }
        let new = config(&new);
        let old = config("[[routes]]\nname = \"all\"\ncluster = \"c\"\n");
        const PATHS: [&str; 10] = ["/0", "/1", "/2", "/3", "/4", "/5", "/6", "/7", "/8", "/9"];
        let lines: Vec<Logged> = (0..3)
            .flat_map(|_| PATHS.iter().map(|p| get("a.com", p)))
            .chain([get("a.com", "/other")])
            .collect();
        let r = run(&new, Some(&old), &log(&lines));
        let c = r.against.as_ref().unwrap();
        assert_eq!((c.different_route, c.newly_unrouted), (30, 1));
        let routes: Vec<_> = c
            .examples
            .iter()
            .filter(|e| e.change == Change::DifferentRoute)
            .map(|e| (e.line, e.after.as_ref().unwrap().route.as_str()))
            .collect();
        assert_eq!(
            routes,
            [(1, "r0"), (2, "r1"), (3, "r2"), (4, "r3"), (5, "r4")]
        );
        assert_eq!(c.examples.len(), 6, "the other kind has its own bound");
        // The same mistake over and over is one example.
        let same = run(
            &new,
            Some(&old),
            &log(&[get("a.com", "/3"), get("a.com", "/3")]),
        );
        assert_eq!(same.against.unwrap().examples.len(), 1);
    }

    #[test]
    fn without_against_the_log_line_is_the_baseline() {
        let new = config(&format!(
            "{WITH_CANARY}\n[clusters.api-v1]\nendpoints = []\nfallback = \"spare\"\n"
        ));
        let lines = [
            // Served by the fallback of the route's cluster: the same.
            get("api.example.com", "/").recorded("api", "spare"),
            // Logged by an older config under another name.
            get("api.example.com", "/").recorded("api-old", "api-v1"),
            // Another cluster altogether.
            get("api.example.com", "/").recorded("api", "api-v0"),
            // Logged as 404, routed now.
            get("api.example.com", "/").flags("NR"),
            // Routed then, 404 now.
            get("gone.example.com", "/").recorded("gone", "g"),
            // 503 without a route name: not comparable.
            get("api.example.com", "/").flags("UH"),
            // Refused before routing (its host was never logged): not replayed.
            get("", "/").flags("DPE"),
            get("api.example.com", "/").flags("LOOP"),
        ];
        let r = run(&new, None, &log(&lines));
        assert!(r.against.is_none());
        let c = r.recorded.as_ref().unwrap();
        assert_eq!(
            (
                c.same,
                c.different_route,
                c.different_cluster,
                c.newly_routed,
                c.newly_unrouted,
                c.unknown
            ),
            (1, 1, 1, 1, 1, 1)
        );
        assert_eq!((r.total, r.skipped, r.replayed()), (8, 2, 6));
        assert_eq!(r.new.routes[1].requests, 5);
        assert_eq!(r.new.unrouted, 1);
        assert!(r.regressions());
        let text = r.render();
        assert!(
            text.contains("compared with what the log recorded"),
            "{text}"
        );
        assert!(text.contains("api-old (api-v1) => api (api-v1)"), "{text}");
    }

    #[test]
    fn the_path_is_routed_without_query_and_hosts_as_the_proxy_does() {
        let cfg = config(
            "[[routes]]\nname = \"exact\"\nmatch = { host = \"a.com\", path = \"/x\" }\ncluster = \"c\"\n",
        );
        let text = log(&[get("A.COM.:8080", "/x?q=1"), get("a.com", "/x/")]);
        let r = run(&cfg, None, &text);
        assert_eq!((r.new.routes[0].requests, r.new.unrouted), (1, 1));
    }

    #[test]
    fn headers_no_line_logged_are_reported() {
        let old = config(WITH_CANARY);
        let new = config(&WITH_CANARY.replace(
            r#"match = { host = "admin.example.com" }"#,
            r#"match = { host = "admin.example.com", headers = [{ name = "x-staff", present = true }] }"#,
        ));
        let r = run(
            &new,
            Some(&old),
            &log(&[get("api.example.com", "/").header("x-canary", "1")]),
        );
        assert_eq!(r.headers_never_logged, ["x-staff"]);
        assert!(r.render().contains("note: routes match on x-staff"));
        let r = run(&old, None, &log(&[get("api.example.com", "/")]));
        assert_eq!(r.headers_never_logged, ["x-canary"]);
    }

    #[test]
    fn tally_lists_every_route_in_file_order() {
        let cfg = config(WITH_CANARY);
        let text = log(&[
            get("api.example.com", "/"),
            get("api.example.com", "/").header("x-canary", "1"),
            get("api.example.com", "/"),
        ]);
        let r = run(&cfg, None, &text);
        let counts: Vec<_> = r
            .new
            .routes
            .iter()
            .map(|t| (t.name.as_str(), t.requests))
            .collect();
        assert_eq!(counts, [("canary", 1), ("api", 2), ("admin", 0)]);
        assert!(r.render().contains("(no request matched)"));
    }

    #[test]
    fn a_config_that_does_not_compile_is_an_error_naming_it() {
        let bad = config("[[routes]]\nname = \"x\"\n");
        let good = config(WITH_CANARY);
        let e = replay(&good, Some(&bad), "".as_bytes()).unwrap_err();
        assert!(e.starts_with("--against config: routes[0]"), "{e}");
        assert!(
            replay(&bad, None, "".as_bytes())
                .unwrap_err()
                .starts_with("new config")
        );
    }

    // Property tests over small generated configs and logs.

    fn route(name: String, m: RouteMatch, targets: Vec<(String, u32)>) -> RouteConfig {
        let (cluster, split) = match targets.as_slice() {
            [(c, _)] => (Some(c.clone()), None),
            _ => (
                None,
                Some(
                    targets
                        .into_iter()
                        .map(|(cluster, weight)| SplitTarget { cluster, weight })
                        .collect(),
                ),
            ),
        };
        RouteConfig {
            name,
            matches: m,
            cluster,
            split,
            timeout: Dur::secs(15),
            strip_prefix: None,
            host_rewrite: None,
            request_headers: HeaderRewrite::default(),
            response_headers: HeaderRewrite::default(),
            retry: crate::config::RetryConfig::default(),
            hedge: None,
            last_resort: None,
            rate_limits: Vec::new(),
            priority: crate::config::RoutePriority::Normal,
            allow: Vec::new(),
            deny: Vec::new(),
            max_request_body_bytes: None,
        }
    }

    const HOSTS: [&str; 2] = ["a.com", "b.com"];
    const PATHS: [&str; 4] = ["/", "/a", "/a/b", "/b"];
    const VALUES: [&str; 2] = ["1", "2"];

    fn arb_config() -> impl Strategy<Value = Config> {
        let one = (
            0..4usize,
            proptest::option::of(0..2usize),
            0..4usize,
            proptest::option::of(0..2usize),
            proptest::collection::vec((0..3usize, 0..3u32), 1..3),
        )
            .prop_map(|(name, host, prefix, header, targets)| {
                route(
                    format!("r{name}"),
                    RouteMatch {
                        host: host.map(|h| OneOrMany::One(HOSTS[h].into())),
                        path_prefix: Some(PATHS[prefix].into()),
                        headers: header
                            .map(|v| HeaderMatch {
                                name: "x-c".into(),
                                value: Some(VALUES[v].into()),
                                present: None,
                                regex: None,
                            })
                            .into_iter()
                            .collect(),
                        ..RouteMatch::default()
                    },
                    // A split needs some positive weight to compile.
                    targets
                        .into_iter()
                        .map(|(c, w)| (format!("c{c}"), w + 1))
                        .collect(),
                )
            });
        proptest::collection::vec(one, 0..5).prop_map(|routes| Config {
            routes,
            ..Config::default()
        })
    }

    /// A log line: a request, or garbage.
    fn arb_log() -> impl Strategy<Value = String> {
        let request = (
            prop_oneof![Just("GET"), Just("POST")],
            prop_oneof![Just(""), Just("a.com"), Just("B.com:80")],
            0..4usize,
            proptest::option::of(0..2usize),
        )
            .prop_map(|(method, host, path, header)| {
                let mut l = get(host, PATHS[path]);
                l.method = method;
                if let Some(v) = header {
                    l = l.header("x-c", VALUES[v]);
                }
                l.json()
            });
        let line = prop_oneof![4 => request, 1 => "[^\n]{0,20}"];
        proptest::collection::vec(line, 0..40).prop_map(|lines| lines.join("\n"))
    }

    fn counts(c: &Comparison) -> [u64; 5] {
        [
            c.same,
            c.different_route,
            c.different_cluster,
            c.newly_unrouted,
            c.newly_routed,
        ]
    }

    proptest! {
        #[test]
        fn every_replayed_request_is_counted_once(
            a in arb_config(), b in arb_config(), text in arb_log()
        ) {
            let r = run(&a, Some(&b), &text);
            let c = r.against.as_ref().unwrap();
            prop_assert_eq!(r.unparsable + r.skipped + r.replayed(), r.total);
            prop_assert_eq!(counts(c).iter().sum::<u64>(), r.replayed());
            prop_assert_eq!(c.unknown, 0);
            let routed: u64 = r.new.routes.iter().map(|t| t.requests).sum();
            prop_assert_eq!(routed + r.new.unrouted, r.replayed());
            for kind in [Change::DifferentRoute, Change::DifferentCluster, Change::NewlyUnrouted, Change::NewlyRouted] {
                prop_assert!(c.examples.iter().filter(|e| e.change == kind).count() <= MAX_EXAMPLES);
            }
            prop_assert_eq!(r.regressions(), c.newly_unrouted > 0);
        }

        #[test]
        fn swapping_the_configs_swaps_routed_and_unrouted(
            a in arb_config(), b in arb_config(), text in arb_log()
        ) {
            let ab = counts(run(&a, Some(&b), &text).against.as_ref().unwrap());
            let ba = counts(run(&b, Some(&a), &text).against.as_ref().unwrap());
            prop_assert_eq!(ab, [ba[0], ba[1], ba[2], ba[4], ba[3]]);
        }

        #[test]
        fn a_config_against_itself_changes_nothing(a in arb_config(), text in arb_log()) {
            let r = run(&a, Some(&a), &text);
            let c = r.against.unwrap();
            prop_assert_eq!(c.changed(), 0);
            prop_assert_eq!(c.same, r.total - r.unparsable - r.skipped);
            prop_assert!(c.examples.is_empty());
        }
    }
}
