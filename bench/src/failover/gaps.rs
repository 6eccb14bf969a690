//! Failover gaps from receipt times and kill times, and their percentiles. Pure: times
//! come in as nanoseconds since the run started; nothing here reads a clock.

use serde::Serialize;

/// The producers' view of one kill.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Gap {
    /// The last RECEIPT from the killed broker.
    pub last_before_ns: u64,
    /// The first RECEIPT from its successor.
    pub first_after_ns: u64,
}

impl Gap {
    pub fn nanos(&self) -> u64 {
        self.first_after_ns - self.last_before_ns
    }
}

/// The gap of each kill, in order; `None` for a kill with no receipt before it or none
/// after it (the load never resumed). `receipts` and `reconnects` must be sorted.
///
/// The boundary between the killed broker's receipts and its successor's is the first
/// producer reconnect at or after the kill (the kill itself when none is known):
/// receipts the dead broker wrote just before SIGKILL can still be read a moment after
/// it, and must not pass for the successor's first.
pub fn failover_gaps(receipts: &[u64], kills: &[u64], reconnects: &[u64]) -> Vec<Option<Gap>> {
    kills
        .iter()
        .map(|&kill| {
            let boundary = reconnects.get(reconnects.partition_point(|&t| t < kill)).copied().unwrap_or(kill);
            let after = receipts.partition_point(|&t| t <= boundary);
            let last_before_ns = *receipts.get(after.checked_sub(1)?)?;
            let first_after_ns = *receipts.get(after)?;
            Some(Gap { last_before_ns, first_after_ns })
        })
        .collect()
}

/// The consumers' view of each kill, in order: the longest pause between two consecutive
/// first deliveries where the later one arrived after the kill and the earlier one
/// before the next kill (`end_ns` for the last); a pause that spans the next kill counts
/// for both. `None` when no two consecutive deliveries qualify: nothing arrived after
/// the kill (the flow never resumed), or a single message did with nothing before it.
/// `arrivals` and `kills` must be sorted.
///
/// Unlike receipts, deliveries need no boundary between brokers: a pause is a pause,
/// whichever of the killed broker's last messages or its successor's first end it.
pub fn delivery_gaps(arrivals: &[u64], kills: &[u64], end_ns: u64) -> Vec<Option<Gap>> {
    kills
        .iter()
        .enumerate()
        .map(|(i, &kill)| {
            let until = kills.get(i + 1).copied().unwrap_or(end_ns);
            let first_after = arrivals.partition_point(|&t| t <= kill).max(1);
            arrivals
                .windows(2)
                .skip(first_after - 1)
                .take_while(|pair| pair[0] < until)
                .map(|pair| Gap { last_before_ns: pair[0], first_after_ns: pair[1] })
                .max_by_key(Gap::nanos)
        })
        .collect()
}

/// Gap percentiles in milliseconds, over the kills that had one.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize)]
pub struct GapSummaryMs {
    pub p50: f64,
    pub p99: f64,
    pub max: f64,
    pub mean: f64,
}

impl GapSummaryMs {
    /// `None` when no kill had a gap.
    pub fn of(gaps_ns: &[u64]) -> Option<GapSummaryMs> {
        let mut sorted = gaps_ns.to_vec();
        sorted.sort_unstable();
        let ms = |ns: u64| crate::report::round3(ns as f64 / 1e6);
        let max = *sorted.last()?;
        let mean = sorted.iter().map(|&g| g as f64).sum::<f64>() / sorted.len() as f64;
        Some(GapSummaryMs {
            p50: ms(nearest_rank(&sorted, 50.0)),
            p99: ms(nearest_rank(&sorted, 99.0)),
            max: ms(max),
            mean: crate::report::round3(mean / 1e6),
        })
    }
}

/// The nearest-rank percentile of a sorted, non-empty slice: with 20 kills, p50 is the
/// 10th smallest and p99 the largest.
fn nearest_rank(sorted: &[u64], percentile: f64) -> u64 {
    let rank = ((percentile / 100.0) * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

#[cfg(test)]
mod tests {
    use super::*;
    use rstest::rstest;

    #[test]
    fn given_receipts_around_kills_should_measure_last_before_to_first_after() {
        let receipts = [10, 20, 30, 500, 510, 520, 900, 2000];
        let gaps = failover_gaps(&receipts, &[35, 600], &[]);
        assert_eq!(gaps[0], Some(Gap { last_before_ns: 30, first_after_ns: 500 }));
        assert_eq!(gaps[1], Some(Gap { last_before_ns: 520, first_after_ns: 900 }));
        assert_eq!(gaps.iter().flatten().map(Gap::nanos).collect::<Vec<_>>(), vec![470, 380]);
    }

    #[test]
    fn given_receipt_at_the_kill_instant_should_count_it_before() {
        assert_eq!(failover_gaps(&[5, 10, 40], &[10], &[]), vec![Some(Gap { last_before_ns: 10, first_after_ns: 40 })]);
    }

    #[test]
    fn given_receipts_read_after_kill_but_before_reconnect_should_count_them_to_the_killed_broker() {
        // Kill at 100; the dead broker's last receipts are read at 101 and 102; the client
        // reconnects at 150 and the successor's first receipt arrives at 160.
        let receipts = [90, 101, 102, 160, 170];
        let gaps = failover_gaps(&receipts, &[100, 500], &[20, 150, 600]);
        assert_eq!(gaps[0], Some(Gap { last_before_ns: 102, first_after_ns: 160 }));
        assert_eq!(gaps[1], None, "no receipt after the reconnect at 600");
    }

    #[rstest]
    #[case::nothing_before(&[50, 60], 10)]
    #[case::nothing_after(&[5, 6], 10)]
    #[case::no_receipts(&[], 10)]
    fn given_no_receipt_on_one_side_should_have_no_gap(#[case] receipts: &[u64], #[case] kill: u64) {
        assert_eq!(failover_gaps(receipts, &[kill], &[]), vec![None]);
    }

    #[test]
    fn given_deliveries_around_kills_should_take_the_longest_pause_after_each_kill() {
        // Kill at 100: 95->300 spans it; kill at 500: 480->600 spans it (and is shorter).
        let arrivals = [10, 50, 95, 300, 320, 400, 480, 600, 610];
        let gaps = delivery_gaps(&arrivals, &[100, 500], 1000);
        assert_eq!(gaps[0], Some(Gap { last_before_ns: 95, first_after_ns: 300 }));
        assert_eq!(gaps[1], Some(Gap { last_before_ns: 480, first_after_ns: 600 }));
    }

    #[test]
    fn given_longer_pause_after_the_first_resumed_message_should_take_that_one() {
        // The successor delivers one message at 200, then stalls until 900.
        let gaps = delivery_gaps(&[90, 200, 900, 910], &[100], 1000);
        assert_eq!(gaps, vec![Some(Gap { last_before_ns: 200, first_after_ns: 900 })]);
    }

    #[test]
    fn given_pause_spanning_the_next_kill_should_count_for_both_kills() {
        let gaps = delivery_gaps(&[90, 110, 120, 600, 900], &[100, 500], 1000);
        // 120->600 spans the kill at 500: the longest pause of both cycles.
        assert_eq!(gaps[0], Some(Gap { last_before_ns: 120, first_after_ns: 600 }), "starts before the next kill");
        assert_eq!(gaps[1], Some(Gap { last_before_ns: 120, first_after_ns: 600 }));
    }

    #[rstest]
    #[case::nothing_after(&[5, 6], 10)]
    #[case::one_after_nothing_before(&[50], 10)]
    #[case::no_arrivals(&[], 10)]
    fn given_no_pair_of_deliveries_across_or_after_the_kill_should_have_no_gap(
        #[case] arrivals: &[u64],
        #[case] kill: u64,
    ) {
        assert_eq!(delivery_gaps(arrivals, &[kill], 1000), vec![None]);
    }

    #[test]
    fn given_twenty_gaps_should_take_nearest_rank_percentiles() {
        let gaps: Vec<u64> = (1..=20).map(|i| i * 1_000_000).collect();
        let s = GapSummaryMs::of(&gaps);
        assert_eq!(s, Some(GapSummaryMs { p50: 10.0, p99: 20.0, max: 20.0, mean: 10.5 }));
    }

    #[test]
    fn given_one_gap_should_be_every_percentile() {
        assert_eq!(GapSummaryMs::of(&[2_500_000]).map(|s| (s.p50, s.p99, s.max)), Some((2.5, 2.5, 2.5)));
    }

    #[test]
    fn given_no_gaps_should_have_no_summary() {
        assert_eq!(GapSummaryMs::of(&[]), None);
    }
}
