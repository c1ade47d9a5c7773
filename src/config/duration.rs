//! `Dur`: a duration written the way operators write them (`"250ms"`, `"10s"`, `"1m30s"`).
//!
//! It owns parsing and printing only; which durations are sensible is `validate.rs`'s business.

use std::{fmt, str::FromStr, time::Duration};

use serde::{Deserialize, Deserializer, Serialize, Serializer, de};

/// A `std::time::Duration` that (de)serializes as a human string (humantime's grammar).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Dur(pub Duration);

impl Dur {
    pub const fn secs(s: u64) -> Self {
        Self(Duration::from_secs(s))
    }
    pub const fn millis(ms: u64) -> Self {
        Self(Duration::from_millis(ms))
    }
    pub const fn get(self) -> Duration {
        self.0
    }
    pub const fn is_zero(self) -> bool {
        self.0.is_zero()
    }
}

impl FromStr for Dur {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        humantime::parse_duration(s.trim()).map(Dur).map_err(|e| {
            format!("invalid duration {s:?} ({e}); write e.g. \"250ms\", \"10s\", \"1m\"")
        })
    }
}

impl fmt::Display for Dur {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", humantime::format_duration(self.0))
    }
}

impl Serialize for Dur {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for Dur {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl de::Visitor<'_> for V {
            type Value = Dur;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a duration string such as \"250ms\" or \"10s\"")
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<Dur, E> {
                v.parse().map_err(E::custom)
            }
        }
        d.deserialize_str(V)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_and_prints_operator_durations() {
        assert_eq!("250ms".parse::<Dur>(), Ok(Dur::millis(250)));
        assert_eq!("1m30s".parse::<Dur>(), Ok(Dur::secs(90)));
        assert_eq!(Dur::millis(1500).to_string(), "1s 500ms");
        assert!("ten seconds".parse::<Dur>().is_err());
        assert!(
            "10".parse::<Dur>().is_err(),
            "a bare number has no unit and must be refused"
        );
    }
}
