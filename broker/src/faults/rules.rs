//! The rules of fault injection as JSON: what `PUT /debug/faults` takes and `GET` answers
//! (the admin API re-exports them, so tests and the operator import one definition), and
//! the checks a set of rules must pass before it replaces the rules in force. Types and
//! checks only; applying them is the registry's business (see the module above).

use crate::cluster::{frame_names, Purpose};
use crate::config::HumanDuration;
use serde::{Deserialize, Serialize};
use thiserror::Error;

/// Every rule in force, as one document: a `PUT` replaces them all (an empty one clears).
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields, default)]
pub struct FaultRules {
    /// Rules on cluster frames, tried in order: the first that matches a frame acts on it.
    pub frames: Vec<FrameRule>,
    /// What the journal's fdatasyncs suffer; `None` leaves the disk alone.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub disk: Option<DiskFault>,
}

/// What a frame rule does to the frames it matches.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum FrameAction {
    /// The frame is not sent (`out`) or is discarded as it arrives (`in`).
    Drop,
    /// The frame goes out (or is handed on) `delay` later; frames behind it on the same
    /// connection wait too, as on a slow link, so order is kept.
    Delay,
    /// The frame is sent (or handed on) twice.
    Duplicate,
    /// The frame is held back and sent (or handed on) right after the next frame of the
    /// connection that the rule's criteria match (its count aside): two matching frames
    /// swap places, whatever passes between them. Once the rules change, the next frame
    /// of any kind lets it go.
    Reorder,
    /// Nothing crosses between this member and `peer` (every peer, without one): every
    /// frame of open connections is dropped both ways, and new connections to or from it
    /// are refused (this member dials nothing there, and closes a connection from it as
    /// soon as it says who it is, without an answer), as if the network between them were
    /// cut.
    Partition,
}

impl FrameAction {
    /// The action's name, as JSON and the metric label write it.
    pub fn as_str(self) -> &'static str {
        match self {
            FrameAction::Drop => "drop",
            FrameAction::Delay => "delay",
            FrameAction::Duplicate => "duplicate",
            FrameAction::Reorder => "reorder",
            FrameAction::Partition => "partition",
        }
    }
}

/// Which way a frame travels, seen from this member.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum Direction {
    /// Received from the peer.
    In,
    /// Sent to the peer.
    Out,
}

/// One rule on cluster frames. Every criterion given must hold for a frame to match; one
/// left out matches anything.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct FrameRule {
    pub action: FrameAction,
    /// How long `delay` holds a frame back; only with `delay`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub delay: Option<HumanDuration>,
    /// The other member: its node id, or the `host:port` this member dials it at (as
    /// `ha.members`, `ha.arbiter.voters` or a connector name it). Every peer when left out.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub peer: Option<String>,
    /// `in` or `out`; both when left out. Not with `partition`, which cuts both.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub direction: Option<Direction>,
    /// What the connection is for: `replicate` (live and backup), `vote`, `probe`, `bridge`
    /// (store-and-forward between groups) or `grouping` (a remote grouping handler and the
    /// local one).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub channel: Option<Purpose>,
    /// Frame kinds by name (`append`, `ack`, `forward`, `group-decision`, ...); every kind
    /// when empty. The handshake's frames are never matched: a partition refuses the
    /// connection instead. Not with `partition`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub frames: Vec<String>,
    /// Acts on this many frames, then matches no more; without it, on every frame. Not
    /// with `partition`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub count: Option<u64>,
}

impl FrameRule {
    /// A rule with `action` and no criteria (it matches every frame).
    pub fn new(action: FrameAction) -> FrameRule {
        FrameRule { action, delay: None, peer: None, direction: None, channel: None, frames: Vec::new(), count: None }
    }
}

/// What the journal's fdatasyncs suffer: the group commit's on a live (or a standalone
/// broker), the mirror's on a backup. A failed one fails the batch as a real disk error
/// would (the live cuts the batch back and fails its waiters; a backup drops its live and
/// resyncs).
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields, default)]
pub struct DiskFault {
    /// The next this many fdatasyncs fail.
    #[serde(skip_serializing_if = "is_zero")]
    pub fail_next_syncs: u64,
    /// Every fdatasync fails, until the rules change.
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub fail_all_syncs: bool,
    /// Every fdatasync takes this much longer (it runs first, then the wait).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub sync_delay: Option<HumanDuration>,
}

fn is_zero(n: &u64) -> bool {
    *n == 0
}

/// The rules in force and what they did, as `GET /debug/faults` answers.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct FaultsStatus {
    /// In the order they are tried.
    pub frames: Vec<FrameRuleStatus>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub disk: Option<DiskFaultStatus>,
}

/// A frame rule and how many frames (or, for `partition`, frames and connections) it
/// acted on since it was set.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct FrameRuleStatus {
    pub rule: FrameRule,
    pub acted: u64,
}

/// The disk rule and how many fdatasyncs it failed and slowed since it was set.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct DiskFaultStatus {
    pub rule: DiskFault,
    pub failed: u64,
    pub delayed: u64,
}

/// Why a set of rules was refused; it names the rule by its place in `frames`.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum FaultRulesError {
    #[error("frames[{index}]: delay needs a delay (\"200ms\")")]
    DelayWithout { index: usize },
    #[error("frames[{index}]: only the delay action takes a delay")]
    DelayNotAllowed { index: usize },
    #[error("frames[{index}]: a partition cuts both directions and every frame: {field} must be left out")]
    PartitionNarrowed { index: usize, field: &'static str },
    #[error("frames[{index}]: unknown frame kind {name:?} (known: {known})")]
    UnknownFrame { index: usize, name: String, known: String },
    #[error("frames[{index}]: count must be at least 1 (leave it out for every frame)")]
    ZeroCount { index: usize },
    #[error("frames[{index}]: peer must not be empty")]
    EmptyPeer { index: usize },
    #[error("disk: failNextSyncs, failAllSyncs or syncDelay must be set (leave disk out to spare the disk)")]
    EmptyDisk,
}

impl FaultRules {
    /// Checks what the types alone cannot.
    pub fn validate(&self) -> Result<(), FaultRulesError> {
        for (index, rule) in self.frames.iter().enumerate() {
            match (rule.action, rule.delay) {
                (FrameAction::Delay, None) => return Err(FaultRulesError::DelayWithout { index }),
                (FrameAction::Delay, Some(_)) | (_, None) => {}
                (_, Some(_)) => return Err(FaultRulesError::DelayNotAllowed { index }),
            }
            if rule.peer.as_deref().is_some_and(|p| p.trim().is_empty()) {
                return Err(FaultRulesError::EmptyPeer { index });
            }
            if rule.count == Some(0) {
                return Err(FaultRulesError::ZeroCount { index });
            }
            if let Some(name) = rule.frames.iter().find(|name| !frame_names().any(|known| known == name.as_str())) {
                let known = frame_names().collect::<Vec<_>>().join(", ");
                return Err(FaultRulesError::UnknownFrame { index, name: name.clone(), known });
            }
            if rule.action == FrameAction::Partition {
                let narrowed = [("direction", rule.direction.is_some()), ("frames", !rule.frames.is_empty()), ("count", rule.count.is_some())];
                if let Some((field, _)) = narrowed.into_iter().find(|(_, set)| *set) {
                    return Err(FaultRulesError::PartitionNarrowed { index, field });
                }
            }
        }
        if self.disk.as_ref().is_some_and(|d| *d == DiskFault::default()) {
            return Err(FaultRulesError::EmptyDisk);
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rstest::rstest;

    fn rules(json: &str) -> FaultRules {
        serde_json::from_str(json).expect("rules parse")
    }

    #[test]
    fn given_rules_as_json_should_read_every_field_and_write_them_back() {
        let text = r#"{"frames":[{"action":"delay","delay":"200ms","peer":"node-b","direction":"out","channel":"replicate","frames":["append"],"count":3},
            {"action":"partition","peer":"127.0.0.1:61616","channel":"vote"}],
            "disk":{"failNextSyncs":2,"syncDelay":"50ms"}}"#;
        let parsed = rules(text);
        assert_eq!(parsed.validate(), Ok(()));
        let delay = &parsed.frames[0];
        assert_eq!(delay.delay, Some(HumanDuration::millis(200)));
        assert_eq!((delay.direction, delay.channel, delay.count), (Some(Direction::Out), Some(Purpose::Replicate), Some(3)));
        assert_eq!(parsed.frames[1].channel, Some(Purpose::Vote));
        assert_eq!(parsed.disk, Some(DiskFault { fail_next_syncs: 2, fail_all_syncs: false, sync_delay: Some(HumanDuration::millis(50)) }));
        let again: FaultRules = serde_json::from_str(&serde_json::to_string(&parsed).expect("write")).expect("read back");
        assert_eq!(again, parsed);
    }

    #[rstest]
    #[case(r#"{"frames":[{"action":"delay"}]}"#, "frames[0]: delay needs a delay")]
    #[case(r#"{"frames":[{"action":"drop","delay":"1s"}]}"#, "only the delay action takes a delay")]
    #[case(r#"{"frames":[{"action":"drop"},{"action":"partition","peer":"b","direction":"in"}]}"#, "frames[1]: a partition cuts both directions and every frame: direction")]
    #[case(r#"{"frames":[{"action":"partition","peer":"b","count":1}]}"#, "count must be left out")]
    #[case(r#"{"frames":[{"action":"drop","frames":["apend"]}]}"#, "unknown frame kind \"apend\" (known: hello, challenge")]
    #[case(r#"{"frames":[{"action":"drop","count":0}]}"#, "count must be at least 1")]
    #[case(r#"{"frames":[{"action":"drop","peer":" "}]}"#, "peer must not be empty")]
    #[case(r#"{"disk":{}}"#, "failNextSyncs, failAllSyncs or syncDelay must be set")]
    fn given_rules_that_cannot_work_should_refuse_them_naming_the_rule(#[case] text: &str, #[case] expected: &str) {
        let refused = rules(text).validate().expect_err("refused");
        assert!(refused.to_string().contains(expected), "{refused}");
    }

    #[test]
    fn given_an_unknown_field_or_action_should_not_read() {
        assert!(serde_json::from_str::<FaultRules>(r#"{"frames":[{"action":"drop","peers":"b"}]}"#).is_err());
        assert!(serde_json::from_str::<FaultRules>(r#"{"frames":[{"action":"corrupt"}]}"#).is_err());
        assert!(serde_json::from_str::<FaultRules>(r#"{"frames":[{"action":"drop","channel":"gossip"}]}"#).is_err());
    }
}
