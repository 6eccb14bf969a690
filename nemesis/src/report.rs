//! The checker's report as people read it (`summary.md`, a Markdown table per section)
//! and as programs read it (`summary.json`). Formatting only.

use crate::checker::Report;
use crate::history::RunInfo;
use serde::Serialize;
use std::fmt::Write;

/// `summary.md`: the run's setup, faults by kind, message counts, and each property's
/// verdict with examples of its violations.
pub fn markdown(run: Option<&RunInfo>, report: &Report) -> String {
    let mut out = String::from("# duomq-nemesis run\n\n");
    if let Some(r) = run {
        let _ = writeln!(
            out,
            "{} live/backup groups ({} members, `{}` arbiter), {} of faults ({}), seed {}, broker {}.\n",
            r.groups,
            r.members.len(),
            r.arbiter,
            duration(r.duration_seconds),
            r.faults.join(", "),
            r.seed,
            r.broker_version
        );
    }
    out.push_str("## Faults\n\n| fault | applied | healed | failed to apply or heal |\n|---|---:|---:|---:|\n");
    for (kind, c) in &report.faults {
        let _ = writeln!(out, "| {kind} | {} | {} | {} |", count(c.applied), count(c.healed), count(c.failed));
    }
    let sum = |f: fn(&crate::checker::FaultCount) -> u64| count(report.faults.values().map(f).sum());
    let _ = writeln!(out, "| **all** | {} | {} | {} |\n", sum(|c| c.applied), sum(|c| c.healed), sum(|c| c.failed));

    let t = &report.totals;
    out.push_str("## Messages\n\n| | count |\n|---|---:|\n");
    for (what, n) in [
        ("sends (persistent, with a receipt)", t.sends),
        ("receipted", t.receipted),
        ("failed: error, timeout or session lost (outcome unknown)", t.failed),
        ("failed but delivered (stored before the failure)", t.failed_but_delivered),
        ("deliveries", t.deliveries),
        ("distinct messages delivered", t.delivered),
        ("repeats (at-least-once after a lost ack)", t.repeats),
        ("repeats without `redelivered: true`", t.unflagged_repeats),
        ("acks receipted", t.acks_receipted),
        ("acks lost with their connection", t.acks_lost),
        ("acks failed otherwise", t.acks_failed),
        ("client reconnects (failovers)", t.failovers),
        ("`/status` polls", t.status_polls),
    ] {
        let _ = writeln!(out, "| {what} | {} |", count(n));
    }

    out.push_str("\n## Properties\n\n| property | promise | checked | violations |\n|---|---|---:|---:|\n");
    for p in &report.properties {
        let _ = writeln!(out, "| {} | {} | {} | {} |", p.name, p.promise, count(p.checked), count(p.violations));
    }
    for p in report.properties.iter().filter(|p| p.violations > 0) {
        let _ = writeln!(out, "\n### {}: {} violations\n", p.name, count(p.violations));
        for e in &p.examples {
            let _ = writeln!(out, "- {e}");
        }
    }
    let violations = report.violations();
    let _ = writeln!(
        out,
        "\n**{}**",
        if violations == 0 { "No violation.".to_string() } else { format!("{} violations.", count(violations)) }
    );
    out
}

#[derive(Serialize)]
struct Summary<'a> {
    run: Option<&'a RunInfo>,
    report: &'a Report,
    violations: u64,
}

/// `summary.json`: the run's setup, the report, and the total of violations.
pub fn json(run: Option<&RunInfo>, report: &Report) -> Result<String, serde_json::Error> {
    serde_json::to_string_pretty(&Summary { run, report, violations: report.violations() })
}

/// `12,345`.
fn count(n: u64) -> String {
    let digits = n.to_string();
    let mut out = String::new();
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    out
}

/// `10 min`, `1 h 5 min`, `90 s`.
fn duration(seconds: f64) -> String {
    let s = seconds.round() as u64;
    match s {
        s if s >= 3600 && s.is_multiple_of(3600) => format!("{} h", s / 3600),
        s if s >= 3600 => format!("{} h {} min", s / 3600, (s % 3600) / 60),
        s if s >= 120 && s.is_multiple_of(60) => format!("{} min", s / 60),
        s => format!("{s} s"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::checker::check;
    use crate::history::History;

    #[test]
    fn given_numbers_should_group_thousands_and_name_durations() {
        assert_eq!(count(0), "0");
        assert_eq!(count(999), "999");
        assert_eq!(count(1000), "1,000");
        assert_eq!(count(1234567), "1,234,567");
        assert_eq!(duration(600.0), "10 min");
        assert_eq!(duration(3600.0), "1 h");
        assert_eq!(duration(3900.0), "1 h 5 min");
        assert_eq!(duration(90.0), "90 s");
    }

    #[test]
    fn given_a_report_should_write_each_section_and_the_verdict() {
        let report = check(&History::default());
        let text = markdown(None, &report);
        for heading in ["## Faults", "## Messages", "## Properties", "| receipted-delivered |", "**No violation.**"] {
            assert!(text.contains(heading), "{heading} missing:\n{text}");
        }
        let value: serde_json::Value = serde_json::from_str(&json(None, &report).expect("json")).expect("parse");
        assert_eq!(value["violations"], 0);
    }
}
