//! JMS message selectors (the SQL-92 subset of JMS 1.1 §3.8) over a message's STOMP
//! headers, as a `selector` header on SUBSCRIBE asks: `region = 'eu' AND amount > 100`.
//!
//! A selector is parsed once, when the subscription is made, into a tree ([`Selector`]);
//! each message is then evaluated against the tree without allocating. What it supports:
//! comparisons (`= <> < > <= >=`), `[NOT] BETWEEN a AND b`, `[NOT] IN ('a', 'b')`,
//! `[NOT] LIKE 'a_%' [ESCAPE '\']`, `IS [NOT] NULL`, `AND`/`OR`/`NOT` with three-valued
//! logic, `+ - * /` and unary minus, parentheses, string literals (`'it''s'`), integer
//! and decimal literals (with exponent), `TRUE`/`FALSE`. Keywords are case-insensitive,
//! identifiers case-sensitive.
//!
//! An identifier reads the message's header of that name. STOMP headers are strings:
//! compared with a number or used in arithmetic, a header that reads as a number is that
//! number (as ActiveMQ's `convertStringExpressions`), otherwise the comparison is unknown
//! and unknown never selects. The JMS names map to their STOMP headers (see
//! `parser::field`): `JMSPriority` (the message's priority as the broker reads `priority`:
//! 0 to 9, 4 when absent), `JMSMessageID` (`message-id`), `JMSCorrelationID`, `JMSType`,
//! `JMSTimestamp`, `JMSExpiration` (`expires`, 0 when absent), `JMSDeliveryMode`
//! (`'PERSISTENT'`/`'NON_PERSISTENT'`).
//!
//! This module decides; it does not dispatch. Queues ask [`Selector::matches`].

mod eval;
mod lexer;
mod parser;

use crate::engine::message::Message;
use prometheus_client::metrics::counter::Counter;
use std::sync::Arc;
use thiserror::Error;

/// A selector that does not parse: where (1-based column, in characters) and why.
#[derive(Debug, Error, Clone, PartialEq, Eq)]
#[error("selector error at position {position}: {problem}")]
pub struct SelectorError {
    pub position: usize,
    pub problem: String,
}

impl SelectorError {
    fn at(position: usize, problem: impl Into<String>) -> SelectorError {
        SelectorError { position, problem: problem.into() }
    }
}

/// How often selectors chose a message or passed it over (`duomq_selector_evaluations`).
/// Clones share the counts.
#[derive(Debug, Clone, Default)]
pub struct SelectorCounters {
    pub matched: Counter,
    pub unmatched: Counter,
}

/// A parsed selector. Cheap to clone (the tree is shared); [`Selector::text`] gives back
/// what was parsed, to store and parse again.
#[derive(Clone)]
pub struct Selector {
    parsed: Arc<Parsed>,
    counters: Option<SelectorCounters>,
}

struct Parsed {
    text: Box<str>,
    root: parser::Expr,
}

impl std::fmt::Debug for Selector {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_tuple("Selector").field(&self.parsed.text).finish()
    }
}

impl Selector {
    /// Parses `text`; the error names the position where it went wrong.
    pub fn parse(text: &str) -> Result<Selector, SelectorError> {
        let root = parser::parse(text)?;
        Ok(Selector { parsed: Arc::new(Parsed { text: Box::from(text), root }), counters: None })
    }

    /// The selector as written.
    pub fn text(&self) -> &str {
        &self.parsed.text
    }

    /// This selector, counting its evaluations in `counters` from now on.
    pub fn counted(mut self, counters: &SelectorCounters) -> Selector {
        self.counters = Some(counters.clone());
        self
    }

    /// Whether this selector selects `message` (true; not false, not unknown).
    pub fn matches(&self, message: &Message) -> bool {
        let selected = eval::selects(&self.parsed.root, message);
        if let Some(c) = &self.counters {
            (if selected { &c.matched } else { &c.unmatched }).inc();
        }
        selected
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::message::Properties;
    use crate::journal::MessageId;
    use bytes::Bytes;
    use rstest::rstest;

    fn message(headers: &[(&str, &str)]) -> Message {
        let headers: Vec<(String, String)> = headers.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
        Message {
            id: MessageId(42),
            destination: Arc::from("/queue/q"),
            properties: Properties::from_headers(&headers),
            headers,
            body: Bytes::new(),
            persistent: true,
            group: None,
        }
    }

    fn selects(selector: &str, headers: &[(&str, &str)]) -> bool {
        Selector::parse(selector).unwrap_or_else(|e| panic!("{selector}: {e}")).matches(&message(headers))
    }

    fn error(selector: &str) -> String {
        Selector::parse(selector).map(|_| ()).unwrap_err().to_string()
    }

    const ORDER: &[(&str, &str)] = &[("region", "eu"), ("amount", "150"), ("ratio", "0.25"), ("name", "it's"), ("flag", "true")];

    #[rstest]
    #[case("region = 'eu'", true)]
    #[case("region <> 'eu'", false)]
    #[case("region = 'EU'", false)]
    #[case("Region = 'eu'", false)]
    #[case("amount > 100", true)]
    #[case("amount >= 150 AND amount <= 150", true)]
    #[case("amount < 100.5", false)]
    #[case("amount = 150.0", true)]
    #[case("amount = '150'", true)]
    #[case("ratio * 4 = 1", true)]
    #[case("amount BETWEEN 100 AND 200", true)]
    #[case("amount NOT BETWEEN 100 AND 200", false)]
    #[case("amount between 151 and 200", false)]
    #[case("region IN ('us', 'eu')", true)]
    #[case("region NOT IN ('us', 'eu')", false)]
    #[case("amount IN (1, 150)", true)]
    #[case("name = 'it''s'", true)]
    #[case("region IS NULL", false)]
    #[case("missing IS NULL", true)]
    #[case("missing IS NOT NULL", false)]
    #[case("flag", true)]
    #[case("flag = TRUE", true)]
    #[case("NOT flag", false)]
    #[case("TRUE", true)]
    #[case("amount / 2 - 25 = 50", true)]
    #[case("-amount < -100", true)]
    #[case("amount * 1e-2 = 1.5", true)]
    #[case("(region = 'us' OR region = 'eu') AND NOT amount > 1000", true)]
    #[case("region = 'eu' and not (amount > 100)", false)]
    fn given_a_selector_should_evaluate_it_over_the_headers(#[case] selector: &str, #[case] expected: bool) {
        assert_eq!(selects(selector, ORDER), expected, "{selector}");
    }

    #[rstest]
    // AND binds tighter than OR; * tighter than +; NOT tighter than AND.
    #[case("region = 'us' AND amount > 100 OR region = 'eu'", true)]
    #[case("region = 'eu' OR region = 'us' AND amount > 1000", true)]
    #[case("(region = 'eu' OR region = 'us') AND amount > 1000", false)]
    #[case("1 + 2 * 3 = 7", true)]
    #[case("(1 + 2) * 3 = 9", true)]
    #[case("10 - 4 - 3 = 3", true)]
    #[case("8 / 2 / 2 = 2", true)]
    #[case("NOT region = 'us' AND amount = 150", true)]
    #[case("- 2 * 3 = -6", true)]
    fn given_operators_should_bind_by_precedence(#[case] selector: &str, #[case] expected: bool) {
        assert_eq!(selects(selector, ORDER), expected, "{selector}");
    }

    #[rstest]
    // Unknown (a missing header, a header that is no number) never selects, and NOT of
    // unknown is unknown too; AND with false is false, OR with true is true.
    #[case("missing = 1")]
    #[case("NOT missing = 1")]
    #[case("missing <> 1")]
    #[case("region > 5")]
    #[case("NOT region > 5")]
    #[case("missing + 1 > 0")]
    #[case("missing BETWEEN 1 AND 2")]
    #[case("missing NOT BETWEEN 1 AND 2")]
    #[case("missing IN ('a')")]
    #[case("missing NOT IN ('a')")]
    #[case("missing LIKE '%'")]
    #[case("missing NOT LIKE 'x'")]
    #[case("missing = 1 AND region = 'eu'")]
    #[case("missing = 1 OR region = 'us'")]
    #[case("amount / 0 = 1")]
    #[case("region = TRUE")]
    #[case("flag > FALSE")]
    fn given_unknown_should_not_select(#[case] selector: &str) {
        assert!(!selects(selector, ORDER), "{selector}");
    }

    #[rstest]
    #[case("missing = 1 OR region = 'eu'")]
    #[case("NOT (missing = 1 AND region = 'us')")]
    #[case("region IN ('eu', 'x') ")]
    fn given_unknown_beside_a_deciding_operand_should_select(#[case] selector: &str) {
        assert!(selects(selector, ORDER), "{selector}");
    }

    #[rstest]
    #[case("abc", "a%", true)]
    #[case("abc", "%c", true)]
    #[case("abc", "a_c", true)]
    #[case("abc", "a_", false)]
    #[case("abc", "%b%", true)]
    #[case("abc", "%", true)]
    #[case("", "%", true)]
    #[case("", "_", false)]
    #[case("aXbXc", "a%b%c", true)]
    #[case("aXbXd", "a%b%c", false)]
    #[case("mississippi", "%ss%pi", true)]
    #[case("100%", "100\\%", true)]
    #[case("1000", "100\\%", false)]
    #[case("a_b", "a\\_b", true)]
    #[case("axb", "a\\_b", false)]
    #[case("a\\b", "a\\\\b", true)]
    #[case("héllo", "h_llo", true)]
    fn given_like_should_match_wildcards_and_escapes(#[case] value: &str, #[case] pattern: &str, #[case] expected: bool) {
        let selector = format!("v LIKE '{pattern}' ESCAPE '\\'");
        assert_eq!(selects(&selector, &[("v", value)]), expected, "{value} LIKE {pattern}");
        let negated = format!("v NOT LIKE '{pattern}' ESCAPE '\\'");
        assert_eq!(selects(&negated, &[("v", value)]), !expected, "{value} NOT LIKE {pattern}");
    }

    #[test]
    fn given_like_with_another_escape_character_should_use_it() {
        assert!(selects("code LIKE 'A!%%' ESCAPE '!'", &[("code", "A%1")]));
        assert!(!selects("code LIKE 'A!%%' ESCAPE '!'", &[("code", "AB1")]));
        assert!(selects("code LIKE 'A\\%'", &[("code", "A\\x")]), "without ESCAPE a backslash is a plain character");
    }

    #[test]
    fn given_jms_header_names_should_read_their_stomp_headers_and_defaults() {
        let m = message(&[("priority", "9"), ("correlation-id", "c-1"), ("type", "order"), ("timestamp", "1700000000000"), ("expires", "1800000000000")]);
        let check = |s: &str| Selector::parse(s).unwrap().matches(&m);
        assert!(check("JMSPriority > 5"));
        assert!(check("JMSCorrelationID = 'c-1' AND JMSType = 'order'"));
        assert!(check("JMSTimestamp > 1600000000000"));
        assert!(check("JMSMessageID = '42' AND JMSMessageID = 42 AND JMSMessageID LIKE '4_'"));
        assert!(check("JMSDeliveryMode = 'PERSISTENT'"));
        assert!(check("JMSExpiration = 1800000000000"));
        assert!(!check("jmspriority > 5"), "identifiers are case-sensitive");
        let plain = message(&[]);
        assert!(Selector::parse("JMSPriority = 4").unwrap().matches(&plain), "no priority header reads as 4");
        assert!(Selector::parse("JMSExpiration = 0").unwrap().matches(&plain), "no expires header reads as 0");
        assert!(Selector::parse("JMSPriority = 9").unwrap().matches(&message(&[("priority", "12")])), "clamped to 0-9 as the broker reads it");
        let non_persistent = Message { persistent: false, ..message(&[]) };
        assert!(Selector::parse("JMSDeliveryMode = 'NON_PERSISTENT'").unwrap().matches(&non_persistent));
    }

    #[test]
    fn given_numbers_in_headers_should_compare_as_numbers_and_others_as_strings() {
        assert!(selects("n > 9", &[("n", "10")]), "numeric: 10 > 9 although '10' < '9' as text");
        assert!(selects("n = 10", &[("n", " 10 ")]));
        assert!(selects("n = 1000", &[("n", "1e3")]));
        assert!(!selects("n > 0", &[("n", "inf")]));
        assert!(!selects("n > 0", &[("n", "NaN")]));
        assert!(selects("a < b", &[("a", "10"), ("b", "9")]), "two strings compare as text, as ActiveMQ does");
        assert!(selects("9223372036854775807 * 2 > 9223372036854775807", &[]), "overflow goes on in decimals");
        assert!(selects("7 / 2 = 3", &[]), "integers divide as integers (Java long)");
    }

    #[test]
    fn given_a_selector_should_keep_its_text_and_count_evaluations() {
        let counters = SelectorCounters::default();
        let s = Selector::parse("region = 'eu'").unwrap().counted(&counters);
        assert_eq!(s.text(), "region = 'eu'");
        assert!(s.clone().matches(&message(&[("region", "eu")])));
        assert!(!s.matches(&message(&[("region", "us")])));
        assert!(!s.matches(&message(&[])));
        assert_eq!((counters.matched.get(), counters.unmatched.get()), (1, 2));
        fn shareable<T: Clone + Send + Sync + 'static>(_: &T) {}
        shareable(&s);
    }

    #[rstest]
    #[case("amount > ", "selector error at position 10: expected a value after '>', found the end of the selector")]
    #[case("region = 'eu' AND amount >", "selector error at position 27: expected a value after '>', found the end of the selector")]
    #[case("", "selector error at position 1: the selector is empty; expected a condition such as region = 'eu'")]
    #[case("region = 'eu' region", "selector error at position 15: expected AND, OR or the end of the selector, found 'region'")]
    #[case("(a = 1", "selector error at position 7: expected ')' to close the '(' at position 1, found the end of the selector")]
    #[case("a = 1 AND", "selector error at position 10: expected a condition after 'AND', found the end of the selector")]
    #[case("a = 1 OR 5", "selector error at position 10: expected a condition after 'OR', found a number")]
    #[case("'text'", "selector error at position 1: expected a condition, found a string")]
    #[case("a BETWEEN 1 OR 2", "selector error at position 13: expected AND between the bounds of BETWEEN, found 'OR'")]
    #[case("a IN 'x'", "selector error at position 6: expected '(' after 'IN', found ''x''")]
    #[case("a IN ('x' 'y')", "selector error at position 11: expected ',' or ')' in the IN list, found ''y''")]
    #[case("a IN (b)", "selector error at position 7: expected a string or number in the IN list, found 'b'")]
    #[case("a LIKE b", "selector error at position 8: expected a string pattern after 'LIKE', found 'b'")]
    #[case("a LIKE 'x' ESCAPE 'ab'", "selector error at position 19: expected a one-character string after 'ESCAPE', found ''ab''")]
    #[case("a LIKE 'x!' ESCAPE '!'", "selector error at position 8: the LIKE pattern ends with its escape character")]
    #[case("a IS 5", "selector error at position 6: expected NULL or NOT NULL after 'IS', found '5'")]
    #[case("a + 'x' > 1", "selector error at position 5: expected a number after '+', found a string")]
    #[case("'x' * 2 > 1", "selector error at position 1: expected a number before '*'")]
    #[case("a = = 1", "selector error at position 5: expected a value after '=', found '='")]
    #[case("a = (b > 1)", "selector error at position 5: expected a value after '=', found a condition")]
    #[case("a ! 1", "selector error at position 3: unexpected character '!'")]
    fn given_a_bad_selector_should_name_the_position_and_what_was_expected(#[case] selector: &str, #[case] expected: &str) {
        assert_eq!(error(selector), expected);
    }

    #[test]
    fn given_deep_nesting_should_refuse_it_instead_of_overflowing_the_stack() {
        let deep = format!("{}a = 1{}", "(".repeat(5000), ")".repeat(5000));
        assert!(error(&deep).contains("nests deeper than 100 levels"), "{}", error(&deep));
        let long_sum = format!("a = 1{}", " + 1".repeat(5000));
        assert!(error(&long_sum).contains("nests deeper than 100 levels"));
        let nots = format!("{}a = 1", "NOT ".repeat(5000));
        assert!(error(&nots).contains("nests deeper than 100 levels"));
        let wide = vec!["a = 1"; 5000].join(" OR ");
        assert!(selects(&wide, &[("a", "1")]), "a long OR chain is flat, not deep");
        let nested = format!("{}a = 1{}", "(".repeat(90), ")".repeat(90));
        assert!(selects(&nested, &[("a", "1")]));
    }
}
