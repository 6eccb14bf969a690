//! Destination patterns of `auth.permissions` (ActiveMQ's wildcards).
//!
//! A pattern is an optional kind prefix, `/queue/` or `/topic/`, then words separated by
//! `.`: `*` stands for exactly one word, `>` for one or more words and only as the last
//! word. The prefix is not a word: `/queue/>` is every queue, `/queue/orders.>` every
//! queue under `orders.`, `/topic/prices.*` the topics one word below `prices`. Without a
//! prefix a pattern spans both kinds: `>` is every destination, `*.eu` matches
//! `/queue/orders.eu` and `/topic/prices.eu` alike.
//!
//! Specificity, for when several patterns match: fewer wildcards first (a missing prefix
//! counts as one), then the longer pattern.

use std::fmt;
use thiserror::Error;

#[derive(Debug, Error, Clone, PartialEq, Eq)]
pub enum PatternError {
    #[error("is empty (use > for every destination)")]
    Empty,
    #[error("starts with / but not with /queue/ or /topic/ (write /queue/…, /topic/… or a pattern without prefix, which spans both kinds)")]
    Prefix,
    #[error("names nothing after {0} (use {0}> for every one of them)")]
    NothingAfterPrefix(&'static str),
    #[error("has an empty word: two dots in a row, or a dot at an end")]
    EmptyWord,
    #[error("word {0:?} mixes a wildcard with other characters; * and > stand alone between dots")]
    MixedWildcard(String),
    #[error("> must be the last word (it stands for all the remaining words)")]
    RestNotLast,
    #[error("contains a control character")]
    ControlCharacter,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Queue,
    Topic,
}

impl Kind {
    fn prefix(self) -> &'static str {
        match self {
            Kind::Queue => "/queue/",
            Kind::Topic => "/topic/",
        }
    }

    /// The kind of a destination and its name after the prefix.
    fn split(destination: &str) -> Option<(Kind, &str)> {
        if let Some(name) = destination.strip_prefix("/queue/") {
            return Some((Kind::Queue, name));
        }
        destination.strip_prefix("/topic/").map(|name| (Kind::Topic, name))
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Word {
    Literal(String),
    /// `*`
    One,
    /// `>`
    Rest,
}

/// A parsed `auth.permissions` `match`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Pattern {
    kind: Option<Kind>,
    words: Vec<Word>,
}

impl Pattern {
    pub fn parse(text: &str) -> Result<Pattern, PatternError> {
        if text.is_empty() {
            return Err(PatternError::Empty);
        }
        if text.chars().any(char::is_control) {
            return Err(PatternError::ControlCharacter);
        }
        let (kind, rest) = match Kind::split(text) {
            Some((kind, rest)) => (Some(kind), rest),
            None if text.starts_with('/') => return Err(PatternError::Prefix),
            None => (None, text),
        };
        if rest.is_empty() {
            return Err(PatternError::NothingAfterPrefix(kind.map_or("", Kind::prefix)));
        }
        let mut words = Vec::new();
        for word in rest.split('.') {
            if words.last() == Some(&Word::Rest) {
                return Err(PatternError::RestNotLast);
            }
            words.push(match word {
                "" => return Err(PatternError::EmptyWord),
                "*" => Word::One,
                ">" => Word::Rest,
                w if w.contains(['*', '>']) => return Err(PatternError::MixedWildcard(w.to_string())),
                w => Word::Literal(w.to_string()),
            });
        }
        Ok(Pattern { kind, words })
    }

    /// Whether `destination` (as a client writes it: `/queue/orders.eu`) matches.
    pub fn matches(&self, destination: &str) -> bool {
        let Some((kind, name)) = Kind::split(destination) else { return false };
        if self.kind.is_some_and(|k| k != kind) {
            return false;
        }
        let mut names = name.split('.');
        for word in &self.words {
            match word {
                Word::Rest => return names.next().is_some(),
                Word::One => {
                    if names.next().is_none() {
                        return false;
                    }
                }
                Word::Literal(l) => {
                    if names.next() != Some(l.as_str()) {
                        return false;
                    }
                }
            }
        }
        names.next().is_none()
    }

    /// Sorts most specific first: fewer wildcards (a missing kind prefix is one), then longer.
    pub fn specificity(&self) -> (usize, std::cmp::Reverse<usize>) {
        let wildcards = self.words.iter().filter(|w| !matches!(w, Word::Literal(_))).count() + usize::from(self.kind.is_none());
        (wildcards, std::cmp::Reverse(self.to_string().len()))
    }
}

impl fmt::Display for Pattern {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if let Some(kind) = self.kind {
            f.write_str(kind.prefix())?;
        }
        for (i, word) in self.words.iter().enumerate() {
            if i > 0 {
                f.write_str(".")?;
            }
            match word {
                Word::Literal(l) => f.write_str(l)?,
                Word::One => f.write_str("*")?,
                Word::Rest => f.write_str(">")?,
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn matches(pattern: &str, destination: &str) -> bool {
        Pattern::parse(pattern).expect("valid pattern").matches(destination)
    }

    #[test]
    fn given_rest_wildcard_should_match_one_or_more_trailing_words() {
        assert!(matches(">", "/queue/a"));
        assert!(matches(">", "/topic/a.b.c"));
        assert!(matches("/queue/>", "/queue/orders.eu"));
        assert!(!matches("/queue/>", "/topic/orders"));
        assert!(matches("/queue/orders.>", "/queue/orders.eu"));
        assert!(matches("/queue/orders.>", "/queue/orders.eu.de"));
        assert!(!matches("/queue/orders.>", "/queue/orders"));
        assert!(!matches("/queue/orders.>", "/queue/ordersx.eu"));
    }

    #[test]
    fn given_one_wildcard_should_match_exactly_one_word() {
        assert!(matches("/topic/prices.*", "/topic/prices.x"));
        assert!(!matches("/topic/prices.*", "/topic/prices.x.y"));
        assert!(!matches("/topic/prices.*", "/topic/prices"));
        assert!(matches("*.eu", "/queue/orders.eu"));
        assert!(matches("*.eu", "/topic/prices.eu"));
        assert!(!matches("*.eu", "/queue/a.b.eu"));
        assert!(matches("/queue/*", "/queue/a"));
        assert!(!matches("/queue/*", "/queue/a.b"));
    }

    #[test]
    fn given_literal_pattern_should_match_only_itself() {
        assert!(matches("/queue/orders", "/queue/orders"));
        assert!(!matches("/queue/orders", "/queue/orders.eu"));
        assert!(!matches("/queue/orders", "/topic/orders"));
        assert!(matches("orders", "/topic/orders"));
        assert!(!matches("/queue/orders", "orders"));
    }

    #[test]
    fn given_invalid_patterns_should_say_what_to_fix() {
        assert_eq!(Pattern::parse(""), Err(PatternError::Empty));
        assert_eq!(Pattern::parse("/queues/a"), Err(PatternError::Prefix));
        assert_eq!(Pattern::parse("/queue/"), Err(PatternError::NothingAfterPrefix("/queue/")));
        assert_eq!(Pattern::parse("/queue/a..b"), Err(PatternError::EmptyWord));
        assert_eq!(Pattern::parse("/queue/a."), Err(PatternError::EmptyWord));
        assert_eq!(Pattern::parse("/queue/ord*"), Err(PatternError::MixedWildcard("ord*".into())));
        assert_eq!(Pattern::parse("/queue/>.a"), Err(PatternError::RestNotLast));
    }

    #[test]
    fn given_patterns_should_rank_fewer_wildcards_then_longer_first() {
        let mut p: Vec<Pattern> =
            [">", "/queue/>", "/queue/orders.>", "/queue/orders.eu", "*.eu", "/queue/orders.eu.*"].iter().map(|t| Pattern::parse(t).expect("valid")).collect();
        p.sort_by_key(Pattern::specificity);
        let order: Vec<String> = p.iter().map(ToString::to_string).collect();
        assert_eq!(order, ["/queue/orders.eu", "/queue/orders.eu.*", "/queue/orders.>", "/queue/>", "*.eu", ">"]);
    }
}
