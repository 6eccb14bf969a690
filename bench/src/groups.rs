//! Message groups in a run (`run --groups N`): which group each message belongs to, the
//! check that every group's messages reached exactly one consumer in order per producer,
//! and the split of per-SEND receipt latency between the first message of a group and
//! the rest. No I/O and no clocks: producers and consumers call in with what they saw.
//!
//! A message's group follows from its producer's sequence number alone, so a consumer
//! needs nothing but the body's stamp to know which group a delivery belongs to: without
//! `--group-size`, message `i` belongs to `g<i % N>`; with `--group-size K`, each group
//! gets `K` messages (interleaved with the `N - 1` others of its generation) and then the
//! next `N` groups take over, so new groups keep arriving for the whole run. Producers
//! share group names: the first message "of its group" is the first its producer sent.

use crate::report::{nanos_histogram, LatencyMs};
use anyhow::Context;
use hdrhistogram::Histogram;
use serde::Serialize;
use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;

/// The header ActiveMQ and Artemis read a message's group from over STOMP.
pub const DEFAULT_GROUP_HEADER: &str = "JMSXGroupID";
/// Locks the group check is split over, so consumers rarely wait for each other.
const SHARDS: usize = 64;
/// Violations described in the report, at most.
const MAX_EXAMPLES: usize = 5;

/// How a run's messages are spread over groups.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct GroupPlan {
    /// Groups alive at a time (N).
    pub groups: u64,
    /// Messages each producer sends per group before the group is replaced (K); `None`:
    /// the same N groups for the whole run.
    pub group_size: Option<u64>,
}

impl GroupPlan {
    /// The group of a producer's message `seq`, as a number unique within the run.
    pub fn group_of(&self, seq: u64) -> u64 {
        match self.group_size {
            None => seq % self.groups,
            Some(k) => {
                let per_generation = self.groups.saturating_mul(k);
                (seq / per_generation).saturating_mul(self.groups) + seq % self.groups
            }
        }
    }

    /// The header value of message `seq`: `g<group>`.
    pub fn group_name(&self, seq: u64) -> String {
        format!("g{}", self.group_of(seq))
    }

    /// Whether `seq` is the first message its producer sends in its group.
    pub fn is_first(&self, seq: u64) -> bool {
        match self.group_size {
            None => seq < self.groups,
            Some(k) => seq % self.groups.saturating_mul(k) < self.groups,
        }
    }
}

/// What the check knows of one group.
#[derive(Debug)]
struct GroupState {
    /// The consumer its first delivery went to.
    owner: u32,
    /// Already counted as delivered to more than one consumer.
    split: bool,
    /// The highest sequence number delivered so far, per producer.
    last_seq: Vec<Option<u64>>,
}

/// Watches first deliveries: a group whose messages reach a second consumer is split; a
/// message that arrives after a later one of the same producer and group is out of order.
/// Shared by every consumer of a run.
pub struct GroupCheck {
    plan: GroupPlan,
    producers: usize,
    shards: Vec<Mutex<HashMap<u64, GroupState>>>,
    split_groups: AtomicU64,
    out_of_order: AtomicU64,
    examples: Mutex<Vec<String>>,
}

impl GroupCheck {
    pub fn new(plan: GroupPlan, producers: u32) -> GroupCheck {
        GroupCheck {
            plan,
            producers: producers as usize,
            shards: (0..SHARDS).map(|_| Mutex::new(HashMap::new())).collect(),
            split_groups: AtomicU64::new(0),
            out_of_order: AtomicU64::new(0),
            examples: Mutex::new(Vec::new()),
        }
    }

    pub fn plan(&self) -> GroupPlan {
        self.plan
    }

    /// Books the first delivery of `producer`'s message `seq` at `consumer`.
    pub fn delivered(&self, consumer: u32, producer: u32, seq: u64) {
        let group = self.plan.group_of(seq);
        let Some(shard) = self.shards.get(shard_of(group)) else { return };
        let Ok(mut groups) = shard.lock() else { return };
        let state = groups.entry(group).or_insert_with(|| GroupState {
            owner: consumer,
            split: false,
            last_seq: vec![None; self.producers],
        });
        if state.owner != consumer && !state.split {
            state.split = true;
            self.split_groups.fetch_add(1, Ordering::Relaxed);
            let owner = state.owner;
            self.example(format!(
                "group g{group}: message {producer}:{seq} reached consumer {consumer}, its first consumer {owner}"
            ));
        }
        if let Some(last) = state.last_seq.get_mut(producer as usize) {
            match *last {
                Some(previous) if previous > seq => {
                    self.out_of_order.fetch_add(1, Ordering::Relaxed);
                    self.example(format!(
                        "group g{group}: message {producer}:{seq} after {producer}:{previous} (consumer {consumer})"
                    ));
                }
                _ => *last = Some(seq),
            }
        }
    }

    fn example(&self, text: String) {
        if let Ok(mut examples) = self.examples.lock() {
            if examples.len() < MAX_EXAMPLES {
                examples.push(text);
            }
        }
    }

    /// What the check found: groups seen, how they spread over consumers, violations.
    pub fn summary(&self, consumers: u32) -> GroupCheckSummary {
        let mut per_consumer = vec![0u64; consumers as usize];
        let mut groups_seen = 0u64;
        for shard in &self.shards {
            let Ok(groups) = shard.lock() else { continue };
            groups_seen += groups.len() as u64;
            for state in groups.values() {
                if let Some(n) = per_consumer.get_mut(state.owner as usize) {
                    *n += 1;
                }
            }
        }
        let split_groups = self.split_groups.load(Ordering::Relaxed);
        let out_of_order = self.out_of_order.load(Ordering::Relaxed);
        GroupCheckSummary {
            groups_seen,
            groups_per_consumer_min: per_consumer.iter().copied().min().unwrap_or(0),
            groups_per_consumer_max: per_consumer.iter().copied().max().unwrap_or(0),
            split_groups,
            out_of_order,
            violations: split_groups + out_of_order,
            examples: self.examples.lock().map(|e| e.clone()).unwrap_or_default(),
        }
    }
}

fn shard_of(group: u64) -> usize {
    // Fibonacci hashing: consecutive groups land on different shards.
    (group.wrapping_mul(0x9E37_79B9_7F4A_7C15) >> 58) as usize % SHARDS
}

/// The grouping check's findings.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct GroupCheckSummary {
    /// Distinct groups delivered.
    pub groups_seen: u64,
    /// Groups owned by the consumer with the fewest, and with the most (by first delivery).
    pub groups_per_consumer_min: u64,
    pub groups_per_consumer_max: u64,
    /// Groups whose messages reached more than one consumer.
    pub split_groups: u64,
    /// Deliveries that came after a later message of the same producer and group.
    pub out_of_order: u64,
    /// split_groups + out_of_order; the run fails when it is not 0.
    pub violations: u64,
    /// The first few violations, described.
    pub examples: Vec<String>,
}

/// Per-SEND receipt latency (SEND written to RECEIPT read), split by whether the message
/// was the first its producer sent in its group. One per producer, merged at the end.
#[derive(Debug)]
pub struct ReceiptLatencies {
    pub first: Histogram<u64>,
    pub later: Histogram<u64>,
}

impl ReceiptLatencies {
    pub fn new() -> anyhow::Result<ReceiptLatencies> {
        Ok(ReceiptLatencies { first: nanos_histogram()?, later: nanos_histogram()? })
    }

    pub fn record(&mut self, first: bool, nanos: u64) {
        let histogram = if first { &mut self.first } else { &mut self.later };
        histogram.saturating_record(nanos.max(1));
    }

    pub fn merge(&mut self, other: &ReceiptLatencies) -> anyhow::Result<()> {
        self.first.add(&other.first).context("failed to merge receipt latencies")?;
        self.later.add(&other.later).context("failed to merge receipt latencies")?;
        Ok(())
    }
}

/// The `groups` part of a run's report.
#[derive(Debug, Clone, Serialize)]
pub struct GroupsReport {
    /// The SEND header that carried the group.
    pub header: String,
    pub groups: u64,
    pub group_size: Option<u64>,
    #[serde(flatten)]
    pub check: GroupCheckSummary,
    /// Receipted sends of the measured interval that were the first of their group.
    pub first_sends: u64,
    pub later_sends: u64,
    /// Receipt latency of those first sends (the broker's grouping decision included).
    pub receipt_ms_first: LatencyMs,
    /// Receipt latency of every other measured send.
    pub receipt_ms_later: LatencyMs,
}

impl GroupsReport {
    pub fn of(header: &str, check: &GroupCheck, consumers: u32, latencies: &ReceiptLatencies) -> GroupsReport {
        let plan = check.plan();
        GroupsReport {
            header: header.to_string(),
            groups: plan.groups,
            group_size: plan.group_size,
            check: check.summary(consumers),
            first_sends: latencies.first.len(),
            later_sends: latencies.later.len(),
            receipt_ms_first: LatencyMs::from_nanos(&latencies.first),
            receipt_ms_later: LatencyMs::from_nanos(&latencies.later),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rstest::rstest;

    const TEN_GROUPS: GroupPlan = GroupPlan { groups: 10, group_size: None };
    const ROTATING: GroupPlan = GroupPlan { groups: 3, group_size: Some(2) };

    #[rstest]
    #[case(TEN_GROUPS, 0, 0, true)]
    #[case(TEN_GROUPS, 9, 9, true)]
    #[case(TEN_GROUPS, 10, 0, false)]
    #[case(TEN_GROUPS, 1234, 4, false)]
    #[case(ROTATING, 0, 0, true)]
    #[case(ROTATING, 2, 2, true)]
    #[case(ROTATING, 3, 0, false)]
    #[case(ROTATING, 5, 2, false)]
    #[case(ROTATING, 6, 3, true)]
    #[case(ROTATING, 8, 5, true)]
    #[case(ROTATING, 11, 5, false)]
    #[case(ROTATING, 12, 6, true)]
    fn given_plan_should_place_message_in_group_and_know_the_first(
        #[case] plan: GroupPlan,
        #[case] seq: u64,
        #[case] group: u64,
        #[case] first: bool,
    ) {
        assert_eq!((plan.group_of(seq), plan.is_first(seq)), (group, first));
        assert_eq!(plan.group_name(seq), format!("g{group}"));
    }

    #[test]
    fn given_rotating_plan_should_give_each_group_group_size_messages() {
        let mut counts = HashMap::new();
        for seq in 0..ROTATING.groups * 2 * 5 {
            *counts.entry(ROTATING.group_of(seq)).or_insert(0u64) += 1;
        }
        assert_eq!(counts.len(), 15);
        assert!(counts.values().all(|&n| n == 2), "{counts:?}");
    }

    #[test]
    fn given_groups_pinned_to_one_consumer_in_order_should_find_no_violation() {
        let check = GroupCheck::new(TEN_GROUPS, 2);
        for seq in 0..100 {
            for producer in 0..2 {
                check.delivered((seq % 10 % 3) as u32, producer, seq);
            }
        }
        let summary = check.summary(3);
        assert_eq!((summary.groups_seen, summary.violations), (10, 0), "{summary:?}");
        assert_eq!((summary.groups_per_consumer_min, summary.groups_per_consumer_max), (3, 4));
    }

    #[test]
    fn given_round_robin_delivery_should_report_every_group_split() {
        let check = GroupCheck::new(TEN_GROUPS, 1);
        (0..100).for_each(|seq| check.delivered((seq % 4) as u32, 0, seq));
        let summary = check.summary(4);
        assert_eq!((summary.split_groups, summary.out_of_order, summary.violations), (10, 0, 10));
        assert_eq!(summary.examples.len(), MAX_EXAMPLES);
        assert!(summary.examples[0].contains("group g"), "{:?}", summary.examples);
    }

    #[test]
    fn given_message_after_a_later_one_of_its_producer_should_count_out_of_order() {
        let check = GroupCheck::new(TEN_GROUPS, 2);
        check.delivered(0, 0, 20);
        check.delivered(0, 1, 10);
        check.delivered(0, 0, 10);
        check.delivered(0, 0, 30);
        let summary = check.summary(1);
        assert_eq!((summary.split_groups, summary.out_of_order), (0, 1), "{summary:?}");
    }

    #[test]
    fn given_receipt_latencies_should_split_first_from_later() -> anyhow::Result<()> {
        let mut a = ReceiptLatencies::new()?;
        a.record(true, 5_000_000);
        a.record(false, 1_000_000);
        let mut b = ReceiptLatencies::new()?;
        b.record(false, 1_000_000);
        a.merge(&b)?;
        assert_eq!((a.first.len(), a.later.len()), (1, 2));
        Ok(())
    }
}
