//! The admin API's queue views and message operations: `GET /queues`, `POST
//! /queues/browse` (reads: an admin user's HTTP Basic or the cluster signature), and the
//! signed writes `POST /queues/purge`, `/queues/delete` and `/queues/move`, served by the
//! live only. It checks the request and hands it to the engine (`engine::manage`), which
//! does the work; it decides nothing about messages itself.

use super::api::{
    BodyEncoding, BrowseReply, BrowseRequest, BrowsedMessage, DeleteReply, DeleteRequest, DestinationList, MoveReply,
    MoveRequest, PurgeReply, PurgeRequest, Role, BROWSE_DEFAULT_LIMIT, BROWSE_MAX_LIMIT,
};
use super::{api, AdminState};
use crate::engine::manage::{ManageError, Pick};
use crate::engine::message::Entry;
use crate::engine::Broker;
use crate::journal::MessageId;
use crate::metrics::AdminRequestLabels;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use base64::Engine as _;
use std::sync::Arc;

/// The routes of this module, merged into the admin API's router.
pub(super) fn routes() -> Router<AdminState> {
    Router::new()
        .route(api::QUEUES, get(list))
        .route(api::QUEUE_BROWSE, post(browse))
        .route(api::QUEUE_PURGE, post(purge))
        .route(api::QUEUE_DELETE, post(delete))
        .route(api::QUEUE_MOVE, post(move_messages))
}

/// An answer other than 200: counted in `duomq_admin_queue_requests` by `result`.
fn refuse(s: &AdminState, code: StatusCode, result: &'static str, error: String) -> Response {
    super::refusal(&s.metrics.queue_requests, code, result, error)
}

fn done<T: serde::Serialize>(s: &AdminState, reply: T) -> Response {
    s.metrics.queue_requests.get_or_create(&AdminRequestLabels { result: "done" }).inc();
    Json(reply).into_response()
}

/// The broker, for a read: absent while this member is not serving.
fn broker_to_read(s: &AdminState) -> Result<Arc<Broker>, Box<Response>> {
    let broker = s.broker.read().clone();
    broker.ok_or_else(|| {
        let role = format!("{:?}", *s.role.read()).to_lowercase();
        Box::new(refuse(s, StatusCode::CONFLICT, "refused", format!("this member is {role} and holds no queues now: ask the group's live")))
    })
}

/// The broker, for a write: on the live only (a backup's queues follow its live's journal).
fn broker_to_change(s: &AdminState) -> Result<Arc<Broker>, Box<Response>> {
    let role = *s.role.read();
    let broker = s.broker.read().clone();
    match broker.filter(|_| role == Role::Live && !s.fence.is_fenced()) {
        Some(broker) => Ok(broker),
        None => {
            let role = format!("{role:?}").to_lowercase();
            Err(Box::new(refuse(s, StatusCode::CONFLICT, "refused", format!("this member is {role}, not live: send the request to the group's live"))))
        }
    }
}

/// What an engine error answers: 404 for a missing queue, 400 for a wrong request, 500
/// when the work failed.
fn failure(s: &AdminState, e: &ManageError) -> Response {
    let text = crate::report::error_chain(e);
    if e.is_not_found() {
        refuse(s, StatusCode::NOT_FOUND, "not_found", text)
    } else if e.is_bad_request() {
        refuse(s, StatusCode::BAD_REQUEST, "refused", text)
    } else {
        tracing::warn!(error = %text, "an admin message operation failed");
        refuse(s, StatusCode::INTERNAL_SERVER_ERROR, "failed", text)
    }
}

/// `GET /queues`: see [`api::QUEUES`].
async fn list(State(s): State<AdminState>, headers: HeaderMap) -> Response {
    if let Err(refused) = super::closed_view(&s, api::QUEUES, &headers) {
        return *refused;
    }
    let broker = match broker_to_read(&s) {
        Ok(b) => b,
        Err(refused) => return *refused,
    };
    let destinations = broker.snapshot().into_iter().map(super::queue_status).collect();
    done(&s, DestinationList { destinations })
}

/// `POST /queues/browse`: see [`api::QUEUE_BROWSE`].
async fn browse(State(s): State<AdminState>, headers: HeaderMap, body: Bytes) -> Response {
    if let Err(refused) = super::closed_request(&s, "POST", api::QUEUE_BROWSE, &body, &headers) {
        return *refused;
    }
    let request: BrowseRequest = match serde_json::from_slice(&body) {
        Ok(r) => r,
        Err(e) => return refuse(&s, StatusCode::BAD_REQUEST, "refused", format!("failed to read the request: {e}; expected {{\"queue\":\"/queue/NAME\",\"limit\":100}}")),
    };
    let limit = request.limit.unwrap_or(BROWSE_DEFAULT_LIMIT);
    if !(1..=BROWSE_MAX_LIMIT).contains(&limit) {
        return refuse(&s, StatusCode::BAD_REQUEST, "refused", format!("limit {limit} is out of range: browse 1 to {BROWSE_MAX_LIMIT} messages"));
    }
    let broker = match broker_to_read(&s) {
        Ok(b) => b,
        Err(refused) => return *refused,
    };
    match broker.browse_pending(&request.queue, limit).await {
        Ok((entries, depth)) => {
            done(&s, BrowseReply { queue: request.queue, depth: depth as u64, messages: entries.iter().map(browsed).collect() })
        }
        Err(e) => failure(&s, &e),
    }
}

/// A waiting message as a browse shows it: a UTF-8 body as text, any other base64.
fn browsed(entry: &Entry) -> BrowsedMessage {
    let m = &entry.message;
    let (body, body_encoding) = match std::str::from_utf8(&m.body) {
        Ok(text) => (text.to_string(), BodyEncoding::Utf8),
        Err(_) => (base64::engine::general_purpose::STANDARD.encode(&m.body), BodyEncoding::Base64),
    };
    BrowsedMessage { id: m.id.0, headers: m.headers.clone(), body, body_encoding, size: m.body.len() as u64, redelivered: entry.redelivered }
}

/// Checks a signed write and reads its body; `Err` is the answer already.
fn signed<T: serde::de::DeserializeOwned>(s: &AdminState, path: &str, headers: &HeaderMap, body: &[u8], expected: &str) -> Result<(T, Arc<Broker>), Box<Response>> {
    let request = super::signed_request(s, path, headers, body, &s.metrics.queue_requests, expected)?;
    Ok((request, broker_to_change(s)?))
}

/// `POST /queues/purge`: see [`api::QUEUE_PURGE`].
async fn purge(State(s): State<AdminState>, headers: HeaderMap, body: Bytes) -> Response {
    let (request, broker) = match signed::<PurgeRequest>(&s, api::QUEUE_PURGE, &headers, &body, r#"{"queue":"/queue/NAME"}"#) {
        Ok(r) => r,
        Err(refused) => return *refused,
    };
    match broker.purge_queue(&request.queue).await {
        Ok(removed) => done(&s, PurgeReply { queue: request.queue, removed }),
        Err(e) => failure(&s, &e),
    }
}

/// `POST /queues/delete`: see [`api::QUEUE_DELETE`].
async fn delete(State(s): State<AdminState>, headers: HeaderMap, body: Bytes) -> Response {
    let (request, broker) = match signed::<DeleteRequest>(&s, api::QUEUE_DELETE, &headers, &body, r#"{"queue":"/queue/NAME","ids":[1,2]}"#) {
        Ok(r) => r,
        Err(refused) => return *refused,
    };
    let ids: Vec<MessageId> = request.ids.iter().copied().map(MessageId).collect();
    match broker.delete_messages(&request.queue, &ids).await {
        Ok(outcome) => done(&s, DeleteReply { queue: request.queue, removed: outcome.count, missing: outcome.missing.iter().map(|id| id.0).collect() }),
        Err(e) => failure(&s, &e),
    }
}

/// `POST /queues/move`: see [`api::QUEUE_MOVE`].
async fn move_messages(State(s): State<AdminState>, headers: HeaderMap, body: Bytes) -> Response {
    let expected = r#"{"from":"/queue/A","to":"/queue/B"} with "ids":[1,2] or "limit":10 (neither: all)"#;
    let (request, broker) = match signed::<MoveRequest>(&s, api::QUEUE_MOVE, &headers, &body, expected) {
        Ok(r) => r,
        Err(refused) => return *refused,
    };
    let pick = match (&request.ids, request.limit) {
        (None, None) => Pick::All,
        (None, Some(n)) => Pick::First(n),
        (Some(ids), None) => Pick::Ids(ids.iter().copied().map(MessageId).collect()),
        (Some(_), Some(_)) => return refuse(&s, StatusCode::BAD_REQUEST, "refused", "give ids or limit, not both".into()),
    };
    match broker.move_messages(&request.from, &request.to, pick).await {
        Ok(outcome) => done(
            &s,
            MoveReply { from: request.from, to: request.to, moved: outcome.count, missing: outcome.missing.iter().map(|id| id.0).collect() },
        ),
        Err(e) => failure(&s, &e),
    }
}

