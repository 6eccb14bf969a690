//! The database part of the status (sharedDatabase mode): which members report that they
//! cannot reach the database, the Degraded message that names them, and the events when a
//! member loses or regains it. Pure: it reads the members' `/status` (`ha.database`) as the
//! controller observed them.

use duomq_broker::admin::api::{BrokerStatus, DatabaseStatus};

use super::reason::{Reason, Transition};
use super::PodObservation;
use crate::validate::GroupModel;

/// What a broker says of the database, when it uses one.
fn database(b: &BrokerStatus) -> Option<&DatabaseStatus> {
    b.ha.as_ref()?.database.as_ref()
}

/// Whether a member's broker reaches the database as far as it says: a broker without a
/// database section (another mode, or one that has not looked yet) counts as reaching it.
pub fn reaches_database(p: &PodObservation) -> bool {
    p.broker
        .as_ref()
        .ok()
        .and_then(database)
        .is_none_or(|d| d.reachable)
}

/// A member that answers and reports the database unreachable.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Unreachable {
    pub pod: String,
    pub last_error: Option<String>,
}

/// The members of `g` that answer and report the database unreachable, in member order.
pub fn unreachable<'a>(
    g: &GroupModel,
    pod: impl Fn(&str) -> Option<&'a PodObservation>,
) -> Vec<Unreachable> {
    g.members
        .iter()
        .filter_map(|m| {
            let p = pod(&m.pod).filter(|p| p.running && !p.terminating)?;
            let d = database(p.broker.as_ref().ok()?)?;
            (!d.reachable).then(|| Unreachable {
                pod: m.pod.clone(),
                last_error: d.last_error.clone(),
            })
        })
        .collect()
}

/// `group g0: g0-0 cannot reach the database (connection refused)`, for the Degraded
/// condition.
pub fn message(group: &str, members: &[Unreachable]) -> String {
    let each: Vec<String> = members
        .iter()
        .map(|u| match &u.last_error {
            Some(e) => format!("{} ({e})", u.pod),
            None => u.pod.clone(),
        })
        .collect();
    format!(
        "group {group}: cannot reach the database: {}",
        each.join(", ")
    )
}

/// Events for the members of `group` that lost the database since the previous look (not in
/// `before`) and for those of `before` that now report it reachable again. A member that
/// stops answering is neither: nothing is known of it.
pub fn transitions<'a>(
    group: &str,
    now: &[Unreachable],
    before: &[String],
    pod: impl Fn(&str) -> Option<&'a PodObservation>,
) -> Vec<Transition> {
    let lost = now
        .iter()
        .filter(|u| !before.contains(&u.pod))
        .map(|u| Transition {
            reason: Reason::DatabaseUnreachable,
            note: format!(
                "group {group}: {} cannot reach the database{}",
                u.pod,
                u.last_error
                    .as_ref()
                    .map(|e| format!(": {e}"))
                    .unwrap_or_default()
            ),
        });
    let back = before
        .iter()
        .filter(|p| {
            pod(p).is_some_and(|o| {
                o.running
                    && o.broker
                        .as_ref()
                        .ok()
                        .and_then(database)
                        .is_some_and(|d| d.reachable)
            })
        })
        .map(|p| {
            Transition::new(
                Reason::DatabaseReachable,
                format!("group {group}: {p} reaches the database again"),
            )
        });
    lost.chain(back).collect()
}

