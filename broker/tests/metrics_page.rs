//! `/metrics` of a real broker process, read as a scraper reads it: every line must follow
//! the text exposition grammar whatever the clients named their destinations, and the
//! per-destination series stay within `metrics.maxDestinationSeries`.

mod common;

use common::{http_get, Broker};
use std::collections::BTreeMap;

/// One sample line: metric name, labels (unescaped), value.
#[derive(Debug, Clone, PartialEq)]
struct Sample {
    name: String,
    labels: BTreeMap<String, String>,
    value: f64,
}

/// Parses the page strictly (OpenMetrics text, which the Prometheus text format accepts
/// too): `# HELP|TYPE|UNIT name …` comments, `# EOF` last, and samples
/// `name{label="value",…} value`, where a label value holds no raw `"`, `\` or line feed
/// and escapes only `\\`, `\"` and `\n`. The first line that breaks it is the error.
fn parse_page(page: &str) -> Result<Vec<Sample>, String> {
    let mut samples = Vec::new();
    let mut lines = page.split('\n').enumerate().peekable();
    let mut saw_eof = false;
    while let Some((no, line)) = lines.next() {
        let fail = |why: &str| format!("line {}: {why}: {line:?}", no + 1);
        if saw_eof {
            if line.is_empty() && lines.peek().is_none() {
                break;
            }
            return Err(fail("text after # EOF"));
        }
        if line == "# EOF" {
            saw_eof = true;
            continue;
        }
        if let Some(comment) = line.strip_prefix("# ") {
            let mut parts = comment.splitn(3, ' ');
            let kind = parts.next().unwrap_or_default();
            let name = parts.next().unwrap_or_default();
            if !matches!(kind, "HELP" | "TYPE" | "UNIT") || !is_metric_name(name) {
                return Err(fail("not a HELP, TYPE or UNIT line"));
            }
            continue;
        }
        samples.push(parse_sample(line).map_err(|why| fail(&why))?);
    }
    if !saw_eof {
        return Err("no # EOF line".into());
    }
    Ok(samples)
}

fn is_metric_name(name: &str) -> bool {
    let mut chars = name.chars();
    chars.next().is_some_and(|c| c.is_ascii_alphabetic() || c == '_' || c == ':')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_' || c == ':')
}

fn parse_sample(line: &str) -> Result<Sample, String> {
    let name_end = line.find(['{', ' ']).ok_or("no value")?;
    let name = &line[..name_end];
    if !is_metric_name(name) {
        return Err(format!("bad metric name {name:?}"));
    }
    let mut rest = &line[name_end..];
    let mut labels = BTreeMap::new();
    if let Some(after) = rest.strip_prefix('{') {
        rest = after;
        loop {
            if let Some(after) = rest.strip_prefix('}') {
                rest = after;
                break;
            }
            let eq = rest.find("=\"").ok_or("label without =\"")?;
            let key = &rest[..eq];
            if !is_metric_name(key) || key.contains(':') {
                return Err(format!("bad label name {key:?}"));
            }
            rest = &rest[eq + 2..];
            let mut value = String::new();
            let mut chars = rest.char_indices();
            let end = loop {
                match chars.next() {
                    None => return Err("unterminated label value".into()),
                    Some((i, '"')) => break i,
                    Some((_, '\\')) => match chars.next() {
                        Some((_, '\\')) => value.push('\\'),
                        Some((_, '"')) => value.push('"'),
                        Some((_, 'n')) => value.push('\n'),
                        other => return Err(format!("bad escape {other:?}")),
                    },
                    Some((_, c)) => value.push(c),
                }
            };
            labels.insert(key.to_string(), value);
            rest = &rest[end + 1..];
            if let Some(after) = rest.strip_prefix(',') {
                rest = after;
            } else if !rest.starts_with('}') {
                return Err("expected , or } after a label".into());
            }
        }
    }
    let after_labels = rest.strip_prefix(' ').ok_or("no space before the value")?;
    // A value, then at most a timestamp.
    let mut fields = after_labels.split(' ');
    let value = fields.next().unwrap_or_default();
    let value: f64 = value.parse().map_err(|_| format!("bad value {value:?}"))?;
    match (fields.next(), fields.next()) {
        (None, None) => {}
        (Some(timestamp), None) if timestamp.parse::<f64>().is_ok() => {}
        _ => return Err("text after the value and timestamp".into()),
    }
    Ok(Sample { name: name.to_string(), labels, value })
}

fn scrape(broker: &Broker) -> Vec<Sample> {
    let (code, page) = http_get(broker.admin_port, "/metrics").expect("GET /metrics");
    assert_eq!(code, 200, "{page}");
    parse_page(&page).unwrap_or_else(|e| panic!("/metrics does not parse: {e}\n{page}"))
}

fn series<'a>(samples: &'a [Sample], name: &str) -> Vec<&'a Sample> {
    samples.iter().filter(|s| s.name == name).collect()
}

fn single(samples: &[Sample], name: &str) -> f64 {
    match series(samples, name).as_slice() {
        [s] => s.value,
        other => panic!("expected one {name} sample, got {other:?}"),
    }
}

#[test]
fn given_a_queue_named_with_quote_backslash_brace_and_space_when_scraping_metrics_should_parse_and_show_its_series() {
    let broker = Broker::start("metrics-escaping", "");
    let odd = r#"/queue/x"} 1 \ {"#;
    let mut client = broker.connect();
    client.send_receipted(odd, "one", true);
    client.send_receipted("/queue/plain", "two", true);

    let samples = scrape(&broker);
    let depth: Vec<_> = series(&samples, "duomq_queue_depth")
        .into_iter()
        .map(|s| (s.labels.get("queue").cloned().unwrap_or_default(), s.value))
        .collect();
    assert!(depth.contains(&(odd.to_string(), 1.0)), "{depth:?}");
    assert!(depth.contains(&("/queue/plain".to_string(), 1.0)), "{depth:?}");
}

#[test]
fn given_the_label_parser_when_fed_an_unescaped_quote_should_refuse_the_page() {
    // The parser above must catch what the broker used to write.
    let broken = "# TYPE duomq_queue_depth gauge\nduomq_queue_depth{queue=\"/queue/x\"} 1 \\ {\"} 1\n# EOF\n";
    assert!(parse_page(broken).is_err());
    let fine = "# TYPE duomq_queue_depth gauge\nduomq_queue_depth{queue=\"/queue/x\\\"} 1 \\\\ {\"} 1\n# EOF\n";
    assert_eq!(parse_page(fine).expect("parses")[0].labels["queue"], "/queue/x\"} 1 \\ {");
}

#[test]
fn given_more_destinations_than_max_destination_series_when_scraping_should_show_the_busiest_and_count_the_rest() {
    let broker = Broker::start("metrics-bounded", "metrics:\n  maxDestinationSeries: 3\n");
    let mut client = broker.connect();
    // /queue/q0 holds 0 messages … /queue/q5 holds 5: the three busiest are q3, q4, q5.
    for i in 0..6 {
        let queue = format!("/queue/q{i}");
        client.subscribe(&format!("s{i}"), &queue, "client", &[]);
        client.send(&duomq_broker::stomp::Frame::new(duomq_broker::stomp::Command::Unsubscribe).header("id", format!("s{i}")));
        for n in 0..i {
            client.send_receipted(&queue, &format!("m{n}"), true);
        }
    }

    let samples = scrape(&broker);
    let mut shown: Vec<(String, f64)> = series(&samples, "duomq_queue_depth")
        .into_iter()
        .map(|s| (s.labels.get("queue").cloned().unwrap_or_default(), s.value))
        .collect();
    shown.sort_by(|a, b| a.0.cmp(&b.0));
    assert_eq!(
        shown,
        vec![("/queue/q3".to_string(), 3.0), ("/queue/q4".to_string(), 4.0), ("/queue/q5".to_string(), 5.0)]
    );
    assert_eq!(series(&samples, "duomq_queue_in_flight").len(), 3);
    assert_eq!(series(&samples, "duomq_queue_consumers").len(), 3);
    assert_eq!(single(&samples, "duomq_destinations"), 6.0);
    assert_eq!(single(&samples, "duomq_destination_series_omitted"), 3.0);
}
