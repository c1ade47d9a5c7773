//! What changed between two configs: routes, clusters, endpoints, listeners and every other
//! top-level section, as a structured [`ConfigDiff`] (for `GET /config/diff` and the reload
//! history) and as a one-line [`ConfigDiff::summary`] (for reload logs).
//!
//! This module owns the comparison only. It does not load, validate or store configs, and it does
//! not decide whether a change is safe; it is pure and does no I/O.
//!
//! Items are compared by name, never by position, so that inserting a route or a cluster does not
//! show every later one as changed. Inside an item the canonical JSON form (the same one the
//! version hash uses) is compared leaf by leaf. Secrets never leave this module: both configs are
//! redacted before anything is compared.

use std::collections::BTreeMap;
use std::fmt::Write as _;

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use crate::config::{ClusterConfig, Config, EndpointConfig};

/// Everything that differs between two configs. Empty lists mean "no change of that kind".
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct ConfigDiff {
    /// Routes by name. Routes are first-match-wins, so a reordering is reported in `moved`.
    pub routes: ItemChanges,
    /// Clusters by name. Their endpoints are not in `changed`: see `endpoints`.
    pub clusters: ItemChanges,
    /// Endpoint changes, one entry per cluster present in both configs that has any. The
    /// endpoints of an added or removed cluster are not listed.
    pub endpoints: Vec<EndpointChange>,
    /// Listeners by name.
    pub listeners: ItemChanges,
    /// Leaf-level changes in every other top-level section (`admin`, `runtime`, `log`,
    /// `access_log`, `http`, `shutdown`, `reload`), with paths from the top (`log.level`).
    pub other: Vec<FieldChange>,
}

/// Named items that appeared, disappeared or changed.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct ItemChanges {
    /// Names only in the new config, in its order.
    pub added: Vec<String>,
    /// Names only in the old config, in its order.
    pub removed: Vec<String>,
    /// Items in both whose content differs, in the new config's order.
    pub changed: Vec<ItemChange>,
    /// Routes only: routes in both whose order relative to each other changed. The fewest moves
    /// that explain the new order are reported; insertions and removals alone move nothing.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub moved: Vec<Moved>,
}

impl ItemChanges {
    /// True when nothing was added, removed, changed or moved.
    pub fn is_empty(&self) -> bool {
        self.added.is_empty()
            && self.removed.is_empty()
            && self.changed.is_empty()
            && self.moved.is_empty()
    }
}

/// One item (or endpoint) in both configs with differing content.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct ItemChange {
    /// The item's name (an endpoint's address for endpoint changes).
    pub name: String,
    /// Leaf-level changes, paths relative to the item (`match.path_prefix`, `timeout`).
    pub fields: Vec<FieldChange>,
}

/// One value that differs.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct FieldChange {
    /// Dotted path with array indices (`split[1].weight`); map keys that are not plain words are
    /// quoted (`request_headers.set["x.y"]`).
    pub path: String,
    /// The old value; `null` when absent. A whole table when the other side is absent.
    pub from: Value,
    /// The new value; `null` when absent.
    pub to: Value,
}

/// A route whose position relative to the other surviving routes changed.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct Moved {
    pub name: String,
    /// Index in the old config's `routes`.
    pub from_index: usize,
    /// Index in the new config's `routes`.
    pub to_index: usize,
}

/// Endpoint changes of one cluster, by address. Order does not count, and an endpoint written as
/// `"host:port"` equals `{ address = "host:port", weight = 1 }`: only the normalised
/// (address, weight, priority, zone) is compared.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct EndpointChange {
    pub cluster: String,
    /// Addresses only in the new config.
    pub added: Vec<String>,
    /// Addresses only in the old config.
    pub removed: Vec<String>,
    /// Same address, other `weight`, `priority` or `zone` (`name` is the address).
    pub changed: Vec<ItemChange>,
}

impl ConfigDiff {
    /// True when the two configs are the same (as far as the canonical form can tell).
    pub fn is_empty(&self) -> bool {
        self.routes.is_empty()
            && self.clusters.is_empty()
            && self.endpoints.is_empty()
            && self.listeners.is_empty()
            && self.other.is_empty()
    }

    /// One line for logs: `routes +1 -0 ~2, clusters +0 -1 ~1, endpoints +3 -1 ~0, listeners +0
    /// -0 ~0, other 2`; routes get ` moved N` when some moved. Always the same shape, even when
    /// empty, so log lines can be grepped.
    pub fn summary(&self) -> String {
        let (mut ea, mut er, mut ec) = (0, 0, 0);
        for e in &self.endpoints {
            ea += e.added.len();
            er += e.removed.len();
            ec += e.changed.len();
        }
        let mut s = String::with_capacity(96);
        counts(&mut s, "routes", &self.routes);
        if !self.routes.moved.is_empty() {
            let _ = write!(s, " moved {}", self.routes.moved.len());
        }
        s.push_str(", ");
        counts(&mut s, "clusters", &self.clusters);
        let _ = write!(s, ", endpoints +{ea} -{er} ~{ec}, ");
        counts(&mut s, "listeners", &self.listeners);
        let _ = write!(s, ", other {}", self.other.len());
        s
    }
}

fn counts(s: &mut String, what: &str, c: &ItemChanges) {
    let _ = write!(
        s,
        "{what} +{} -{} ~{}",
        c.added.len(),
        c.removed.len(),
        c.changed.len()
    );
}

/// What changed from `from` to `to`.
pub fn diff(from: &Config, to: &Config) -> ConfigDiff {
    // Everything below sees only redacted configs, so no code path can leak a secret.
    let (a, b) = (from.redacted(), to.redacted());

    let (ra, rb) = (route_keys(&a), route_keys(&b));
    let mut routes = diff_items(
        &ra.iter().copied().zip(&a.routes).collect::<Vec<_>>(),
        &rb.iter().copied().zip(&b.routes).collect::<Vec<_>>(),
        &["name"],
    );
    routes.moved = moved(&ra, &rb);
    // Credential header values redact to the same text on both sides: a rotated one must still
    // show as a change (without its value).
    let old_raw: std::collections::HashMap<&str, &crate::config::RouteConfig> =
        from.routes.iter().map(|r| (r.name.as_str(), r)).collect();
    let old_redacted: std::collections::HashMap<&str, &crate::config::RouteConfig> =
        a.routes.iter().map(|r| (r.name.as_str(), r)).collect();
    for (raw, red) in to.routes.iter().zip(&b.routes) {
        let name = raw.name.as_str();
        if let (Some(old), Some(old_red)) = (old_raw.get(name), old_redacted.get(name))
            && *old != raw
            && *old_red == red
            && !routes.changed.iter().any(|c| c.name == name)
        {
            routes.changed.push(ItemChange {
                name: name.to_owned(),
                fields: vec![FieldChange {
                    path: "credential header values".to_owned(),
                    from: Value::from("<redacted>"),
                    to: Value::from("<redacted>"),
                }],
            });
        }
    }

    let clusters = diff_items(
        &map_items(&a.clusters),
        &map_items(&b.clusters),
        &["endpoints"],
    );
    let listeners = diff_items(&map_items(&a.listeners), &map_items(&b.listeners), &[]);

    let endpoints = b
        .clusters
        .iter()
        .filter_map(|(name, new)| {
            let old = a.clusters.get(name)?;
            diff_endpoints(name, old, new)
        })
        .collect();

    let mut other = Vec::new();
    let (va, vb) = (to_value(&a), to_value(&b));
    let empty = Map::new();
    let (oa, ob) = (
        va.as_object().unwrap_or(&empty),
        vb.as_object().unwrap_or(&empty),
    );
    let mut path = String::new();
    for key in union_keys(oa, ob) {
        if matches!(key, "routes" | "clusters" | "listeners") {
            continue;
        }
        path.clear();
        push_key(&mut path, key);
        walk(
            &mut path,
            oa.get(key).unwrap_or(&Value::Null),
            ob.get(key).unwrap_or(&Value::Null),
            &mut other,
        );
        // Two different tokens redact to the same text; the change must still show.
        if key == "admin"
            && from.admin.auth_token != to.admin.auth_token
            && a.admin.auth_token == b.admin.auth_token
        {
            let redacted = Value::from(a.admin.auth_token.as_deref().unwrap_or_default());
            other.push(FieldChange {
                path: "admin.auth_token".to_owned(),
                from: redacted.clone(),
                to: redacted,
            });
        }
    }

    ConfigDiff {
        routes,
        clusters,
        endpoints,
        listeners,
        other,
    }
}

fn to_value<T: Serialize>(t: &T) -> Value {
    // The model only has string-keyed maps, so this cannot fail; `null` would hide, not invent.
    serde_json::to_value(t).unwrap_or(Value::Null)
}

fn map_items<T>(m: &BTreeMap<String, T>) -> Vec<((&str, usize), &T)> {
    m.iter().map(|(k, v)| ((k.as_str(), 0), v)).collect()
}

/// Keys each name by its occurrence count, so duplicate names (which validation refuses, but a
/// diff of a refused config must still not panic or drop anything) pair up first with first.
fn occurrences<'a>(names: impl Iterator<Item = &'a str>) -> Vec<(&'a str, usize)> {
    let mut seen: BTreeMap<&str, usize> = BTreeMap::new();
    names
        .map(|n| {
            let k = seen.entry(n).or_insert(0);
            let key = (n, *k);
            *k += 1;
            key
        })
        .collect()
}

type Key<'a> = (&'a str, usize);

fn diff_items<T: Serialize + PartialEq>(
    from: &[(Key<'_>, &T)],
    to: &[(Key<'_>, &T)],
    skip: &[&str],
) -> ItemChanges {
    let old: BTreeMap<Key<'_>, &T> = from.iter().copied().collect();
    let new: BTreeMap<Key<'_>, &T> = to.iter().copied().collect();
    let mut out = ItemChanges::default();
    for (key, _) in from {
        if !new.contains_key(key) {
            out.removed.push(key.0.to_owned());
        }
    }
    for (key, item) in to {
        let Some(prev) = old.get(key) else {
            out.added.push(key.0.to_owned());
            continue;
        };
        if *prev == *item {
            continue;
        }
        let (mut va, mut vb) = (to_value(prev), to_value(item));
        for k in skip {
            if let Some(o) = va.as_object_mut() {
                o.remove(*k);
            }
            if let Some(o) = vb.as_object_mut() {
                o.remove(*k);
            }
        }
        let mut fields = Vec::new();
        walk(&mut String::new(), &va, &vb, &mut fields);
        if !fields.is_empty() {
            out.changed.push(ItemChange {
                name: key.0.to_owned(),
                fields,
            });
        }
    }
    out
}

/// Routes in both configs that are not on a longest common subsequence of the two orders: the
/// fewest routes whose moving explains the new order.
fn moved(from: &[Key<'_>], to: &[Key<'_>]) -> Vec<Moved> {
    let old_index: BTreeMap<Key<'_>, usize> =
        from.iter().enumerate().map(|(i, k)| (*k, i)).collect();
    // (new index, old index) of the routes in both, in the new order.
    let common: Vec<(usize, usize)> = to
        .iter()
        .enumerate()
        .filter_map(|(j, k)| old_index.get(k).map(|&i| (j, i)))
        .collect();
    // Longest increasing run of old indices (patience sorting), so O(n log n) even for big tables.
    let mut tails: Vec<usize> = Vec::new(); // positions in `common`
    let mut prev: Vec<Option<usize>> = vec![None; common.len()];
    for (p, &(_, i)) in common.iter().enumerate() {
        let at = tails.partition_point(|&t| common.get(t).is_some_and(|c| c.1 < i));
        if let Some(slot) = prev.get_mut(p) {
            *slot = at.checked_sub(1).and_then(|a| tails.get(a).copied());
        }
        if let Some(slot) = tails.get_mut(at) {
            *slot = p;
        } else {
            tails.push(p);
        }
    }
    let mut keep = vec![false; common.len()];
    let mut cur = tails.last().copied();
    while let Some(p) = cur {
        if let Some(k) = keep.get_mut(p) {
            *k = true;
        }
        cur = prev.get(p).copied().flatten();
    }
    common
        .iter()
        .zip(keep)
        .filter(|(_, kept)| !kept)
        .filter_map(|(&(j, i), _)| {
            to.get(j).map(|k| Moved {
                name: k.0.to_owned(),
                from_index: i,
                to_index: j,
            })
        })
        .collect()
}

fn route_keys(c: &Config) -> Vec<Key<'_>> {
    occurrences(c.routes.iter().map(|r| r.name.as_str()))
}

fn endpoint_keys(c: &ClusterConfig) -> Vec<(Key<'_>, &EndpointConfig)> {
    occurrences(c.endpoints.iter().map(EndpointConfig::address))
        .into_iter()
        .zip(&c.endpoints)
        .collect()
}

fn diff_endpoints(name: &str, old: &ClusterConfig, new: &ClusterConfig) -> Option<EndpointChange> {
    let (ka, kb) = (endpoint_keys(old), endpoint_keys(new));
    let before: BTreeMap<Key<'_>, &EndpointConfig> = ka.iter().copied().collect();
    let after: BTreeMap<Key<'_>, &EndpointConfig> = kb.iter().copied().collect();
    let mut out = EndpointChange {
        cluster: name.to_owned(),
        ..EndpointChange::default()
    };
    for (key, _) in &ka {
        if !after.contains_key(key) {
            out.removed.push(key.0.to_owned());
        }
    }
    for (key, e) in &kb {
        let Some(p) = before.get(key) else {
            out.added.push(key.0.to_owned());
            continue;
        };
        let mut fields = Vec::new();
        if p.weight() != e.weight() {
            fields.push(change("weight", p.weight().into(), e.weight().into()));
        }
        if p.priority() != e.priority() {
            fields.push(change("priority", p.priority().into(), e.priority().into()));
        }
        if p.zone() != e.zone() {
            fields.push(change("zone", p.zone().into(), e.zone().into()));
        }
        if !fields.is_empty() {
            out.changed.push(ItemChange {
                name: key.0.to_owned(),
                fields,
            });
        }
    }
    let empty = out.added.is_empty() && out.removed.is_empty() && out.changed.is_empty();
    (!empty).then_some(out)
}

fn change(path: &str, from: Value, to: Value) -> FieldChange {
    FieldChange {
        path: path.to_owned(),
        from,
        to,
    }
}

/// Keys of both objects, each once, `a`'s first.
fn union_keys<'a>(a: &'a Map<String, Value>, b: &'a Map<String, Value>) -> Vec<&'a str> {
    let mut keys: Vec<&str> = a.keys().map(String::as_str).collect();
    keys.extend(b.keys().map(String::as_str).filter(|k| !a.contains_key(*k)));
    keys
}

/// Appends the leaf-level differences under `path`. Objects recurse by key and arrays by index
/// when both sides have that shape; anything else (a scalar, or a table that appeared or
/// disappeared) is one change holding the whole values, which reads better than one line per leaf.
fn walk(path: &mut String, a: &Value, b: &Value, out: &mut Vec<FieldChange>) {
    if a == b {
        return;
    }
    let len = path.len();
    match (a, b) {
        (Value::Object(oa), Value::Object(ob)) => {
            for key in union_keys(oa, ob) {
                push_key(path, key);
                walk(
                    path,
                    oa.get(key).unwrap_or(&Value::Null),
                    ob.get(key).unwrap_or(&Value::Null),
                    out,
                );
                path.truncate(len);
            }
        }
        (Value::Array(xa), Value::Array(xb)) => {
            for i in 0..xa.len().max(xb.len()) {
                let _ = write!(path, "[{i}]");
                walk(
                    path,
                    xa.get(i).unwrap_or(&Value::Null),
                    xb.get(i).unwrap_or(&Value::Null),
                    out,
                );
                path.truncate(len);
            }
        }
        _ => out.push(FieldChange {
            path: path.clone(),
            from: a.clone(),
            to: b.clone(),
        }),
    }
}

fn push_key(path: &mut String, key: &str) {
    let plain = !key.is_empty()
        && key
            .bytes()
            .all(|c| c.is_ascii_alphanumeric() || c == b'_' || c == b'-');
    if plain {
        if !path.is_empty() {
            path.push('.');
        }
        path.push_str(key);
    } else {
        path.push('[');
        path.push_str(&Value::from(key).to_string());
        path.push(']');
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use serde_json::json;

    fn cfg(text: &str) -> Config {
        crate::config::parse(text, ".".into()).unwrap().config
    }

    const BASE: &str = r#"
[listeners.web]
listen = "127.0.0.1:8080"

[clusters.api]
endpoints = ["10.0.0.1:80", "10.0.0.2:80"]

[clusters.static]
endpoints = ["10.0.1.1:80"]

[[routes]]
name = "api"
cluster = "api"
match.path_prefix = "/api"

[[routes]]
name = "static"
cluster = "static"
match.path_prefix = "/"
"#;

    fn field<'a>(c: &'a ItemChange, path: &str) -> &'a FieldChange {
        c.fields
            .iter()
            .find(|f| f.path == path)
            .unwrap_or_else(|| panic!("no {path} in {c:?}"))
    }

    #[test]
    fn identical_configs_are_empty() {
        let d = diff(&cfg(BASE), &cfg(BASE));
        assert!(d.is_empty(), "{d:?}");
        assert_eq!(d, ConfigDiff::default());
        assert_eq!(
            d.summary(),
            "routes +0 -0 ~0, clusters +0 -0 ~0, endpoints +0 -0 ~0, listeners +0 -0 ~0, other 0"
        );
    }

    #[test]
    fn formatting_and_key_order_are_not_changes() {
        let other = r#"
[[routes]]
name = "api"
match = { path_prefix = "/api" }
cluster = "api"
timeout = "15s"

[[routes]]
name = "static"
cluster = "static"
match.path_prefix = "/"

[clusters.static]
endpoints = ["10.0.1.1:80"]
[clusters.api]
endpoints = ["10.0.0.1:80", "10.0.0.2:80"]
[listeners.web]
listen = "127.0.0.1:8080"
"#;
        assert!(diff(&cfg(BASE), &cfg(other)).is_empty());
    }

    #[test]
    fn added_removed_and_changed_routes() {
        let to = r#"
[[routes]]
name = "api"
cluster = "api"
match.path_prefix = "/v2"
timeout = "5s"

[[routes]]
name = "admin"
cluster = "api"
match.path = "/admin"
"#;
        let d = diff(&cfg(BASE), &cfg(to));
        assert_eq!(d.routes.added, ["admin"]);
        assert_eq!(d.routes.removed, ["static"]);
        assert_eq!(d.routes.changed.len(), 1);
        let c = &d.routes.changed[0];
        assert_eq!(c.name, "api");
        assert_eq!(c.fields.len(), 2, "{c:?}");
        let p = field(c, "match.path_prefix");
        assert_eq!((&p.from, &p.to), (&json!("/api"), &json!("/v2")));
        let t = field(c, "timeout");
        assert_eq!((&t.from, &t.to), (&json!("15s"), &json!("5s")));
        assert!(d.routes.moved.is_empty(), "{:?}", d.routes.moved);
    }

    #[test]
    fn a_field_that_appears_is_one_change_from_null() {
        let to = BASE.replace(
            "match.path_prefix = \"/api\"",
            "match.path_prefix = \"/api\"\nhedge = { delay = \"50ms\" }",
        );
        let d = diff(&cfg(BASE), &cfg(&to));
        let c = &d.routes.changed[0];
        assert_eq!(c.fields.len(), 1, "{c:?}");
        assert_eq!(c.fields[0].path, "hedge");
        assert_eq!(c.fields[0].from, Value::Null);
        assert_eq!(c.fields[0].to["delay"], json!("50ms"));
    }

    #[test]
    fn array_elements_are_compared_by_index() {
        let from = "[[routes]]\nname = \"r\"\nsplit = [{ cluster = \"a\", weight = 90 }, { cluster = \"b\", weight = 10 }]\n";
        let to = "[[routes]]\nname = \"r\"\nsplit = [{ cluster = \"a\", weight = 50 }, { cluster = \"b\", weight = 50 }, { cluster = \"c\", weight = 1 }]\n";
        let d = diff(&cfg(from), &cfg(to));
        let paths: Vec<&str> = d.routes.changed[0]
            .fields
            .iter()
            .map(|f| f.path.as_str())
            .collect();
        assert_eq!(paths, ["split[0].weight", "split[1].weight", "split[2]"]);
    }

    #[test]
    fn odd_map_keys_are_quoted_in_paths() {
        let from = "[[routes]]\nname = \"r\"\n";
        let to = "[[routes]]\nname = \"r\"\nrequest_headers.set = { \"x.y\" = \"1\" }\n[routes.response_headers.set]\nx-z = \"2\"\n";
        let d = diff(&cfg(from), &cfg(to));
        let paths: Vec<&str> = d.routes.changed[0]
            .fields
            .iter()
            .map(|f| f.path.as_str())
            .collect();
        assert_eq!(paths, ["request_headers.set", "response_headers.set"]);
        let from = "[[routes]]\nname = \"r\"\nrequest_headers.set = { a = \"0\" }\n";
        let to = "[[routes]]\nname = \"r\"\nrequest_headers.set = { a = \"0\", \"x.y\" = \"1\" }\n";
        let d = diff(&cfg(from), &cfg(to));
        assert_eq!(
            d.routes.changed[0].fields[0].path,
            r#"request_headers.set["x.y"]"#
        );
    }

    #[test]
    fn a_swapped_route_is_one_move() {
        let to = r#"
[[routes]]
name = "static"
cluster = "static"
match.path_prefix = "/"

[[routes]]
name = "api"
cluster = "api"
match.path_prefix = "/api"
"#;
        let d = diff(&cfg(BASE), &cfg(to));
        assert!(d.routes.added.is_empty() && d.routes.removed.is_empty());
        assert!(d.routes.changed.is_empty());
        assert_eq!(
            d.routes.moved,
            [Moved {
                name: "static".into(),
                from_index: 1,
                to_index: 0
            }]
        );
        assert!(!d.is_empty());
        assert!(d.summary().starts_with("routes +0 -0 ~0 moved 1, "));
    }

    #[test]
    fn moving_the_last_route_to_the_front_is_one_move_not_many() {
        let r = |n: &str| format!("[[routes]]\nname = \"{n}\"\n");
        let from: String = ["a", "b", "c", "d"].iter().map(|n| r(n)).collect();
        let to: String = ["d", "a", "b", "c"].iter().map(|n| r(n)).collect();
        let d = diff(&cfg(&from), &cfg(&to));
        assert_eq!(
            d.routes.moved,
            [Moved {
                name: "d".into(),
                from_index: 3,
                to_index: 0
            }]
        );
    }

    #[test]
    fn inserting_a_route_at_the_front_moves_nothing() {
        let to = format!("[[routes]]\nname = \"first\"\ncluster = \"api\"\n{BASE}");
        let d = diff(&cfg(BASE), &cfg(&to));
        assert_eq!(d.routes.added, ["first"]);
        assert!(d.routes.moved.is_empty(), "{:?}", d.routes.moved);
        assert!(d.routes.changed.is_empty());
        // `moved` is left out of the JSON when empty.
        let json = serde_json::to_value(&d).unwrap();
        assert!(json["routes"].get("moved").is_none(), "{json}");
        assert!(json["clusters"].get("moved").is_none());
    }

    #[test]
    fn added_removed_and_changed_clusters_exclude_endpoints() {
        let to = r#"
[clusters.api]
endpoints = ["10.0.0.9:80"]
balance = "round_robin"
connect_timeout = "2s"

[clusters.new]
endpoints = ["10.0.2.1:80"]
"#;
        let d = diff(&cfg(BASE), &cfg(to));
        assert_eq!(d.clusters.added, ["new"]);
        assert_eq!(d.clusters.removed, ["static"]);
        assert_eq!(d.clusters.changed.len(), 1);
        let c = &d.clusters.changed[0];
        assert_eq!(c.name, "api");
        let paths: Vec<&str> = c.fields.iter().map(|f| f.path.as_str()).collect();
        assert_eq!(paths.len(), 2, "{paths:?}");
        assert!(paths.contains(&"balance") && paths.contains(&"connect_timeout"));
        assert_eq!(field(c, "balance").from, json!("peak_ewma"));
        // Endpoints are reported once, by address, and only for clusters in both configs.
        assert_eq!(d.endpoints.len(), 1);
        assert_eq!(d.endpoints[0].cluster, "api");
        assert_eq!(d.endpoints[0].added, ["10.0.0.9:80"]);
        assert_eq!(d.endpoints[0].removed, ["10.0.0.1:80", "10.0.0.2:80"]);
    }

    #[test]
    fn an_endpoint_only_change_does_not_mark_the_cluster_changed() {
        let to = BASE.replace("\"10.0.0.2:80\"", "\"10.0.0.3:80\"");
        let d = diff(&cfg(BASE), &cfg(&to));
        assert!(d.clusters.is_empty(), "{:?}", d.clusters);
        assert_eq!(d.endpoints[0].added, ["10.0.0.3:80"]);
        assert_eq!(d.endpoints[0].removed, ["10.0.0.2:80"]);
    }

    #[test]
    fn an_endpoint_inserted_at_the_front_is_exactly_one_added() {
        let to = BASE.replace(
            "[\"10.0.0.1:80\", \"10.0.0.2:80\"]",
            "[\"10.0.0.0:80\", \"10.0.0.1:80\", \"10.0.0.2:80\"]",
        );
        let d = diff(&cfg(BASE), &cfg(&to));
        assert_eq!(
            d.endpoints,
            [EndpointChange {
                cluster: "api".into(),
                added: vec!["10.0.0.0:80".into()],
                removed: vec![],
                changed: vec![],
            }]
        );
        assert!(d.clusters.is_empty());
        assert!(
            d.summary().contains("endpoints +1 -0 ~0"),
            "{}",
            d.summary()
        );
    }

    #[test]
    fn weight_priority_and_zone_changes_are_endpoint_changes() {
        let to = BASE.replace(
            "[\"10.0.0.1:80\", \"10.0.0.2:80\"]",
            "[\"10.0.0.1:80\", { address = \"10.0.0.2:80\", weight = 5, priority = 1, zone = \"b\" }]",
        );
        let d = diff(&cfg(BASE), &cfg(&to));
        assert_eq!(d.endpoints.len(), 1);
        let e = &d.endpoints[0];
        assert!(e.added.is_empty() && e.removed.is_empty());
        assert_eq!(e.changed.len(), 1);
        assert_eq!(e.changed[0].name, "10.0.0.2:80");
        assert_eq!(
            e.changed[0].fields,
            [
                change("weight", json!(1), json!(5)),
                change("priority", json!(0), json!(1)),
                change("zone", Value::Null, json!("b")),
            ]
        );
    }

    #[test]
    fn a_string_endpoint_equals_its_table_with_default_weight() {
        let to = BASE.replace(
            "\"10.0.0.2:80\"]",
            "{ address = \"10.0.0.2:80\", weight = 1 }]",
        );
        let d = diff(&cfg(BASE), &cfg(&to));
        assert!(d.is_empty(), "{d:?}");
        let reordered = BASE.replace(
            "[\"10.0.0.1:80\", \"10.0.0.2:80\"]",
            "[\"10.0.0.2:80\", \"10.0.0.1:80\"]",
        );
        assert!(diff(&cfg(BASE), &cfg(&reordered)).is_empty());
    }

    #[test]
    fn added_removed_and_changed_listeners() {
        let to = r#"
[listeners.web]
listen = "127.0.0.1:9090"
http2.enabled = false

[listeners.internal]
listen = "127.0.0.1:8081"
"#;
        let from = format!("{BASE}\n[listeners.old]\nlisten = \"127.0.0.1:7000\"\n");
        let d = diff(&cfg(&from), &cfg(to));
        assert_eq!(d.listeners.added, ["internal"]);
        assert_eq!(d.listeners.removed, ["old"]);
        assert_eq!(d.listeners.changed.len(), 1);
        let c = &d.listeners.changed[0];
        assert_eq!(c.name, "web");
        assert_eq!(
            c.fields,
            [
                change("http2.enabled", json!(true), json!(false)),
                change("listen", json!("127.0.0.1:8080"), json!("127.0.0.1:9090")),
            ]
        );
        assert!(d.listeners.moved.is_empty());
    }

    #[test]
    fn other_sections_are_leaf_level_with_full_paths() {
        let to = format!(
            "{BASE}\n[log]\nlevel = \"debug\"\n[reload.auto_rollback]\nbake_time = \"2m\"\n"
        );
        let d = diff(&cfg(BASE), &cfg(&to));
        assert!(d.routes.is_empty() && d.clusters.is_empty() && d.listeners.is_empty());
        assert_eq!(d.other.len(), 2, "{:?}", d.other);
        assert!(
            d.other
                .contains(&change("log.level", json!("info"), json!("debug")))
        );
        assert!(d.other.contains(&change(
            "reload.auto_rollback.bake_time",
            json!("1m"),
            json!("2m")
        )));
    }

    #[test]
    fn a_rotated_credential_header_shows_as_a_change_without_its_value() {
        let with = |k: &str| {
            cfg(&BASE.replace(
                "name = \"api\"\ncluster = \"api\"",
                &format!("name = \"api\"\ncluster = \"api\"\nrequest_headers = {{ set = {{ authorization = \"Bearer {k}\" }} }}"),
            ))
        };
        let d = diff(&with("old-k3y"), &with("new-k3y"));
        assert_eq!(d.routes.changed.len(), 1, "{d:?}");
        assert_eq!(d.routes.changed[0].name, "api");
        let dump = serde_json::to_string(&d).unwrap();
        assert!(!dump.contains("k3y"), "{dump}");
        assert!(diff(&with("same"), &with("same")).is_empty());
    }

    #[test]
    fn a_changed_token_shows_redacted_and_never_leaks() {
        let with = |t: &str| cfg(&format!("[admin]\nauth_token = \"{t}\"\n{BASE}"));
        let d = diff(&with("hunter2-old"), &with("hunter2-new"));
        assert_eq!(
            d.other,
            [change(
                "admin.auth_token",
                json!("<redacted>"),
                json!("<redacted>")
            )]
        );
        let text = serde_json::to_string(&d).unwrap();
        assert!(!text.contains("hunter2"), "{text}");
        assert!(format!("{d:?}").find("hunter2").is_none());
        assert!(diff(&with("same"), &with("same")).is_empty());

        // Set or unset: also a change, also redacted.
        let d = diff(&cfg(BASE), &with("hunter2-new"));
        assert_eq!(
            d.other,
            [change("admin.auth_token", Value::Null, json!("<redacted>"))]
        );
        assert!(!serde_json::to_string(&d).unwrap().contains("hunter2"));
        let d = diff(&with("hunter2-old"), &cfg(BASE));
        assert_eq!(
            d.other,
            [change("admin.auth_token", json!("<redacted>"), Value::Null)]
        );
    }

    #[test]
    fn duplicate_names_pair_up_in_order() {
        let from = "[[routes]]\nname = \"x\"\ncluster = \"a\"\n[[routes]]\nname = \"x\"\ncluster = \"b\"\n";
        let to = "[[routes]]\nname = \"x\"\ncluster = \"a\"\n[[routes]]\nname = \"x\"\ncluster = \"c\"\n[[routes]]\nname = \"x\"\n";
        let d = diff(&cfg(from), &cfg(to));
        assert_eq!(d.routes.added, ["x"]);
        assert_eq!(d.routes.changed.len(), 1);
        assert_eq!(d.routes.changed[0].fields[0].to, json!("c"));
        assert!(d.routes.moved.is_empty());
    }

    #[test]
    fn summary_counts_every_section() {
        let to = r#"
[log]
level = "warn"
format = "json"

[listeners.web]
listen = "127.0.0.1:8080"
max_connections = 5

[clusters.api]
endpoints = ["10.0.0.1:80", { address = "10.0.0.2:80", weight = 3 }, "10.0.0.3:80", "10.0.0.4:80"]
balance = "random"

[clusters.extra]
endpoints = ["10.9.9.9:80"]

[[routes]]
name = "static"
cluster = "static"
match.path_prefix = "/"

[[routes]]
name = "api"
cluster = "api"
match.path_prefix = "/api2"

[[routes]]
name = "new"
cluster = "api"
"#;
        let d = diff(&cfg(BASE), &cfg(to));
        assert_eq!(
            d.summary(),
            "routes +1 -0 ~1 moved 1, clusters +1 -1 ~1, endpoints +2 -0 ~1, listeners +0 -0 ~1, other 2"
        );
    }

    fn toml_of(routes: &[String], clusters: &[(String, Vec<String>)]) -> String {
        let mut s = String::new();
        for (name, eps) in clusters {
            let eps: Vec<String> = eps.iter().map(|e| format!("\"{e}\"")).collect();
            s += &format!("[clusters.{name}]\nendpoints = [{}]\n", eps.join(", "));
        }
        for (i, r) in routes.iter().enumerate() {
            let c = clusters
                .get(i % clusters.len().max(1))
                .map(|c| c.0.as_str());
            s += &format!("[[routes]]\nname = \"{r}\"\nmatch.path_prefix = \"/{r}\"\n");
            if let Some(c) = c {
                s += &format!("cluster = \"{c}\"\n");
            }
        }
        s
    }

    fn names() -> impl Strategy<Value = Vec<String>> {
        prop::collection::btree_set("[a-z]{1,6}", 0..8).prop_map(|s| s.into_iter().collect())
    }

    /// Endpoint addresses are 10.0.0.0-255, so 10.0.1.x is never generated.
    fn clusters() -> impl Strategy<Value = Vec<(String, Vec<String>)>> {
        let addrs = prop::collection::btree_set(any::<u8>(), 1..6)
            .prop_map(|s| s.into_iter().map(|e| format!("10.0.0.{e}:80")).collect());
        prop::collection::btree_map("[a-z]{1,6}", addrs, 0..5).prop_map(|m| m.into_iter().collect())
    }

    proptest! {
        #[test]
        fn a_config_has_no_diff_with_itself(routes in names(), clusters in clusters()) {
            let a = cfg(&toml_of(&routes, &clusters));
            let d = diff(&a, &a);
            prop_assert!(d.is_empty(), "{:?}", d);
            prop_assert!(diff(&a, &a.clone()).is_empty());
        }

        #[test]
        fn shuffling_routes_only_moves_them(routes in names(), seed in any::<u64>()) {
            let mut shuffled = routes.clone();
            fastrand::Rng::with_seed(seed).shuffle(&mut shuffled);
            let d = diff(&cfg(&toml_of(&routes, &[])), &cfg(&toml_of(&shuffled, &[])));
            prop_assert!(d.routes.added.is_empty() && d.routes.removed.is_empty());
            prop_assert!(d.routes.changed.is_empty());
            prop_assert_eq!(d.routes.moved.is_empty(), routes == shuffled);
            prop_assert!(d.routes.moved.len() < routes.len().max(1));
            for m in &d.routes.moved {
                prop_assert_eq!(&routes[m.from_index], &m.name);
                prop_assert_eq!(&shuffled[m.to_index], &m.name);
            }
            // Putting the moved routes back where the others say they go restores the old order:
            // the unmoved ones are in the old relative order.
            let kept: Vec<&String> = shuffled.iter().filter(|n| !d.routes.moved.iter().any(|m| &m.name == *n)).collect();
            let kept_old: Vec<&String> = routes.iter().filter(|n| kept.contains(n)).collect();
            prop_assert_eq!(kept, kept_old);
        }

        #[test]
        fn inserting_an_endpoint_anywhere_is_one_added(
            clusters in clusters().prop_filter("need a cluster", |c| !c.is_empty()),
            at in any::<prop::sample::Index>(),
        ) {
            let mut to = clusters.clone();
            let pos = at.index(to[0].1.len() + 1);
            to[0].1.insert(pos, "10.0.1.1:80".to_owned());
            let (from, text) = (cfg(&toml_of(&[], &clusters)), toml_of(&[], &to));
            let d = diff(&from, &cfg(&text));
            prop_assert_eq!(d.endpoints.len(), 1);
            prop_assert_eq!(&d.endpoints[0].added, &vec!["10.0.1.1:80".to_owned()]);
            prop_assert!(d.endpoints[0].removed.is_empty() && d.endpoints[0].changed.is_empty());
            prop_assert!(d.clusters.is_empty());
        }
    }
}
