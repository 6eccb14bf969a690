//! One connection's view of the fault rules: `cluster::ClusterConn` hands it every frame it
//! sends and every frame it decodes, and it says what to write or hand on, and when. It
//! keeps the frames a rule holds back (reorder, delay) and does no I/O itself: the
//! connection writes, reads and waits.

use super::{Direction, PeerKey, Registry, RuleRef, Verdict};
use crate::cluster::{ClusterFrame, Purpose};
use std::collections::VecDeque;
use std::sync::Arc;
use tokio::time::Instant;

/// The fault rules as one cluster connection meets them, with the frames they hold back.
pub struct Tap {
    registry: Arc<Registry>,
    peer: PeerKey,
    channel: Purpose,
    /// An outgoing frame `reorder` holds until the next one its rule matches is sent.
    held_out: Option<(RuleRef, ClusterFrame)>,
    /// Frames queued for writing go out no earlier than this (`delay`).
    not_before: Option<Instant>,
    /// Frames received, waiting to be handed on, each no earlier than its instant.
    inbound: VecDeque<(Option<Instant>, ClusterFrame)>,
    /// A received frame `reorder` holds until the next one its rule matches arrives.
    held_in: Option<(RuleRef, ClusterFrame)>,
}

impl std::fmt::Debug for Tap {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Tap")
            .field("peer", &self.peer.node)
            .field("channel", &self.channel)
            .field("held_out", &self.held_out.as_ref().map(|(_, f)| f.name()))
            .field("inbound", &self.inbound.len())
            .field("held_in", &self.held_in.as_ref().map(|(_, f)| f.name()))
            .finish()
    }
}

impl Tap {
    pub(super) fn new(registry: Arc<Registry>, peer: PeerKey, channel: Purpose) -> Tap {
        Tap { registry, peer, channel, held_out: None, not_before: None, inbound: VecDeque::new(), held_in: None }
    }

    /// Whether frames must go through the tap: rules are in force, or it still holds frames
    /// from when they were. One atomic load when neither.
    pub fn engaged(&self) -> bool {
        self.registry.armed() || self.held_out.is_some() || self.held_in.is_some() || !self.inbound.is_empty()
    }

    /// Passes `frame`, about to be queued for writing, through the rules: `emit` is called
    /// for each frame to queue now, in order (none, the frame, it twice, or it followed
    /// by a frame held back earlier).
    pub fn outgoing<E>(&mut self, frame: &ClusterFrame, mut emit: impl FnMut(&ClusterFrame) -> Result<(), E>) -> Result<(), E> {
        let releases = self.releases(self.held_out.as_ref().map(|(rule, _)| *rule), Direction::Out, frame);
        match self.verdict(Direction::Out, frame) {
            Some((Verdict::Drop, _)) => return Ok(()),
            Some((Verdict::Reorder, rule)) if self.held_out.is_none() => {
                self.held_out = Some((rule, frame.clone()));
                return Ok(());
            }
            Some((Verdict::Delay(delay), _)) => {
                let at = Instant::now() + delay;
                self.not_before = Some(self.not_before.map_or(at, |t| t.max(at)));
                emit(frame)?;
            }
            Some((Verdict::Duplicate, _)) => {
                emit(frame)?;
                emit(frame)?;
            }
            Some((Verdict::Reorder, _)) | None => emit(frame)?,
        }
        match self.held_out.take_if(|_| releases) {
            Some((_, held)) => emit(&held),
            None => Ok(()),
        }
    }

    /// When the frames queued may be written (a `delay`); taken, so it applies once.
    pub fn take_not_before(&mut self) -> Option<Instant> {
        self.not_before.take()
    }

    /// Passes a decoded `frame` through the rules; what is to be handed on waits in the
    /// tap for [`Tap::next_inbound`].
    pub fn incoming(&mut self, frame: ClusterFrame) {
        let releases = self.releases(self.held_in.as_ref().map(|(rule, _)| *rule), Direction::In, &frame);
        match self.verdict(Direction::In, &frame) {
            Some((Verdict::Drop, _)) => return,
            Some((Verdict::Reorder, rule)) if self.held_in.is_none() => {
                self.held_in = Some((rule, frame));
                return;
            }
            Some((Verdict::Delay(delay), _)) => self.inbound.push_back((Some(Instant::now() + delay), frame)),
            Some((Verdict::Duplicate, _)) => {
                self.inbound.push_back((None, frame.clone()));
                self.inbound.push_back((None, frame));
            }
            Some((Verdict::Reorder, _)) | None => self.inbound.push_back((None, frame)),
        }
        if let Some((_, held)) = self.held_in.take_if(|_| releases) {
            self.inbound.push_back((None, held));
        }
    }

    /// Whether a received frame waits to be handed on.
    pub fn has_inbound(&self) -> bool {
        !self.inbound.is_empty()
    }

    /// The next received frame to hand on, once it is due; `None` when none waits.
    /// Cancel-safe: a frame stays queued until it is returned.
    pub async fn next_inbound(&mut self) -> Option<ClusterFrame> {
        if let Some(at) = self.inbound.front()?.0 {
            tokio::time::sleep_until(at).await;
        }
        self.inbound.pop_front().map(|(_, frame)| frame)
    }

    /// The peer closed the connection: a frame held for reordering is handed on after all.
    pub fn closed(&mut self) {
        if let Some((_, held)) = self.held_in.take() {
            self.inbound.push_back((None, held));
        }
    }

    /// Two taps for the two halves of a split connection: the first keeps what was
    /// received, the second what is to be sent.
    pub fn split(self) -> (Tap, Tap) {
        let Tap { registry, peer, channel, held_out, not_before, inbound, held_in } = self;
        let reader = Tap { registry: Arc::clone(&registry), peer: peer.clone(), channel, held_out: None, not_before: None, inbound, held_in };
        let writer = Tap { registry, peer, channel, held_out, not_before, inbound: VecDeque::new(), held_in: None };
        (reader, writer)
    }

    fn verdict(&self, direction: Direction, frame: &ClusterFrame) -> Option<(Verdict, RuleRef)> {
        if !self.registry.armed() {
            return None;
        }
        self.registry.verdict(direction, &self.peer, self.channel, frame)
    }

    /// Whether `frame` lets go what `held` (the rule holding a frame, if any) holds.
    fn releases(&self, held: Option<RuleRef>, direction: Direction, frame: &ClusterFrame) -> bool {
        held.is_some_and(|rule| self.registry.releases(rule, direction, &self.peer, self.channel, frame))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::faults::{FaultMetrics, FaultRules, Faults, FrameAction, FrameRule};
    use std::time::Duration;

    fn ping(at: u64) -> ClusterFrame {
        ClusterFrame::Ping { at }
    }

    fn tapped(rule: FrameRule) -> (Faults, Tap) {
        let faults = Faults::new(FaultMetrics::default());
        faults.set(FaultRules { frames: vec![rule], disk: None }).expect("valid");
        let tap = faults.tap("node-b", None, Purpose::Replicate).expect("on");
        (faults, tap)
    }

    fn sent(tap: &mut Tap, frames: &[ClusterFrame]) -> Vec<ClusterFrame> {
        let mut out = Vec::new();
        for frame in frames {
            tap.outgoing(frame, |f| {
                out.push(f.clone());
                Ok::<(), ()>(())
            })
            .expect("emit");
        }
        out
    }

    async fn received(tap: &mut Tap, frames: Vec<ClusterFrame>) -> Vec<ClusterFrame> {
        for frame in frames {
            tap.incoming(frame);
        }
        let mut out = Vec::new();
        while let Some(frame) = tap.next_inbound().await {
            out.push(frame);
        }
        out
    }

    #[test]
    fn given_reorder_should_send_the_held_frame_right_after_the_next_one() {
        let (_faults, mut tap) = tapped(FrameRule { count: Some(1), ..FrameRule::new(FrameAction::Reorder) });
        assert_eq!(sent(&mut tap, &[ping(1), ping(2), ping(3)]), vec![ping(2), ping(1), ping(3)]);
    }

    #[test]
    fn given_reorder_of_one_kind_should_swap_two_frames_of_that_kind_whatever_passes_between() {
        let append = |offset| ClusterFrame::Append { seq: 1, offset, records: 1, data: bytes::Bytes::from_static(b"x") };
        let (_faults, mut tap) = tapped(FrameRule { frames: vec!["append".into()], count: Some(1), ..FrameRule::new(FrameAction::Reorder) });
        let got = sent(&mut tap, &[append(0), ping(1), append(1), append(2)]);
        assert_eq!(got, vec![ping(1), append(1), append(0), append(2)]);
    }

    #[test]
    fn given_duplicate_and_drop_should_send_twice_or_not_at_all() {
        let (_faults, mut tap) = tapped(FrameRule { count: Some(1), ..FrameRule::new(FrameAction::Duplicate) });
        assert_eq!(sent(&mut tap, &[ping(1), ping(2)]), vec![ping(1), ping(1), ping(2)]);
        let (_faults, mut tap) = tapped(FrameRule { frames: vec!["ping".into()], ..FrameRule::new(FrameAction::Drop) });
        assert_eq!(sent(&mut tap, &[ping(1), ClusterFrame::Pong { at: 2 }]), vec![ClusterFrame::Pong { at: 2 }]);
    }

    #[test]
    fn given_delay_should_set_when_the_queued_frames_may_go_out() {
        let (_faults, mut tap) = tapped(FrameRule { delay: Some(crate::config::HumanDuration::millis(200)), ..FrameRule::new(FrameAction::Delay) });
        let before = Instant::now();
        assert_eq!(sent(&mut tap, &[ping(1)]), vec![ping(1)]);
        let at = tap.take_not_before().expect("a delay");
        assert!(at >= before + Duration::from_millis(200));
        assert_eq!(tap.take_not_before(), None, "applies once");
    }

    #[tokio::test]
    async fn given_rules_on_received_frames_should_hand_them_on_reordered_duplicated_or_not_at_all() {
        let (faults, mut tap) = tapped(FrameRule { count: Some(1), direction: Some(Direction::In), ..FrameRule::new(FrameAction::Reorder) });
        assert_eq!(received(&mut tap, vec![ping(1), ping(2)]).await, vec![ping(2), ping(1)]);
        faults.set(FaultRules { frames: vec![FrameRule { count: Some(1), ..FrameRule::new(FrameAction::Duplicate) }], disk: None }).expect("set");
        assert_eq!(received(&mut tap, vec![ping(3), ping(4)]).await, vec![ping(3), ping(3), ping(4)]);
        faults.set(FaultRules { frames: vec![FrameRule { count: Some(1), ..FrameRule::new(FrameAction::Drop) }], disk: None }).expect("set");
        assert_eq!(received(&mut tap, vec![ping(5), ping(6)]).await, vec![ping(6)]);
    }

    #[tokio::test]
    async fn given_a_delayed_received_frame_should_hold_it_and_those_behind_it_until_due() {
        let (_faults, mut tap) = tapped(FrameRule { count: Some(1), delay: Some(crate::config::HumanDuration::millis(100)), ..FrameRule::new(FrameAction::Delay) });
        let start = Instant::now();
        tap.incoming(ping(1));
        tap.incoming(ping(2));
        assert_eq!(tap.next_inbound().await, Some(ping(1)));
        assert!(start.elapsed() >= Duration::from_millis(100));
        assert_eq!(tap.next_inbound().await, Some(ping(2)), "order is kept");
        assert_eq!(tap.next_inbound().await, None);
    }

    #[tokio::test]
    async fn given_a_held_frame_when_the_rules_are_cleared_or_the_peer_closes_should_still_hand_it_on() {
        let (faults, mut tap) = tapped(FrameRule { direction: Some(Direction::In), ..FrameRule::new(FrameAction::Reorder) });
        tap.incoming(ping(1));
        assert!(!tap.has_inbound());
        faults.clear().expect("clear");
        assert!(tap.engaged(), "a frame is still held");
        tap.closed();
        assert_eq!(tap.next_inbound().await, Some(ping(1)));
        assert!(!tap.engaged());
    }
}
