//! The checker: reads a history and says, property by property, whether the cluster kept
//! its promises, with counts and a few examples of each violation. Pure: a [`History`] in,
//! a [`Report`] out, no I/O, so hand-made histories test it (`tests.rs`).
//!
//! What counts as a violation follows the README's promises, and nothing stricter:
//!
//! - a RECEIPT means durable: every receipted send is delivered at least once. A send that
//!   failed (an error, a timeout, a session lost before its receipt) may or may not have
//!   been stored, so it may or may not be delivered;
//! - delivery is at-least-once: a message whose ack was lost in a failover may come again,
//!   flagged `redelivered` or not. What must not happen is a delivery after an ack of the
//!   same message was receipted, or two copies both acknowledged with a receipt (the
//!   day-two section's "consumed twice"). A copy a consumer reads from a connection that
//!   is already gone (its ack is lost too) was sent before the ack: it does not count;
//! - order per producer per message group: the first deliveries of one producer's
//!   messages of one group come in the order sent (a repeat of an earlier one may come
//!   later: that is a redelivery);
//! - one live per group: no member answered `live` or receipted a send while another
//!   member of its group was certainly live. "Certainly" is judged from `/status` polls:
//!   two answers `live` with the same epoch from one process bracket a stretch in which
//!   it was live throughout (each activation raises the epoch);
//! - a message group is never split: all its messages go to consumers of one live/backup
//!   group (the grouping handler's decision), a consumer's first message of a group it
//!   takes over carries `JMSXGroupFirstForConsumer`, and two consumers never held a group
//!   at the same time (judged from stretches a consumer certainly held it: from its first
//!   message of the group to the last one whose ack was receipted);
//! - every delivered message is one that was sent, with its body intact;
//! - a broker process ends only when the nemesis ends it (an `exit` record is a crash);
//! - once every fault is healed, every group has a live and a synced backup again
//!   (the run records `notHealed` when that did not happen in time).

#[cfg(test)]
mod tests;

use crate::history::{AckOutcome, DeliveryRecord, History, MemberRole, SendOutcome, SendRecord};
use serde::Serialize;
use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};

/// Examples kept per property.
const MAX_EXAMPLES: usize = 5;

/// What a history shows, and each property's verdict.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Report {
    pub totals: Totals,
    /// Faults by kind: how many were applied, healed, or failed to apply or heal.
    pub faults: BTreeMap<String, FaultCount>,
    pub properties: Vec<Property>,
}

impl Report {
    pub fn violations(&self) -> u64 {
        self.properties.iter().map(|p| p.violations).sum()
    }

    pub fn faults_applied(&self) -> u64 {
        self.faults.values().map(|f| f.applied).sum()
    }
}

/// Counts of what the clients did and saw.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Totals {
    pub sends: u64,
    pub receipted: u64,
    pub failed: u64,
    /// Failed sends that were delivered anyway (stored before the failure was seen).
    pub failed_but_delivered: u64,
    pub deliveries: u64,
    /// Distinct messages delivered.
    pub delivered: u64,
    /// Deliveries of a message delivered before.
    pub repeats: u64,
    /// Repeats without `redelivered: true` (allowed: at-least-once).
    pub unflagged_repeats: u64,
    pub acks_receipted: u64,
    /// Acks lost with their connection (the message comes again).
    pub acks_lost: u64,
    pub acks_failed: u64,
    /// Client reconnects after a lost connection.
    pub failovers: u64,
    pub status_polls: u64,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct FaultCount {
    pub applied: u64,
    pub healed: u64,
    pub failed: u64,
}

/// One property's verdict.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Property {
    pub name: &'static str,
    /// What it promises, in a few words.
    pub promise: &'static str,
    /// How many things were checked (messages, deliveries, polls...).
    pub checked: u64,
    pub violations: u64,
    pub examples: Vec<String>,
}

impl Property {
    fn new(name: &'static str, promise: &'static str) -> Property {
        Property { name, promise, checked: 0, violations: 0, examples: Vec::new() }
    }

    fn violated(&mut self, example: impl FnOnce() -> String) {
        self.violations += 1;
        if self.examples.len() < MAX_EXAMPLES {
            self.examples.push(example());
        }
    }
}

/// A message: its producer and the producer's number for it.
type Key<'a> = (&'a str, u64);

fn key_of(d: &DeliveryRecord) -> Option<Key<'_>> {
    Some((d.producer.as_deref()?, d.seq?))
}

/// Judges `history`.
pub fn check(history: &History) -> Report {
    let sends: HashMap<Key, &SendRecord> = history.sends.iter().map(|s| ((s.producer.as_str(), s.seq), s)).collect();
    let mut by_message: HashMap<Key, Vec<&DeliveryRecord>> = HashMap::new();
    for d in &history.deliveries {
        if let Some(key) = key_of(d) {
            by_message.entry(key).or_default().push(d);
        }
    }
    for list in by_message.values_mut() {
        list.sort_by(|a, b| a.t.total_cmp(&b.t));
    }
    let terms = live_terms(history);
    Report {
        totals: totals(history, &by_message),
        faults: fault_counts(history),
        properties: vec![
            receipted_delivered(history, &by_message),
            no_redelivery_after_ack(&by_message),
            order_per_producer_group(history),
            one_live_per_group(history, &terms),
            groups_not_split(history),
            intact(history, &sends),
            no_crash(history),
            recovered(history),
        ],
    }
}

fn totals(history: &History, by_message: &HashMap<Key, Vec<&DeliveryRecord>>) -> Totals {
    let mut t = Totals { sends: history.sends.len() as u64, deliveries: history.deliveries.len() as u64, ..Totals::default() };
    for s in &history.sends {
        match s.outcome {
            SendOutcome::Receipted => t.receipted += 1,
            SendOutcome::Failed => {
                t.failed += 1;
                if by_message.contains_key(&(s.producer.as_str(), s.seq)) {
                    t.failed_but_delivered += 1;
                }
            }
        }
    }
    t.delivered = by_message.len() as u64;
    for list in by_message.values() {
        for d in list.iter().skip(1) {
            t.repeats += 1;
            if !d.redelivered {
                t.unflagged_repeats += 1;
            }
        }
    }
    for d in &history.deliveries {
        match d.ack {
            AckOutcome::Receipted => t.acks_receipted += 1,
            AckOutcome::Lost => t.acks_lost += 1,
            AckOutcome::Failed => t.acks_failed += 1,
        }
    }
    t.failovers = history.clients.iter().filter(|c| c.event == "reconnected").count() as u64;
    t.status_polls = history.statuses.len() as u64;
    t
}

fn fault_counts(history: &History) -> BTreeMap<String, FaultCount> {
    let mut out: BTreeMap<String, FaultCount> = BTreeMap::new();
    for f in &history.faults {
        let count = out.entry(f.fault.clone()).or_default();
        match f.phase {
            crate::history::FaultPhase::Applied => count.applied += 1,
            crate::history::FaultPhase::Healed => count.healed += 1,
            crate::history::FaultPhase::Failed => count.failed += 1,
        }
    }
    out
}

fn receipted_delivered(history: &History, by_message: &HashMap<Key, Vec<&DeliveryRecord>>) -> Property {
    let mut p = Property::new("receipted-delivered", "every receipted send is delivered");
    for s in history.sends.iter().filter(|s| s.outcome == SendOutcome::Receipted) {
        p.checked += 1;
        if !by_message.contains_key(&(s.producer.as_str(), s.seq)) {
            p.violated(|| {
                format!(
                    "{} #{} ({}{}) receipted at {:.3}s by {}, never delivered",
                    s.producer,
                    s.seq,
                    s.queue,
                    s.group.as_deref().map(|g| format!(" group {g}")).unwrap_or_default(),
                    s.done_t,
                    s.member.as_deref().unwrap_or("an unknown member"),
                )
            });
        }
    }
    p
}

fn no_redelivery_after_ack(by_message: &HashMap<Key, Vec<&DeliveryRecord>>) -> Property {
    let mut p = Property::new("no-redelivery-after-ack", "no delivery after a receipted ack; never two receipted acks");
    let mut keys: Vec<&Key> = by_message.keys().collect();
    keys.sort();
    for key in keys {
        let list = &by_message[key];
        let mut acked: Vec<&DeliveryRecord> = list.iter().copied().filter(|d| d.ack == AckOutcome::Receipted).collect();
        if acked.is_empty() {
            continue;
        }
        p.checked += 1;
        acked.sort_by(|a, b| a.ack_t.total_cmp(&b.ack_t));
        let first = acked[0];
        // A copy read after the ack from a connection already lost is one the broker sent
        // before the ack (its ack is then lost too): the consumer was just slow to read it.
        let late = list.iter().find(|d| d.t > first.ack_t && d.ack != AckOutcome::Lost);
        if late.is_none() && acked.len() < 2 {
            continue;
        }
        p.violated(|| {
            let mut text = format!("{} #{}: ack receipted at {:.3}s ({} session {})", key.0, key.1, first.ack_t, first.consumer, first.session);
            if let Some(d) = late {
                text.push_str(&format!(
                    "; delivered again at {:.3}s to {} session {} (redelivered: {}, its ack {:?})",
                    d.t, d.consumer, d.session, d.redelivered, d.ack
                ));
            }
            if let Some(second) = acked.get(1) {
                text.push_str(&format!("; acked again with a receipt at {:.3}s by {} session {}", second.ack_t, second.consumer, second.session));
            }
            text
        });
    }
    p
}

/// Grouped deliveries by (producer, queue, message group), each list in time order.
fn grouped_streams(history: &History) -> BTreeMap<(&str, &str, &str), Vec<&DeliveryRecord>> {
    let mut streams: BTreeMap<(&str, &str, &str), Vec<&DeliveryRecord>> = BTreeMap::new();
    for d in &history.deliveries {
        if let (Some(producer), Some(group), Some(_)) = (d.producer.as_deref(), d.group.as_deref(), d.seq) {
            streams.entry((producer, d.queue.as_str(), group)).or_default().push(d);
        }
    }
    for list in streams.values_mut() {
        list.sort_by(|a, b| a.t.total_cmp(&b.t));
    }
    streams
}

fn order_per_producer_group(history: &History) -> Property {
    let mut p = Property::new("order-per-producer-group", "first deliveries of a producer's group come in send order");
    for ((producer, _, group), list) in grouped_streams(history) {
        let mut seen: HashSet<u64> = HashSet::new();
        let mut highest: Option<&DeliveryRecord> = None;
        for d in list {
            let seq = d.seq.unwrap_or_default();
            if !seen.insert(seq) {
                continue;
            }
            p.checked += 1;
            match highest {
                Some(h) if h.seq.unwrap_or_default() > seq => p.violated(|| {
                    format!(
                        "{producer} group {group}: #{seq} first delivered at {:.3}s ({}) after #{} at {:.3}s ({})",
                        d.t,
                        d.consumer,
                        h.seq.unwrap_or_default(),
                        h.t,
                        h.consumer
                    )
                }),
                _ => highest = Some(d),
            }
        }
    }
    p
}

/// A stretch in which a member was certainly live: from the first answer `live` of one
/// process with one epoch to the last request answered so.
#[derive(Debug, Clone)]
struct LiveTerm<'a> {
    member: &'a str,
    group: &'a str,
    epoch: u64,
    from: f64,
    to: f64,
}

fn live_terms(history: &History) -> Vec<LiveTerm<'_>> {
    let mut terms: BTreeMap<(&str, u32, u64), LiveTerm> = BTreeMap::new();
    for s in history.statuses.iter().filter(|s| s.role == MemberRole::Live) {
        let Some(epoch) = s.epoch else { continue };
        let incarnation = incarnation_at(history, &s.member, s.t);
        let term = terms.entry((s.member.as_str(), incarnation, epoch)).or_insert(LiveTerm {
            member: &s.member,
            group: &s.group,
            epoch,
            from: s.done_t,
            to: s.t,
        });
        term.from = term.from.min(s.done_t);
        term.to = term.to.max(s.t);
    }
    terms.into_values().filter(|t| t.from < t.to).collect()
}

/// Which process of `member` ran at `t` (0 before any start was recorded).
fn incarnation_at(history: &History, member: &str, t: f64) -> u32 {
    history.processes.iter().filter(|p| p.member == member && p.action == "start" && p.t <= t).map(|p| p.incarnation).max().unwrap_or(0)
}

fn one_live_per_group(history: &History, terms: &[LiveTerm]) -> Property {
    let mut p = Property::new("one-live-per-group", "no member is live or receipts while another is certainly live");
    let group_of: HashMap<&str, &str> = history.statuses.iter().map(|s| (s.member.as_str(), s.group.as_str())).collect();
    let inside = |member: &str, group: &str, from: f64, to: f64| {
        terms.iter().find(move |term| term.group == group && term.member != member && term.from < from && to < term.to)
    };
    let mut reported: BTreeSet<(String, String, u64)> = BTreeSet::new();
    for s in history.statuses.iter().filter(|s| s.role == MemberRole::Live) {
        p.checked += 1;
        if let Some(term) = inside(&s.member, &s.group, s.t, s.done_t) {
            if reported.insert((s.member.clone(), term.member.to_string(), term.epoch)) {
                p.violated(|| {
                    format!(
                        "{}: {} answered live (epoch {}) at {:.3}s while {} was live throughout {:.3}-{:.3}s (epoch {})",
                        s.group,
                        s.member,
                        s.epoch.map(|e| e.to_string()).unwrap_or_else(|| "?".into()),
                        s.done_t,
                        term.member,
                        term.from,
                        term.to,
                        term.epoch
                    )
                });
            }
        }
    }
    for s in history.sends.iter().filter(|s| s.outcome == SendOutcome::Receipted) {
        let Some(member) = s.member.as_deref() else { continue };
        let Some(group) = group_of.get(member) else { continue };
        p.checked += 1;
        if let Some(term) = inside(member, group, s.t, s.done_t) {
            if reported.insert((member.to_string(), term.member.to_string(), term.epoch)) {
                p.violated(|| {
                    format!(
                        "{group}: {member} receipted {} #{} within {:.3}-{:.3}s while {} was live throughout {:.3}-{:.3}s (epoch {})",
                        s.producer, s.seq, s.t, s.done_t, term.member, term.from, term.to, term.epoch
                    )
                });
            }
        }
    }
    p
}

fn groups_not_split(history: &History) -> Property {
    let mut p = Property::new("groups-not-split", "a message group stays on one consumer at a time, in one group");
    // (queue, message group) -> its deliveries, in time order.
    let mut groups: BTreeMap<(&str, &str), Vec<&DeliveryRecord>> = BTreeMap::new();
    for d in &history.deliveries {
        if let Some(group) = d.group.as_deref() {
            groups.entry((d.queue.as_str(), group)).or_default().push(d);
        }
    }
    for ((queue, group), mut list) in groups {
        list.sort_by(|a, b| a.t.total_cmp(&b.t));
        let mut homes: BTreeMap<&str, u64> = BTreeMap::new();
        for d in &list {
            *homes.entry(d.home.as_str()).or_default() += 1;
        }
        if homes.len() > 1 {
            p.violated(|| format!("{queue} group {group} reached consumers of several groups: {homes:?}"));
        }
        // Stretches per consumer session: (first delivery, last receipted ack's delivery).
        let mut stints: BTreeMap<(&str, u64), (&DeliveryRecord, Option<f64>)> = BTreeMap::new();
        for d in &list {
            let stint = stints.entry((d.consumer.as_str(), d.session)).or_insert((d, None));
            if d.ack == AckOutcome::Receipted {
                stint.1 = Some(d.t);
            }
        }
        for ((consumer, session), (first, _)) in &stints {
            p.checked += 1;
            if !first.first_for_consumer {
                p.violated(|| {
                    format!(
                        "{queue} group {group}: {consumer} session {session} got its first message of the group at {:.3}s without {}",
                        first.t, "JMSXGroupFirstForConsumer"
                    )
                });
            }
        }
        let held: Vec<((&str, u64), f64, f64)> =
            stints.iter().filter_map(|(id, (first, last))| last.map(|l| (*id, first.t, l))).collect();
        for (i, a) in held.iter().enumerate() {
            for b in &held[i + 1..] {
                if a.1.max(b.1) <= a.2.min(b.2) {
                    p.violated(|| {
                        format!(
                            "{queue} group {group}: {} session {} held it {:.3}-{:.3}s while {} session {} held it {:.3}-{:.3}s",
                            a.0 .0, a.0 .1, a.1, a.2, b.0 .0, b.0 .1, b.1, b.2
                        )
                    });
                }
            }
        }
    }
    p
}

fn intact(history: &History, sends: &HashMap<Key, &SendRecord>) -> Property {
    let mut p = Property::new("intact", "every delivery is a message that was sent, body unchanged");
    for d in &history.deliveries {
        p.checked += 1;
        let sent = key_of(d).and_then(|k| sends.get(&k));
        match sent {
            None => p.violated(|| {
                format!(
                    "{} got message-id {} at {:.3}s naming {:?} #{:?}, which was never sent",
                    d.consumer, d.message_id, d.t, d.producer, d.seq
                )
            }),
            Some(s) if !d.intact || s.queue != d.queue || s.group != d.group => p.violated(|| {
                format!("{} got {} #{} at {:.3}s altered (body intact: {}, queue {}, group {:?})", d.consumer, s.producer, s.seq, d.t, d.intact, d.queue, d.group)
            }),
            Some(_) => {}
        }
    }
    p
}

fn no_crash(history: &History) -> Property {
    let mut p = Property::new("no-crash", "a broker process ends only when the nemesis ends it");
    for r in &history.processes {
        match r.action.as_str() {
            "start" => p.checked += 1,
            "exit" => p.violated(|| format!("{} (pid {}, incarnation {}) exited by itself at {:.3}s", r.member, r.pid, r.incarnation, r.t)),
            _ => {}
        }
    }
    p
}

fn recovered(history: &History) -> Property {
    let mut p = Property::new("recovered", "once faults heal, every group has a live and a synced backup");
    for phase in &history.phases {
        match phase.phase.as_str() {
            "healed" => p.checked += 1,
            "notHealed" => {
                p.checked += 1;
                p.violated(|| format!("at {:.3}s: {}", phase.t, phase.detail));
            }
            _ => {}
        }
    }
    p
}
