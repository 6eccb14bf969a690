//! The `duomq.io/fenced-members` annotation as a list: read, add a member, remove one.
//! Pure (no client): `fence`/`unfence` read the BrokerGroup, edit with these and write the
//! result back with the BrokerGroup's resourceVersion, so another member's entry is never
//! lost to a concurrent edit.

use thiserror::Error;

use duomq_operator::names::FENCED_MEMBERS_ANNOTATION;

#[derive(Debug, Error, PartialEq)]
pub enum FencedError {
    /// The annotation holds something else than a JSON list of pod names; editing it would
    /// drop whatever it meant, so the user fixes it first.
    #[error(
        "annotation {FENCED_MEMBERS_ANNOTATION} is not a JSON list of pod names ({text:?}: {reason}); \
         fix or remove it with kubectl annotate"
    )]
    Garbled { text: String, reason: String },
}

/// The members the annotation lists, in its order; none when it is absent or blank.
pub fn parse(annotation: Option<&str>) -> Result<Vec<String>, FencedError> {
    let Some(text) = annotation.filter(|t| !t.trim().is_empty()) else {
        return Ok(Vec::new());
    };
    serde_json::from_str::<Vec<String>>(text).map_err(|e| FencedError::Garbled {
        text: text.to_string(),
        reason: e.to_string(),
    })
}

/// What the annotation becomes after an edit.
#[derive(Debug, PartialEq)]
pub struct Edited {
    /// The new value; `None` removes the annotation (nothing is fenced any more).
    pub value: Option<String>,
    /// The list already was as asked (fencing a fenced member, unfencing one that is not).
    pub unchanged: bool,
}

/// Adds (`fence`) or removes `pod` from the list in `annotation`, keeping every other entry
/// and its order.
pub fn edit(annotation: Option<&str>, pod: &str, fence: bool) -> Result<Edited, FencedError> {
    let mut members = parse(annotation)?;
    let listed = members.iter().any(|m| m == pod);
    let unchanged = listed == fence;
    if fence && !listed {
        members.push(pod.to_string());
    } else if !fence {
        members.retain(|m| m != pod);
    }
    let value = (!members.is_empty()).then(|| {
        serde_json::Value::from(members.iter().map(String::as_str).collect::<Vec<_>>()).to_string()
    });
    Ok(Edited { value, unchanged })
}

#[cfg(test)]
mod tests {
    use super::*;
    use rstest::rstest;

    #[rstest]
    #[case::absent(None, "pair-g0-1", Some(r#"["pair-g0-1"]"#), false)]
    #[case::blank(Some(" "), "pair-g0-1", Some(r#"["pair-g0-1"]"#), false)]
    #[case::keeps_others(
        Some(r#"["a-g1-0"]"#),
        "pair-g0-1",
        Some(r#"["a-g1-0","pair-g0-1"]"#),
        false
    )]
    #[case::already(Some(r#"["pair-g0-1"]"#), "pair-g0-1", Some(r#"["pair-g0-1"]"#), true)]
    fn given_an_annotation_when_fencing_should_add_the_pod_once_and_keep_the_rest(
        #[case] annotation: Option<&str>,
        #[case] pod: &str,
        #[case] value: Option<&str>,
        #[case] unchanged: bool,
    ) {
        let edited = edit(annotation, pod, true).expect("a valid list");
        assert_eq!(
            edited,
            Edited {
                value: value.map(String::from),
                unchanged
            }
        );
    }

    #[rstest]
    #[case::last(Some(r#"["pair-g0-1"]"#), None, false)]
    #[case::keeps_others(Some(r#"["a","pair-g0-1","b"]"#), Some(r#"["a","b"]"#), false)]
    #[case::not_listed(Some(r#"["a"]"#), Some(r#"["a"]"#), true)]
    #[case::absent(None, None, true)]
    fn given_an_annotation_when_unfencing_should_remove_only_that_pod(
        #[case] annotation: Option<&str>,
        #[case] value: Option<&str>,
        #[case] unchanged: bool,
    ) {
        let edited = edit(annotation, "pair-g0-1", false).expect("a valid list");
        assert_eq!(
            edited,
            Edited {
                value: value.map(String::from),
                unchanged
            }
        );
    }

    #[rstest]
    #[case::comma_list("pair-g0-1,pair-g0-2")]
    #[case::object(r#"{"pod":"pair-g0-1"}"#)]
    #[case::numbers("[1,2]")]
    fn given_a_garbled_annotation_when_edited_should_refuse_naming_it(#[case] text: &str) {
        let err = edit(Some(text), "pair-g0-1", true).expect_err("not a list of names");
        let shown = err.to_string();
        assert!(
            shown.contains(FENCED_MEMBERS_ANNOTATION) && shown.contains(&format!("{text:?}")),
            "{shown}"
        );
    }

    #[test]
    fn given_names_with_quotes_when_written_should_read_back_the_same() {
        let edited = edit(None, "odd\"name", true).expect("valid");
        assert_eq!(
            parse(edited.value.as_deref()).expect("valid"),
            vec!["odd\"name".to_string()]
        );
    }
}
