//! `addressSettings`: per-destination behaviour by pattern, as Artemis' `address-settings`
//! and ActiveMQ's destination policies.
//!
//! Each entry names destinations with the `auth.permissions` wildcards (`/queue/orders.>`,
//! `/topic/prices.*`, `>`; see [`crate::security::pattern`]) and sets some fields. For one
//! destination every matching entry counts, field by field: the most specific entry that
//! sets a field decides it (as Artemis merges its address settings), and what no entry sets
//! keeps its default. A destination's settings are resolved once, when its queue is made.
//!
//! ```yaml
//! addressSettings:
//!   - match: ">"
//!     maxDeliveryAttempts: 6
//!   - match: /queue/orders.>
//!     redeliveryDelay: 1s
//!     redeliveryMultiplier: 2
//!     maxRedeliveryDelay: 30s
//!     deadLetterAddress: /queue/orders.DLQ
//!     expiryAddress: /queue/orders.expired
//!     maxSizeBytes: 16MiB
//!     addressFullPolicy: fail
//! ```

use super::{ByteSize, HumanDuration};
use crate::security::pattern::{Pattern, PatternError};
use serde::{Deserialize, Serialize};
use std::sync::Arc;
use std::time::Duration;
use thiserror::Error;

/// The prefix of a queue's default dead-letter queue: messages of `/queue/orders` that
/// exhaust their delivery attempts go to `/queue/DLQ.orders` (Artemis' and ActiveMQ's
/// individual dead-letter strategy).
pub const DEAD_LETTER_PREFIX: &str = "DLQ.";

/// One entry of `addressSettings`. Unset fields fall through to less specific entries,
/// then to the defaults ([`AddressSettings::default`]).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct AddressSettingsEntry {
    /// The destinations this entry is for: `/queue/orders.>`, `/topic/prices.*`, `>`.
    #[serde(rename = "match")]
    pub pattern: String,
    /// Deliveries of one message before it is dead-lettered (a NACK, or its consumer
    /// leaving with it unacknowledged, ends a delivery). 0: never dead-lettered.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_delivery_attempts: Option<u32>,
    /// How long a message that was not acknowledged waits before it is delivered again.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub redelivery_delay: Option<HumanDuration>,
    /// Each further redelivery waits this many times longer than the one before (≥ 1).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub redelivery_multiplier: Option<f64>,
    /// The longest a redelivery waits (default: ten times `redeliveryDelay`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_redelivery_delay: Option<HumanDuration>,
    /// Where dead letters go (a `/queue/…`). Default: `/queue/DLQ.<queue name>`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dead_letter_address: Option<String>,
    /// Where expired messages go (a `/queue/…`). Default: none, they are dropped.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expiry_address: Option<String>,
    /// Message bytes one queue holds in memory before `addressFullPolicy` applies
    /// (default: `memory.maxQueueBytes`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_size_bytes: Option<ByteSize>,
    /// What happens to a producer once the queue holds `maxSizeBytes`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub address_full_policy: Option<FullPolicy>,
}

/// What a queue does once it holds its `maxSizeBytes` (Artemis' `address-full-policy`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum FullPolicy {
    /// Persistent messages are still accepted: they stay in the journal only and are read
    /// back as consumers catch up, so memory stays bounded while the backlog grows on disk
    /// (up to `storage.maxDiskBytes`).
    Page,
    /// The producer waits for room, up to `memory.producerBlockTimeout`, then gets an ERROR.
    Block,
    /// The producer gets an ERROR at once.
    Fail,
}

/// Where a queue's dead letters go.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DeadLetter {
    /// `/queue/DLQ.<name>` of the queue the message left.
    Prefixed,
    /// One destination for all (`deadLetterAddress`).
    Address(Arc<str>),
}

/// The settings of one destination, every field decided.
#[derive(Debug, Clone, PartialEq)]
pub struct AddressSettings {
    /// 0: unlimited.
    pub max_delivery_attempts: u32,
    pub redelivery_delay: Duration,
    pub redelivery_multiplier: f64,
    pub max_redelivery_delay: Duration,
    pub dead_letter: DeadLetter,
    /// None: expired messages are dropped.
    pub expiry_address: Option<Arc<str>>,
    pub max_size_bytes: usize,
    pub full_policy: FullPolicy,
}

impl AddressSettings {
    /// The defaults, with `max_size_bytes` from `memory.maxQueueBytes`: 10 delivery
    /// attempts (Artemis' default), redelivered at once, dead letters to `DLQ.<queue>`,
    /// expired messages dropped, producers blocked at the size limit.
    pub fn defaults(max_queue_bytes: usize) -> AddressSettings {
        AddressSettings {
            max_delivery_attempts: 10,
            redelivery_delay: Duration::ZERO,
            redelivery_multiplier: 1.0,
            max_redelivery_delay: Duration::ZERO,
            dead_letter: DeadLetter::Prefixed,
            expiry_address: None,
            max_size_bytes: max_queue_bytes,
            full_policy: FullPolicy::Block,
        }
    }

    /// How long the `delivery`th redelivery (1 for the first) of a message waits:
    /// `redeliveryDelay × redeliveryMultiplier^(delivery-1)`, at most `maxRedeliveryDelay`.
    pub fn redelivery_delay_for(&self, delivery: u32) -> Duration {
        if self.redelivery_delay.is_zero() {
            return Duration::ZERO;
        }
        let exponent = delivery.saturating_sub(1).min(64) as i32;
        let secs = self.redelivery_delay.as_secs_f64() * self.redelivery_multiplier.powi(exponent);
        let cap = self.max_redelivery_delay.as_secs_f64();
        Duration::try_from_secs_f64(secs.min(cap)).unwrap_or(self.max_redelivery_delay)
    }

    /// The dead-letter destination of a message leaving `queue` (`/queue/NAME` or a topic
    /// subscription's `/topic/NAME`).
    pub fn dead_letter_destination(&self, queue: &str) -> String {
        match &self.dead_letter {
            DeadLetter::Address(a) => a.to_string(),
            DeadLetter::Prefixed => {
                let name = queue.strip_prefix("/queue/").or_else(|| queue.strip_prefix("/topic/")).unwrap_or(queue);
                format!("/queue/{DEAD_LETTER_PREFIX}{name}")
            }
        }
    }
}

/// Why `addressSettings` cannot be used; the caller names the entry.
#[derive(Debug, Error, Clone, PartialEq)]
pub enum AddressSettingsError {
    #[error("match {pattern:?} {source}")]
    Pattern { pattern: String, source: PatternError },
    #[error("{0} must be a /queue/… destination with a name")]
    NotAQueue(&'static str),
    #[error("redeliveryMultiplier must be at least 1 (it is {0})")]
    Multiplier(f64),
    #[error("maxRedeliveryDelay must not be shorter than redeliveryDelay")]
    MaxDelay,
    #[error("maxSizeBytes must be at least 64KiB")]
    TooSmall,
    #[error("addressFullPolicy: page needs the file journal (storage.store: file): the database store cannot page; use block or fail")]
    PagingNeedsJournal,
}

/// `addressSettings` parsed once: resolves a destination's [`AddressSettings`].
#[derive(Debug, Clone)]
pub struct AddressSettingsTable {
    /// Entries by ascending specificity (the last matching one that sets a field wins).
    entries: Vec<(Pattern, AddressSettingsEntry)>,
    max_queue_bytes: usize,
    /// What `addressFullPolicy` is where no entry sets it.
    default_policy: FullPolicy,
}

impl AddressSettingsTable {
    /// Checks and parses `entries`; the error names the entry by its index.
    pub fn new(entries: &[AddressSettingsEntry], max_queue_bytes: usize) -> Result<AddressSettingsTable, (usize, AddressSettingsError)> {
        let mut parsed = Vec::with_capacity(entries.len());
        for (i, e) in entries.iter().enumerate() {
            let pattern = Pattern::parse(&e.pattern)
                .map_err(|source| (i, AddressSettingsError::Pattern { pattern: e.pattern.clone(), source }))?;
            check_entry(e).map_err(|err| (i, err))?;
            parsed.push((pattern, e.clone()));
        }
        // Stable: of two equally specific entries the later one wins.
        parsed.sort_by_key(|(p, _)| std::cmp::Reverse(p.specificity()));
        Ok(AddressSettingsTable { entries: parsed, max_queue_bytes, default_policy: FullPolicy::Block })
    }

    /// No entries: every destination has the defaults.
    pub fn defaults(max_queue_bytes: usize) -> AddressSettingsTable {
        AddressSettingsTable { entries: Vec::new(), max_queue_bytes, default_policy: FullPolicy::Block }
    }

    /// The same entries with `policy` where none sets `addressFullPolicy` (`page` with the
    /// file journal, Artemis' default).
    pub fn with_default_policy(self, policy: FullPolicy) -> AddressSettingsTable {
        AddressSettingsTable { default_policy: policy, ..self }
    }

    /// The smallest `maxSizeBytes` any destination has (a durable subscription's backlog
    /// is recovered into the paged state past it, see `engine::Broker::open`).
    pub fn smallest_max_size_bytes(&self) -> usize {
        self.entries.iter().filter_map(|(_, e)| e.max_size_bytes).map(|b| b.as_usize()).fold(self.max_queue_bytes, usize::min)
    }

    /// The settings of `destination` (`/queue/NAME` or `/topic/NAME`).
    pub fn resolve(&self, destination: &str) -> AddressSettings {
        let mut s = AddressSettings::defaults(self.max_queue_bytes);
        s.full_policy = self.default_policy;
        let mut max_delay = None;
        for (_, e) in self.entries.iter().filter(|(p, _)| p.matches(destination)) {
            if let Some(v) = e.max_delivery_attempts {
                s.max_delivery_attempts = v;
            }
            if let Some(v) = e.redelivery_delay {
                s.redelivery_delay = v.get();
            }
            if let Some(v) = e.redelivery_multiplier {
                s.redelivery_multiplier = v;
            }
            if let Some(v) = e.max_redelivery_delay {
                max_delay = Some(v.get());
            }
            if let Some(v) = &e.dead_letter_address {
                s.dead_letter = DeadLetter::Address(Arc::from(v.as_str()));
            }
            if let Some(v) = &e.expiry_address {
                s.expiry_address = Some(Arc::from(v.as_str()));
            }
            if let Some(v) = e.max_size_bytes {
                s.max_size_bytes = v.as_usize();
            }
            if let Some(v) = e.address_full_policy {
                s.full_policy = v;
            }
        }
        s.max_redelivery_delay = max_delay.unwrap_or(s.redelivery_delay * 10).max(s.redelivery_delay);
        s
    }
}

fn check_entry(e: &AddressSettingsEntry) -> Result<(), AddressSettingsError> {
    for (field, value) in [("deadLetterAddress", &e.dead_letter_address), ("expiryAddress", &e.expiry_address)] {
        if let Some(v) = value {
            let name = v.strip_prefix("/queue/").unwrap_or_default();
            if name.is_empty() || v.chars().any(char::is_control) || name.starts_with(crate::engine::RESERVED_PREFIX) {
                return Err(AddressSettingsError::NotAQueue(field));
            }
        }
    }
    if let Some(m) = e.redelivery_multiplier {
        if !(m >= 1.0 && m.is_finite()) {
            return Err(AddressSettingsError::Multiplier(m));
        }
    }
    if let (Some(delay), Some(max)) = (e.redelivery_delay, e.max_redelivery_delay) {
        if max.get() < delay.get() {
            return Err(AddressSettingsError::MaxDelay);
        }
    }
    if e.max_size_bytes.is_some_and(|b| b.0 < 64 * 1024) {
        return Err(AddressSettingsError::TooSmall);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(pattern: &str) -> AddressSettingsEntry {
        AddressSettingsEntry { pattern: pattern.to_string(), ..Default::default() }
    }

    #[test]
    fn given_no_entries_should_resolve_the_defaults() {
        let t = AddressSettingsTable::new(&[], 1 << 20).expect("valid");
        let s = t.resolve("/queue/orders");
        assert_eq!(s, AddressSettings::defaults(1 << 20));
        assert_eq!(s.dead_letter_destination("/queue/orders"), "/queue/DLQ.orders");
        assert_eq!(s.dead_letter_destination("/topic/prices"), "/queue/DLQ.prices");
    }

    #[test]
    fn given_several_matches_should_merge_field_by_field_most_specific_winning() {
        let all = AddressSettingsEntry { max_delivery_attempts: Some(3), max_size_bytes: Some(ByteSize::mib(1)), ..entry(">") };
        let orders = AddressSettingsEntry {
            max_delivery_attempts: Some(5),
            dead_letter_address: Some("/queue/orders.DLQ".into()),
            ..entry("/queue/orders.>")
        };
        let eu = AddressSettingsEntry { address_full_policy: Some(FullPolicy::Fail), ..entry("/queue/orders.eu") };
        // Listed least specific last: the order in the file does not matter.
        let t = AddressSettingsTable::new(&[eu, orders, all], 1 << 30).expect("valid");
        let s = t.resolve("/queue/orders.eu");
        assert_eq!(s.max_delivery_attempts, 5);
        assert_eq!(s.full_policy, FullPolicy::Fail);
        assert_eq!(s.max_size_bytes, 1 << 20);
        assert_eq!(s.dead_letter_destination("/queue/orders.eu"), "/queue/orders.DLQ");
        let other = t.resolve("/topic/prices");
        assert_eq!((other.max_delivery_attempts, other.full_policy), (3, FullPolicy::Block));
    }

    #[test]
    fn given_backoff_should_multiply_and_cap() {
        let e = AddressSettingsEntry {
            redelivery_delay: Some(HumanDuration(Duration::from_millis(100))),
            redelivery_multiplier: Some(2.0),
            max_redelivery_delay: Some(HumanDuration(Duration::from_millis(500))),
            ..entry(">")
        };
        let s = AddressSettingsTable::new(&[e], 1 << 20).expect("valid").resolve("/queue/q");
        let delays: Vec<u128> = (1..=5).map(|n| s.redelivery_delay_for(n).as_millis()).collect();
        assert_eq!(delays, [100, 200, 400, 500, 500]);
        let plain = AddressSettingsEntry { redelivery_delay: Some(HumanDuration(Duration::from_secs(1))), ..entry(">") };
        let s = AddressSettingsTable::new(&[plain], 1 << 20).expect("valid").resolve("/queue/q");
        assert_eq!(s.max_redelivery_delay, Duration::from_secs(10));
    }

    #[test]
    fn given_bad_entries_should_name_index_and_problem() {
        let cases = [
            (AddressSettingsEntry { ..entry("/queue/a..b") }, "empty word"),
            (AddressSettingsEntry { dead_letter_address: Some("/topic/x".into()), ..entry(">") }, "deadLetterAddress"),
            (AddressSettingsEntry { expiry_address: Some("/queue/$duomq.x".into()), ..entry(">") }, "expiryAddress"),
            (AddressSettingsEntry { redelivery_multiplier: Some(0.5), ..entry(">") }, "at least 1"),
            (AddressSettingsEntry { max_size_bytes: Some(ByteSize(10)), ..entry(">") }, "64KiB"),
            (
                AddressSettingsEntry {
                    redelivery_delay: Some(HumanDuration(Duration::from_secs(5))),
                    max_redelivery_delay: Some(HumanDuration(Duration::from_secs(1))),
                    ..entry(">")
                },
                "shorter",
            ),
        ];
        for (bad, says) in cases {
            let err = AddressSettingsTable::new(&[entry(">"), bad.clone()], 1 << 20).expect_err("refused");
            assert_eq!(err.0, 1, "{bad:?}");
            assert!(err.1.to_string().contains(says), "{bad:?}: {}", err.1);
        }
    }
}
