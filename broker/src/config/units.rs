//! Human-readable sizes ("64MiB") and durations ("5s") for the config file.

use serde::{de, Deserialize, Deserializer, Serialize, Serializer};
use std::fmt;
use std::str::FromStr;
use std::time::Duration;

/// A size in bytes, written as `512`, `64KiB`, `16MiB`, `1GiB` (or kB/MB/GB, powers of 1000).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct ByteSize(pub u64);

impl ByteSize {
    pub const fn kib(n: u64) -> ByteSize {
        ByteSize(n * 1024)
    }
    pub const fn mib(n: u64) -> ByteSize {
        ByteSize(n * 1024 * 1024)
    }
    pub fn is_zero(&self) -> bool {
        self.0 == 0
    }
    pub fn as_usize(self) -> usize {
        usize::try_from(self.0).unwrap_or(usize::MAX)
    }
}

impl FromStr for ByteSize {
    type Err = String;
    fn from_str(s: &str) -> Result<ByteSize, String> {
        let s = s.trim();
        let split = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
        let (num, unit) = s.split_at(split);
        let n: u64 = num.parse().map_err(|_| format!("{s:?} is not a size (try \"64MiB\")"))?;
        let mult: u64 = match unit.trim() {
            "" | "B" => 1,
            "KiB" => 1 << 10,
            "MiB" => 1 << 20,
            "GiB" => 1 << 30,
            "kB" | "KB" => 1_000,
            "MB" => 1_000_000,
            "GB" => 1_000_000_000,
            other => return Err(format!("unknown size unit {other:?} (use B, KiB, MiB, GiB, kB, MB, GB)")),
        };
        n.checked_mul(mult).map(ByteSize).ok_or_else(|| format!("{s:?} is too large"))
    }
}

impl fmt::Display for ByteSize {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let n = self.0;
        for (unit, m) in [("GiB", 1u64 << 30), ("MiB", 1 << 20), ("KiB", 1 << 10)] {
            if n >= m && n.is_multiple_of(m) {
                return write!(f, "{}{unit}", n / m);
            }
        }
        write!(f, "{n}B")
    }
}

impl Serialize for ByteSize {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for ByteSize {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<ByteSize, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Raw {
            Int(u64),
            Str(String),
        }
        match Raw::deserialize(d)? {
            Raw::Int(n) => Ok(ByteSize(n)),
            Raw::Str(s) => s.parse().map_err(de::Error::custom),
        }
    }
}

/// A duration written as `250ms`, `5s`, `1m 30s`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct HumanDuration(pub Duration);

impl HumanDuration {
    pub const fn secs(n: u64) -> HumanDuration {
        HumanDuration(Duration::from_secs(n))
    }
    pub const fn millis(n: u64) -> HumanDuration {
        HumanDuration(Duration::from_millis(n))
    }
    pub fn get(self) -> Duration {
        self.0
    }
}

impl fmt::Display for HumanDuration {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.0.is_zero() {
            return f.write_str("0s");
        }
        write!(f, "{}", humantime::format_duration(self.0))
    }
}

impl Serialize for HumanDuration {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for HumanDuration {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<HumanDuration, D::Error> {
        let s = String::deserialize(d)?;
        humantime::parse_duration(s.trim())
            .map(HumanDuration)
            .map_err(|e| de::Error::custom(format!("{s:?} is not a duration ({e}); try \"5s\" or \"250ms\"")))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rstest::rstest;

    #[rstest]
    #[case("512", 512)]
    #[case("64KiB", 65536)]
    #[case("16MiB", 16 << 20)]
    #[case("1GiB", 1 << 30)]
    #[case("2MB", 2_000_000)]
    fn given_size_text_should_parse(#[case] text: &str, #[case] bytes: u64) {
        assert_eq!(text.parse::<ByteSize>(), Ok(ByteSize(bytes)));
    }

    #[rstest]
    #[case("MiB")]
    #[case("12XB")]
    #[case("-1")]
    fn given_bad_size_should_fail(#[case] text: &str) {
        assert!(text.parse::<ByteSize>().is_err());
    }

    #[test]
    fn given_size_when_displayed_should_round_trip() {
        for n in [0, 1, 1024, 3 << 20, 5 << 30, 1000] {
            let s = ByteSize(n).to_string();
            assert_eq!(s.parse::<ByteSize>(), Ok(ByteSize(n)), "{s}");
        }
    }
}
