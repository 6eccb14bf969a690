//! `spec.addressSettings`: per-destination dead letters, redelivery, expiry and size limits,
//! the broker's own `addressSettings` (`duomq_broker::config::address`) with the same field
//! names. Sizes are Kubernetes quantities (`16Mi`) and durations one number and one unit
//! (`500ms`, `5s`), as elsewhere in the CRD; `crate::validate` turns an entry into the
//! broker's type and checks it with the broker's own rules. Types and schema only.

use kube::KubeSchema;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::DURATION_RULE;

/// One `addressSettings` entry: the destinations `match` names and what it sets for them.
/// Every entry matching a destination counts, field by field: the most specific entry
/// that sets a field decides it (fewer wildcards, then the longer pattern; Artemis merges
/// its address settings so), and what no entry sets keeps the broker's default.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = Rule::new("!has(self.redeliveryDelay) || !has(self.maxRedeliveryDelay) || !self.redeliveryDelay.matches('^[0-9]+(ms|s|m|h)$') || !self.maxRedeliveryDelay.matches('^[0-9]+(ms|s|m|h)$') || duration(self.maxRedeliveryDelay) >= duration(self.redeliveryDelay)").message("addressSettings maxRedeliveryDelay must not be shorter than redeliveryDelay (it caps the growing delay): lengthen maxRedeliveryDelay or shorten redeliveryDelay"))]
pub struct AddressSettingSpec {
    /// The destinations this entry is for: `/queue/orders.>`, `/topic/prices.*`, `>` for
    /// every destination. `*` is one dot-separated word, a final `>` the rest; a pattern
    /// without `/queue/` or `/topic/` (`orders.>`) spans both kinds.
    #[serde(rename = "match")]
    #[schemars(length(min = 1, max = 256))]
    #[x_kube(validation = Rule::new(r"self.matches('^(/(queue|topic)/)?([^.>]+\\.)*([^.>]+|>)$') && (!self.startsWith('/') || self.startsWith('/queue/') || self.startsWith('/topic/'))").message("an addressSettings match is >, or /queue/ or /topic/ (or neither, for both kinds) then dot-separated words, * for any one word and > only as the last word (e.g. /queue/orders.>)"))]
    pub pattern: String,

    /// Deliveries of one message before it is dead-lettered (a NACK, or its consumer
    /// leaving with it unacknowledged, ends a delivery); 0 never dead-letters. Default 10.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0))]
    pub max_delivery_attempts: Option<i32>,

    /// How long a message that was not acknowledged waits before it is delivered again,
    /// e.g. 1s or 500ms. Default 0s: at once.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 32))]
    #[x_kube(validation = Rule::new(DURATION_RULE).message("addressSettings redeliveryDelay is a whole number and one unit, ms, s, m or h (e.g. 1s or 500ms): fix the duration"))]
    pub redelivery_delay: Option<String>,

    /// Each further redelivery waits this many times longer than the one before: 1 (the
    /// default) waits redeliveryDelay every time, 2 doubles it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[x_kube(validation = Rule::new("self >= 1.0").message("addressSettings redeliveryMultiplier must be at least 1 (1 waits redeliveryDelay every time, 2 doubles the wait each time): fix it"))]
    pub redelivery_multiplier: Option<f64>,

    /// The longest a redelivery waits, e.g. 30s. Default: ten times redeliveryDelay.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 32))]
    #[x_kube(validation = Rule::new(DURATION_RULE).message("addressSettings maxRedeliveryDelay is a whole number and one unit, ms, s, m or h (e.g. 30s): fix the duration"))]
    pub max_redelivery_delay: Option<String>,

    /// The queue dead letters go to, e.g. /queue/orders.DLQ. Default: /queue/DLQ.<name>
    /// for each queue (or topic subscription) of its own.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 256))]
    #[x_kube(validation = Rule::new(QUEUE_RULE).message("addressSettings deadLetterAddress must be a queue: /queue/ then a name (e.g. /queue/orders.DLQ) not starting with $duomq. (the broker's own)"))]
    pub dead_letter_address: Option<String>,

    /// The queue expired messages go to, e.g. /queue/orders.expired. Default: none, they
    /// are dropped.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 256))]
    #[x_kube(validation = Rule::new(QUEUE_RULE).message("addressSettings expiryAddress must be a queue: /queue/ then a name (e.g. /queue/orders.expired) not starting with $duomq. (the broker's own)"))]
    pub expiry_address: Option<String>,

    /// Message bytes one queue holds in memory before addressFullPolicy applies, a
    /// Kubernetes quantity of at least 64Ki such as 16Mi. Default 64Mi (the broker's
    /// memory.maxQueueBytes).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 32))]
    #[x_kube(
        validation = Rule::new("isQuantity(self) && quantity(self).isInteger()").message("addressSettings maxSizeBytes must be a whole number of bytes as a Kubernetes quantity such as 16Mi or 1Gi (units Ki, Mi, Gi or k, M, G; 16MB is not one, write 16M or 16Mi)"),
        validation = Rule::new("!isQuantity(self) || quantity(self).compareTo(quantity('64Ki')) >= 0").message("addressSettings maxSizeBytes must be at least 64Ki")
    )]
    pub max_size_bytes: Option<String>,

    /// What a producer to a queue holding maxSizeBytes gets. page (the default with the
    /// file journal): persistent messages are still accepted and kept in the journal only,
    /// read back as consumers catch up (a sharedDatabase group cannot page: there block
    /// is the default and page is reported in the Degraded condition). block: its SEND
    /// waits for room up to the broker's producerBlockTimeout, then gets an ERROR. fail:
    /// an ERROR at once.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub address_full_policy: Option<AddressFullPolicy>,
}

/// A queue of clients' own: `/queue/NAME`, not one of the broker's records.
const QUEUE_RULE: &str =
    "self.startsWith('/queue/') && size(self) > 7 && !self.startsWith('/queue/$duomq.')";

/// Artemis' `address-full-policy` values the broker knows.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub enum AddressFullPolicy {
    Page,
    Block,
    Fail,
}
