//! Selector loads (`run --header-cycle NAME=V1,V2,... [--selector-split]`): producers tag
//! message `i` with the SEND header `NAME: V[i % k]`, so each value is on 1/k of the
//! messages; with `--selector-split`, consumer `c` subscribes with the JMS selector
//! `NAME = 'V[c % k]'` (the STOMP `selector` header of ActiveMQ, Artemis and duomq) and
//! checks that every message it gets carries that value. Two consumers and two values are
//! two complementary selectors matching half of the messages each; the same run without
//! `--selector-split` is the plain load to compare with (same headers, no selectors).
//! No I/O: producers and consumers call in with what they send and see.

/// The header and its values, from `--header-cycle`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HeaderCycle {
    pub name: String,
    pub values: Vec<String>,
}

impl HeaderCycle {
    /// The value message `seq` of a producer carries.
    pub fn value_for(&self, seq: u64) -> &str {
        let k = self.values.len() as u64;
        &self.values[usize::try_from(seq % k).unwrap_or(0)]
    }

    /// The value consumer `consumer` selects.
    pub fn expected_for(&self, consumer: u32) -> &str {
        &self.values[consumer as usize % self.values.len()]
    }

    /// Consumer `consumer`'s selector: `NAME = 'VALUE'`.
    pub fn selector_for(&self, consumer: u32) -> String {
        format!("{} = '{}'", self.name, self.expected_for(consumer))
    }
}

/// `NAME=V1,V2,...`: NAME a selector identifier (letters, digits, `_`, not starting with a
/// digit), at least two values, none empty or holding a quote (they go into the selector
/// between quotes).
pub fn parse_header_cycle(s: &str) -> Result<HeaderCycle, String> {
    let (name, values) = s.split_once('=').ok_or_else(|| format!("{s:?} has no '='; expected NAME=V1,V2"))?;
    let name = name.trim();
    let identifier = name.chars().next().is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
        && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_');
    if !identifier {
        return Err(format!("{name:?} is not a selector identifier (letters, digits and _, not starting with a digit)"));
    }
    let values: Vec<String> = values.split(',').map(|v| v.trim().to_string()).collect();
    if values.len() < 2 {
        return Err(format!("{s:?} needs at least two values, comma-separated (NAME=V1,V2)"));
    }
    if let Some(bad) = values.iter().find(|v| v.is_empty() || v.contains('\'')) {
        return Err(format!("{s:?}: value {bad:?} is empty or contains a quote"));
    }
    Ok(HeaderCycle { name: name.to_string(), values })
}

#[cfg(test)]
mod tests {
    use super::*;
    use rstest::rstest;

    #[test]
    fn given_two_values_should_alternate_messages_and_give_complementary_selectors() -> Result<(), String> {
        let cycle = parse_header_cycle("colour=red,blue")?;
        let values: Vec<&str> = (0..4).map(|i| cycle.value_for(i)).collect();
        assert_eq!(values, ["red", "blue", "red", "blue"]);
        assert_eq!(cycle.selector_for(0), "colour = 'red'");
        assert_eq!(cycle.selector_for(1), "colour = 'blue'");
        assert_eq!(cycle.expected_for(3), "blue");
        Ok(())
    }

    #[rstest]
    #[case("colour")]
    #[case("colour=red")]
    #[case("1x=a,b")]
    #[case("a-b=a,b")]
    #[case("c=a,")]
    #[case("c=a,b'c")]
    fn given_malformed_cycle_should_be_refused(#[case] input: &str) {
        assert!(parse_header_cycle(input).is_err(), "{input}");
    }
}
