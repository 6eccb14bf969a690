//! The checker on hand-made histories: a clean one passes, and each kind of broken one is
//! flagged by the property it breaks (and by no other).

use super::*;
use crate::history::{ClientRecord, FaultPhase, FaultRecord, PhaseRecord, ProcessRecord, StatusRecord};

const PLAIN: &str = "/queue/nemesis.plain";
const GROUPED: &str = "/queue/nemesis.grouped";

fn send(producer: &str, seq: u64, t: f64, member: &str) -> SendRecord {
    SendRecord {
        t,
        producer: producer.into(),
        queue: PLAIN.into(),
        group: None,
        seq,
        outcome: SendOutcome::Receipted,
        done_t: t + 0.01,
        member: Some(member.into()),
        error: None,
    }
}

fn grouped_send(producer: &str, seq: u64, group: &str, t: f64) -> SendRecord {
    SendRecord { queue: GROUPED.into(), group: Some(group.into()), ..send(producer, seq, t, "g0-a") }
}

fn failed(mut s: SendRecord) -> SendRecord {
    s.outcome = SendOutcome::Failed;
    s.member = None;
    s.error = Some("timed out".into());
    s
}

/// A delivery of `s` to `consumer` (session 1, home g1) at `t`, acked with a receipt 10 ms later.
fn delivery(s: &SendRecord, consumer: &str, t: f64) -> DeliveryRecord {
    DeliveryRecord {
        t,
        consumer: consumer.into(),
        home: "g1".into(),
        session: 1,
        queue: s.queue.clone(),
        producer: Some(s.producer.clone()),
        seq: Some(s.seq),
        group: s.group.clone(),
        message_id: format!("{}", s.seq + 1000),
        redelivered: false,
        first_for_consumer: false,
        intact: true,
        ack: AckOutcome::Receipted,
        ack_t: t + 0.01,
        ack_error: None,
    }
}

fn with_ack(mut d: DeliveryRecord, ack: AckOutcome) -> DeliveryRecord {
    d.ack = ack;
    d
}

fn status(member: &str, t: f64, role: MemberRole, epoch: u64) -> StatusRecord {
    StatusRecord { t, done_t: t + 0.005, member: member.into(), group: "g0".into(), role, epoch: Some(epoch), messages: 0 }
}

fn fault(id: u64, fault: &str, phase: FaultPhase, t: f64) -> FaultRecord {
    FaultRecord { t, id, fault: fault.into(), phase, target: "g0-a".into(), detail: String::new() }
}

fn history(sends: Vec<SendRecord>, deliveries: Vec<DeliveryRecord>, statuses: Vec<StatusRecord>) -> History {
    History { sends, deliveries, statuses, ..History::default() }
}

fn property<'a>(report: &'a Report, name: &str) -> &'a Property {
    report.properties.iter().find(|p| p.name == name).unwrap_or_else(|| panic!("no property {name}"))
}

/// The properties with violations, by name.
fn violated(report: &Report) -> Vec<&'static str> {
    report.properties.iter().filter(|p| p.violations > 0).map(|p| p.name).collect()
}

/// A grouped stream delivered as the broker should: g0 group "A" from p0, #0..#2, to c1
/// (first message marked), all acked.
fn clean_grouped() -> (Vec<SendRecord>, Vec<DeliveryRecord>) {
    let sends: Vec<SendRecord> = (0..3).map(|i| grouped_send("p0", i, "A", i as f64)).collect();
    let mut deliveries: Vec<DeliveryRecord> = sends.iter().map(|s| delivery(s, "c1", s.t + 0.5)).collect();
    deliveries[0].first_for_consumer = true;
    (sends, deliveries)
}

#[test]
fn given_a_clean_run_with_a_failover_should_report_no_violation_and_count_what_happened() {
    let (mut sends, mut deliveries) = clean_grouped();
    let plain = send("p1", 0, 0.2, "g0-a");
    // A failed send that was stored anyway, and a message redelivered after a lost ack.
    let maybe = failed(send("p1", 1, 0.3, "g0-a"));
    deliveries.push(with_ack(delivery(&plain, "c2", 1.0), AckOutcome::Lost));
    deliveries.push(DeliveryRecord { redelivered: true, session: 2, ..delivery(&plain, "c2", 2.0) });
    deliveries.push(delivery(&maybe, "c2", 2.1));
    sends.extend([plain, maybe]);
    let statuses = vec![
        status("g0-a", 0.0, MemberRole::Live, 1),
        status("g0-b", 0.0, MemberRole::SyncedBackup, 1),
        status("g0-a", 1.0, MemberRole::Unreachable, 1),
        status("g0-b", 1.2, MemberRole::Live, 2),
        status("g0-b", 2.0, MemberRole::Live, 2),
    ];
    let mut h = history(sends, deliveries, statuses);
    h.faults = vec![fault(1, "kill", FaultPhase::Applied, 0.9), fault(1, "kill", FaultPhase::Healed, 3.0)];
    h.clients = vec![ClientRecord { t: 1.5, client: "c2".into(), event: "reconnected".into(), member: Some("g0-b".into()), detail: String::new() }];

    let report = check(&h);

    assert_eq!(violated(&report), Vec::<&str>::new(), "{report:#?}");
    assert_eq!(report.totals.receipted, 4);
    assert_eq!(report.totals.failed, 1);
    assert_eq!(report.totals.failed_but_delivered, 1);
    assert_eq!(report.totals.deliveries, 6);
    assert_eq!(report.totals.delivered, 5);
    assert_eq!(report.totals.repeats, 1);
    assert_eq!(report.totals.acks_lost, 1);
    assert_eq!(report.totals.failovers, 1);
    assert_eq!(report.faults["kill"], FaultCount { applied: 1, healed: 1, failed: 0 });
    assert_eq!(property(&report, "receipted-delivered").checked, 4);
}

#[test]
fn given_a_receipted_send_never_delivered_should_flag_it_lost_but_not_a_failed_one() {
    let kept = send("p0", 0, 0.0, "g0-a");
    let lost = send("p0", 1, 0.1, "g0-a");
    let maybe = failed(send("p0", 2, 0.2, "g0-a"));
    let deliveries = vec![delivery(&kept, "c1", 1.0)];
    let report = check(&history(vec![kept, lost, maybe], deliveries, Vec::new()));
    assert_eq!(violated(&report), ["receipted-delivered"]);
    let p = property(&report, "receipted-delivered");
    assert_eq!((p.checked, p.violations), (2, 1));
    assert!(p.examples[0].starts_with("p0 #1 "), "{:?}", p.examples);
}

#[test]
fn given_a_delivery_after_a_receipted_ack_should_flag_it_but_not_one_after_a_lost_ack() {
    let a = send("p0", 0, 0.0, "g0-a");
    let b = send("p0", 1, 0.0, "g0-a");
    let deliveries = vec![
        // a: acked with a receipt at 1.01, then delivered again at 2.0 on a live connection
        // (the broker refused its ack), and read at 2.5 from a connection already lost.
        delivery(&a, "c1", 1.0),
        DeliveryRecord { redelivered: true, ..with_ack(delivery(&a, "c2", 2.0), AckOutcome::Failed) },
        with_ack(delivery(&a, "c3", 2.5), AckOutcome::Lost),
        // b: the first ack was lost, so a second delivery is at-least-once.
        with_ack(delivery(&b, "c1", 1.0), AckOutcome::Lost),
        DeliveryRecord { redelivered: true, ..delivery(&b, "c2", 2.0) },
    ];
    let report = check(&history(vec![a, b], deliveries, Vec::new()));
    assert_eq!(violated(&report), ["no-redelivery-after-ack"]);
    let p = property(&report, "no-redelivery-after-ack");
    assert_eq!((p.checked, p.violations), (2, 1));
    assert!(p.examples[0].starts_with("p0 #0: ack receipted at 1.010s"), "{:?}", p.examples);
}

#[test]
fn given_two_copies_each_acked_with_a_receipt_should_flag_the_message_consumed_twice() {
    let a = send("p0", 0, 0.0, "g0-a");
    // Both delivered before either ack came back, then both acks receipted.
    let deliveries = vec![delivery(&a, "c1", 1.0), DeliveryRecord { home: "g2".into(), ..delivery(&a, "c2", 1.005) }];
    let report = check(&history(vec![a], deliveries, Vec::new()));
    assert_eq!(violated(&report), ["no-redelivery-after-ack"]);
    assert!(property(&report, "no-redelivery-after-ack").examples[0].contains("acked again with a receipt"));
}

#[test]
fn given_a_group_delivered_out_of_send_order_should_flag_the_reordering_but_not_a_late_repeat() {
    let (sends, mut deliveries) = clean_grouped();
    // #2 first delivered before #1: a reordering.
    deliveries[2].t = 1.2;
    let report = check(&history(sends.clone(), deliveries, Vec::new()));
    assert_eq!(violated(&report), ["order-per-producer-group"]);
    let p = property(&report, "order-per-producer-group");
    assert_eq!((p.checked, p.violations), (3, 1));
    assert!(p.examples[0].contains("#1 first delivered at 1.500s (c1) after #2 at 1.200s"), "{:?}", p.examples);

    // In order, then #0 again (its ack lost): a redelivery, not a reordering.
    let (sends, mut deliveries) = clean_grouped();
    deliveries[0].ack = AckOutcome::Lost;
    deliveries.push(DeliveryRecord { redelivered: true, t: 5.0, ack_t: 5.01, ..deliveries[0].clone() });
    let report = check(&history(sends, deliveries, Vec::new()));
    assert_eq!(violated(&report), Vec::<&str>::new(), "{report:#?}");
}

#[test]
fn given_two_members_answering_live_at_once_should_flag_two_lives_but_not_a_failover() {
    let split = vec![
        status("g0-a", 1.0, MemberRole::Live, 1),
        status("g0-b", 2.0, MemberRole::Live, 2),
        status("g0-a", 3.0, MemberRole::Live, 1),
    ];
    let report = check(&history(Vec::new(), Vec::new(), split));
    assert_eq!(violated(&report), ["one-live-per-group"]);
    assert!(property(&report, "one-live-per-group").examples[0].contains("g0-b answered live (epoch 2) at 2.005s while g0-a was live throughout 1.005-3.000s"));

    // g0-a live, then gone; g0-b takes over; g0-a comes back as a backup.
    let failover = vec![
        status("g0-a", 1.0, MemberRole::Live, 1),
        status("g0-a", 1.5, MemberRole::Live, 1),
        status("g0-b", 2.0, MemberRole::Live, 2),
        status("g0-a", 3.0, MemberRole::SyncedBackup, 2),
        status("g0-b", 3.0, MemberRole::Live, 2),
    ];
    let report = check(&history(Vec::new(), Vec::new(), failover));
    assert_eq!(violated(&report), Vec::<&str>::new(), "{report:#?}");
}

#[test]
fn given_a_restarted_member_live_again_with_the_same_epoch_should_not_bridge_its_two_processes() {
    let statuses = vec![
        status("g0-a", 1.0, MemberRole::Live, 3),
        status("g0-b", 2.0, MemberRole::Live, 4),
        status("g0-a", 3.0, MemberRole::Live, 3),
    ];
    let mut h = history(Vec::new(), Vec::new(), statuses);
    h.processes = vec![
        ProcessRecord { t: 0.0, member: "g0-a".into(), action: "start".into(), pid: 10, incarnation: 1 },
        ProcessRecord { t: 1.5, member: "g0-a".into(), action: "kill".into(), pid: 10, incarnation: 1 },
        ProcessRecord { t: 2.5, member: "g0-a".into(), action: "start".into(), pid: 11, incarnation: 2 },
    ];
    assert_eq!(violated(&check(&h)), Vec::<&str>::new());
}

#[test]
fn given_a_send_receipted_by_one_member_while_another_was_certainly_live_should_flag_it() {
    let statuses = vec![status("g0-a", 1.0, MemberRole::Live, 1), status("g0-b", 0.5, MemberRole::Backup, 1), status("g0-a", 3.0, MemberRole::Live, 1)];
    let zombie = send("p0", 0, 2.0, "g0-b");
    let d = delivery(&zombie, "c1", 2.5);
    let report = check(&history(vec![zombie], vec![d], statuses));
    assert_eq!(violated(&report), ["one-live-per-group"]);
    assert!(property(&report, "one-live-per-group").examples[0].contains("g0-b receipted p0 #0"));
}

#[test]
fn given_a_group_reaching_consumers_of_two_groups_should_flag_the_split() {
    let (sends, mut deliveries) = clean_grouped();
    deliveries[2].home = "g2".into();
    deliveries[2].consumer = "c9".into();
    deliveries[2].first_for_consumer = true;
    let report = check(&history(sends, deliveries, Vec::new()));
    assert_eq!(violated(&report), ["groups-not-split"]);
    assert!(property(&report, "groups-not-split").examples[0].contains("several groups"));
}

#[test]
fn given_two_consumers_holding_a_group_at_once_should_flag_the_split_but_not_a_handover() {
    // Round robin within one group: c1 gets #0 and #2, c2 (marked) #1 in between.
    let (sends, mut deliveries) = clean_grouped();
    deliveries[1] = DeliveryRecord { first_for_consumer: true, ..delivery(&sends[1], "c2", 1.5) };
    let report = check(&history(sends.clone(), deliveries, Vec::new()));
    assert_eq!(violated(&report), ["groups-not-split"]);
    assert!(property(&report, "groups-not-split").examples[0].contains("c1 session 1 held it 0.500-2.500s while c2 session 1 held it"));

    // c1's connection is lost after #1 (its ack of #2 lost); c2 takes over with #2
    // redelivered (marked) and #3. c1 reads #2 late, from its buffer: no split.
    let extra = grouped_send("p0", 3, "A", 1.0);
    let (sends, mut deliveries) = clean_grouped();
    deliveries[2] = with_ack(delivery(&sends[2], "c1", 4.0), AckOutcome::Lost);
    deliveries.push(DeliveryRecord { first_for_consumer: true, redelivered: true, ..delivery(&sends[2], "c2", 3.0) });
    deliveries.push(delivery(&extra, "c2", 3.1));
    let mut sends_moved = sends;
    sends_moved.push(extra);
    let report = check(&history(sends_moved, deliveries, Vec::new()));
    assert_eq!(violated(&report), Vec::<&str>::new(), "{report:#?}");
}

#[test]
fn given_a_consumer_session_taking_a_group_without_the_first_for_consumer_mark_should_flag_it() {
    let (sends, mut deliveries) = clean_grouped();
    deliveries[0].first_for_consumer = false;
    let report = check(&history(sends, deliveries, Vec::new()));
    assert_eq!(violated(&report), ["groups-not-split"]);
    assert!(property(&report, "groups-not-split").examples[0].contains("without JMSXGroupFirstForConsumer"));
}

#[test]
fn given_a_delivery_never_sent_or_altered_should_flag_it() {
    let a = send("p0", 0, 0.0, "g0-a");
    let phantom = DeliveryRecord { seq: Some(99), ..delivery(&a, "c1", 1.0) };
    let altered = DeliveryRecord { intact: false, ..delivery(&a, "c1", 1.1) };
    let unnamed = DeliveryRecord { producer: None, ..delivery(&a, "c1", 1.2) };
    let report = check(&history(vec![a], vec![phantom, altered, unnamed], Vec::new()));
    let p = property(&report, "intact");
    assert_eq!((p.checked, p.violations), (3, 3));
}

#[test]
fn given_a_process_that_exited_by_itself_or_a_cluster_that_did_not_recover_should_flag_them() {
    let process = |t, action: &str, incarnation| ProcessRecord { t, member: "g1-b".into(), action: action.into(), pid: 40 + incarnation, incarnation };
    let h = History {
        processes: vec![process(0.0, "start", 1), process(5.0, "kill", 1), process(6.0, "start", 2), process(9.0, "exit", 2), process(9.3, "start", 3)],
        phases: vec![PhaseRecord { t: 20.0, phase: "notHealed".into(), detail: "g1: g1-b is backup (syncing)".into() }],
        ..History::default()
    };
    let report = check(&h);
    assert_eq!(violated(&report), ["no-crash", "recovered"]);
    assert_eq!(property(&report, "no-crash").checked, 3);
    assert!(property(&report, "no-crash").examples[0].starts_with("g1-b (pid 42, incarnation 2) exited by itself at 9.000s"));
    assert!(property(&report, "recovered").examples[0].contains("g1-b is backup"));
}
