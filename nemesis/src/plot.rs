//! `timeline.png`: throughput, every member's role and every fault over the run's time,
//! one panel each, drawn with plotters' bitmap backend and DejaVu Sans (embedded, so no
//! system font is needed). [`Timeline`] turns a history into what is drawn (pure, tested);
//! [`draw`] only draws it.

use crate::history::{FaultPhase, History, MemberRole};
use plotters::coord::ranged1d::SegmentValue;
use plotters::prelude::*;
use std::collections::BTreeMap;
use std::path::Path;
use thiserror::Error;

const WIDTH: u32 = 1600;
/// The column of legends on the right.
const LEGEND_WIDTH: u32 = 190;
/// Most points of the throughput lines; buckets grow with the run.
const MAX_BUCKETS: f64 = 600.0;

#[derive(Debug, Error)]
pub enum PlotError {
    #[error("failed to register the embedded font")]
    Font,
    #[error("failed to draw {path}: {reason}")]
    Draw { path: String, reason: String },
}

/// A stretch of one row: from, to, and what it was.
#[derive(Debug, Clone, PartialEq)]
pub struct Span<T> {
    pub from: f64,
    pub to: f64,
    pub what: T,
}

/// What the timeline shows.
#[derive(Debug, Clone, PartialEq)]
pub struct Timeline {
    pub end: f64,
    /// Seconds per throughput point.
    pub bucket: f64,
    /// Per bucket: receipted sends, deliveries, failed sends, each per second.
    pub receipted: Vec<f64>,
    pub delivered: Vec<f64>,
    pub failed: Vec<f64>,
    /// Each member's roles over time, members in name order.
    pub roles: Vec<(String, Vec<Span<MemberRole>>)>,
    /// Each fault kind's faults over time (`what` is the target).
    pub faults: Vec<(String, Vec<Span<String>>)>,
}

impl Timeline {
    pub fn of(history: &History) -> Timeline {
        let end = history.end().max(1.0);
        let bucket = (end / MAX_BUCKETS).ceil().max(1.0);
        let buckets = (end / bucket).ceil() as usize + 1;
        let rate = |times: &mut dyn Iterator<Item = f64>| {
            let mut v = vec![0.0; buckets];
            for t in times {
                v[((t / bucket) as usize).min(buckets - 1)] += 1.0 / bucket;
            }
            v
        };
        use crate::history::SendOutcome::{Failed, Receipted};
        let receipted = rate(&mut history.sends.iter().filter(|s| s.outcome == Receipted).map(|s| s.done_t));
        let failed = rate(&mut history.sends.iter().filter(|s| s.outcome == Failed).map(|s| s.done_t));
        let delivered = rate(&mut history.deliveries.iter().map(|d| d.t));

        let mut polls: BTreeMap<&str, Vec<(f64, MemberRole)>> = BTreeMap::new();
        for s in &history.statuses {
            polls.entry(&s.member).or_default().push((s.t, s.role));
        }
        let roles = polls
            .into_iter()
            .map(|(member, mut p)| {
                p.sort_by(|a, b| a.0.total_cmp(&b.0));
                let mut spans: Vec<Span<MemberRole>> = Vec::new();
                for (i, (t, role)) in p.iter().enumerate() {
                    let to = p.get(i + 1).map_or(end, |n| n.0);
                    match spans.last_mut() {
                        Some(last) if last.what == *role => last.to = to,
                        _ => spans.push(Span { from: *t, to, what: *role }),
                    }
                }
                (member.to_string(), spans)
            })
            .collect();

        let mut faults: BTreeMap<&str, Vec<Span<String>>> = BTreeMap::new();
        for applied in history.faults.iter().filter(|f| f.phase == FaultPhase::Applied) {
            let healed = history.faults.iter().find(|h| h.id == applied.id && h.phase != FaultPhase::Applied).map_or(end, |h| h.t);
            faults.entry(&applied.fault).or_default().push(Span { from: applied.t, to: healed, what: applied.target.clone() });
        }
        let faults = faults.into_iter().map(|(k, v)| (k.to_string(), v)).collect();
        Timeline { end, bucket, receipted, delivered, failed, roles, faults }
    }
}

fn role_color(role: MemberRole) -> RGBColor {
    match role {
        MemberRole::Live => RGBColor(46, 139, 87),
        MemberRole::SyncedBackup => RGBColor(70, 130, 180),
        MemberRole::Backup => RGBColor(160, 205, 230),
        MemberRole::Starting | MemberRole::Stopping => RGBColor(238, 200, 80),
        MemberRole::Fenced => RGBColor(255, 140, 0),
        MemberRole::Unreachable => RGBColor(205, 205, 205),
    }
}

fn role_name(role: MemberRole) -> &'static str {
    match role {
        MemberRole::Live => "live",
        MemberRole::SyncedBackup => "synced backup",
        MemberRole::Backup => "backup, syncing",
        MemberRole::Starting => "starting",
        MemberRole::Stopping => "stopping",
        MemberRole::Fenced => "fenced",
        MemberRole::Unreachable => "no answer",
    }
}

const FAULT_COLORS: [RGBColor; 8] = [
    RGBColor(200, 30, 30),
    RGBColor(128, 0, 128),
    RGBColor(230, 120, 20),
    RGBColor(30, 110, 200),
    RGBColor(0, 150, 150),
    RGBColor(120, 80, 20),
    RGBColor(200, 0, 120),
    RGBColor(90, 90, 90),
];

/// Draws `timeline` into a PNG at `path`.
pub fn draw(timeline: &Timeline, title: &str, path: &Path) -> Result<(), PlotError> {
    plotters::style::register_font("sans-serif", FontStyle::Normal, dejavu::sans::regular()).map_err(|_| PlotError::Font)?;
    let fail = |e: &dyn std::fmt::Display| PlotError::Draw { path: path.display().to_string(), reason: e.to_string() };
    let rows = |n: usize| 70 + 24 * n.max(1) as u32;
    let (top_h, roles_h, faults_h) = (340, rows(timeline.roles.len()), rows(timeline.faults.len()));
    let root = BitMapBackend::new(path, (WIDTH, 40 + top_h + roles_h + faults_h)).into_drawing_area();
    root.fill(&WHITE).map_err(|e| fail(&e))?;
    let root = root.titled(title, ("sans-serif", 22)).map_err(|e| fail(&e))?;
    // Charts on the left, their legends in a column on the right, so nothing covers a row.
    let (charts, legends) = root.split_horizontally(WIDTH - LEGEND_WIDTH);
    let (top, rest) = charts.split_vertically(top_h);
    let (middle, bottom) = rest.split_vertically(roles_h);
    let (top_legend, rest_legend) = legends.split_vertically(top_h);
    let (middle_legend, _) = rest_legend.split_vertically(roles_h);

    let peak = timeline.receipted.iter().chain(&timeline.delivered).chain(&timeline.failed).fold(1.0f64, |a, b| a.max(*b));
    let mut chart = ChartBuilder::on(&top)
        .caption(format!("messages per second ({}-second buckets)", timeline.bucket), ("sans-serif", 16))
        .margin(10)
        .x_label_area_size(30)
        .y_label_area_size(90)
        .build_cartesian_2d(0f64..timeline.end, 0f64..peak * 1.1)
        .map_err(|e| fail(&e))?;
    chart.configure_mesh().x_desc("seconds since the start").draw().map_err(|e| fail(&e))?;
    let lines = [
        (&timeline.receipted, RGBColor(46, 139, 87), "sends receipted"),
        (&timeline.delivered, RGBColor(70, 130, 180), "deliveries"),
        (&timeline.failed, RGBColor(200, 30, 30), "sends failed"),
    ];
    for (values, color, _) in lines {
        let points = values.iter().enumerate().map(|(i, v)| (i as f64 * timeline.bucket, *v));
        chart.draw_series(LineSeries::new(points, color.stroke_width(2))).map_err(|e| fail(&e))?;
    }
    legend(&top_legend, lines.iter().map(|(_, color, label)| (*color, *label))).map_err(|e| fail(&e))?;

    let names: Vec<String> = timeline.roles.iter().map(|(m, _)| m.clone()).collect();
    let mut roles = rows_chart(&middle, "role of each member (from /status)", &names, timeline.end).map_err(|e| fail(&e))?;
    for (row, (_, spans)) in timeline.roles.iter().enumerate() {
        roles.draw_series(spans.iter().map(|s| bar(row, s.from, s.to, role_color(s.what)))).map_err(|e| fail(&e))?;
    }
    let shown = [MemberRole::Live, MemberRole::SyncedBackup, MemberRole::Backup, MemberRole::Starting, MemberRole::Fenced, MemberRole::Unreachable];
    legend(&middle_legend, shown.iter().map(|r| (role_color(*r), role_name(*r)))).map_err(|e| fail(&e))?;

    let kinds: Vec<String> = timeline.faults.iter().map(|(k, _)| k.clone()).collect();
    let mut faults = rows_chart(&bottom, "faults (from applied to healed)", &kinds, timeline.end).map_err(|e| fail(&e))?;
    for (row, (_, spans)) in timeline.faults.iter().enumerate() {
        let color = FAULT_COLORS[row % FAULT_COLORS.len()];
        faults.draw_series(spans.iter().map(|s| bar(row, s.from, s.to.max(s.from + timeline.end / 1000.0), color))).map_err(|e| fail(&e))?;
    }
    root.present().map_err(|e| fail(&e))
}

type RowChart<'a> = ChartContext<'a, BitMapBackend<'a>, Cartesian2d<plotters::coord::types::RangedCoordf64, plotters::coord::ranged1d::SegmentedCoord<plotters::coord::types::RangedCoordusize>>>;

/// A chart with one labelled row per name, time across.
fn rows_chart<'a>(
    area: &DrawingArea<BitMapBackend<'a>, plotters::coord::Shift>,
    caption: &str,
    names: &[String],
    end: f64,
) -> Result<RowChart<'a>, DrawingAreaErrorKind<<BitMapBackend<'a> as DrawingBackend>::ErrorType>> {
    let mut chart = ChartBuilder::on(area)
        .caption(caption, ("sans-serif", 16))
        .margin(10)
        .x_label_area_size(30)
        .y_label_area_size(90)
        .build_cartesian_2d(0f64..end, (0..names.len().max(1)).into_segmented())?;
    chart
        .configure_mesh()
        .disable_y_mesh()
        .y_labels(names.len().max(1))
        .y_label_formatter(&|v| match v {
            SegmentValue::CenterOf(i) => names.get(*i).cloned().unwrap_or_default(),
            _ => String::new(),
        })
        .draw()?;
    Ok(chart)
}

/// A legend: a colour swatch and a label per line, from the top of `area`.
fn legend<'a>(
    area: &DrawingArea<BitMapBackend<'a>, plotters::coord::Shift>,
    entries: impl Iterator<Item = (RGBColor, &'static str)>,
) -> Result<(), DrawingAreaErrorKind<<BitMapBackend<'a> as DrawingBackend>::ErrorType>> {
    for (i, (color, label)) in entries.enumerate() {
        let y = 48 + 22 * i as i32;
        area.draw(&Rectangle::new([(8, y - 6), (24, y + 6)], color.filled()))?;
        area.draw(&Text::new(label, (32, y - 8), ("sans-serif", 15)))?;
    }
    Ok(())
}

fn bar(row: usize, from: f64, to: f64, color: RGBColor) -> Rectangle<(f64, SegmentValue<usize>)> {
    let mut bar = Rectangle::new([(from, SegmentValue::Exact(row)), (to, SegmentValue::Exact(row + 1))], color.filled());
    bar.set_margin(3, 3, 0, 0);
    bar
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::history::{FaultRecord, SendOutcome, SendRecord, StatusRecord};

    fn history() -> History {
        let send = |t: f64, outcome| SendRecord {
            t,
            producer: "p".into(),
            queue: "/queue/q".into(),
            group: None,
            seq: 0,
            outcome,
            done_t: t,
            member: None,
            error: None,
        };
        let status = |t, member: &str, role| StatusRecord { t, done_t: t, member: member.into(), group: "g0".into(), role, epoch: Some(1), messages: 0 };
        let fault = |t, phase| FaultRecord { t, id: 1, fault: "kill".into(), phase, target: "g0-a".into(), detail: String::new() };
        History {
            sends: vec![send(0.5, SendOutcome::Receipted), send(0.7, SendOutcome::Receipted), send(2.5, SendOutcome::Failed)],
            statuses: vec![
                status(0.0, "g0-a", MemberRole::Live),
                status(1.0, "g0-a", MemberRole::Live),
                status(2.0, "g0-a", MemberRole::Unreachable),
                status(0.0, "g0-b", MemberRole::SyncedBackup),
                status(2.5, "g0-b", MemberRole::Live),
            ],
            faults: vec![fault(1.9, FaultPhase::Applied), fault(3.0, FaultPhase::Healed)],
            ..History::default()
        }
    }

    #[test]
    fn given_a_history_should_bucket_throughput_join_role_spans_and_pair_faults() {
        let t = Timeline::of(&history());
        assert_eq!(t.end, 3.0);
        assert_eq!(t.bucket, 1.0);
        assert_eq!(t.receipted[0], 2.0);
        assert_eq!(t.failed[2], 1.0);
        assert_eq!(t.roles[0].0, "g0-a");
        assert_eq!(t.roles[0].1, vec![Span { from: 0.0, to: 2.0, what: MemberRole::Live }, Span { from: 2.0, to: 3.0, what: MemberRole::Unreachable }]);
        assert_eq!(t.faults, vec![("kill".to_string(), vec![Span { from: 1.9, to: 3.0, what: "g0-a".to_string() }])]);
    }

    #[test]
    fn given_a_timeline_should_write_a_png() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("timeline.png");
        draw(&Timeline::of(&history()), "test run", &path).expect("draw");
        let bytes = std::fs::read(&path).expect("read the PNG");
        assert!(bytes.starts_with(b"\x89PNG\r\n\x1a\n") && bytes.len() > 1000, "{} bytes", bytes.len());
    }
}
