//! Controller scenarios: the real `reconcile` against a mock Kubernetes API server and a fake
//! broker admin endpoint (`/status` answers; switchover, drain and fence requests recorded and
//! answered as canned). Each scenario lists, in order, every call a reconcile must make
//! (method, path, the query where it matters, content type) with the API server's canned
//! answer, then checks the bodies that matter and the `Action` returned. A call the scenario
//! does not expect, or one it expects and never sees, fails the test with both lists side by
//! side.
//!
//! One reconcile's calls, in order: dereference (GET the BrokerGroup, the Secrets it names,
//! LIST its StatefulSets), apply (server-side applies), observe (metadata lists of the six
//! owned kinds, LIST pods, LIST Leases), act (Lease releases, deletions, claim resizes, pod
//! deletions; switchovers, fences and drains go to the brokers; then the merge patch clearing
//! finished switchover entries), status (pod role labels, every Event, the status apply).

use std::collections::{BTreeMap, VecDeque};
use std::fmt::Write as _;
use std::sync::Arc;
use std::time::Duration;

use duomq_broker::admin::api::{
    BrokerStatus, DrainState, DrainStatus, FenceReply, SwitchoverReply,
};
use duomq_operator::api::{BrokerGroup, BrokerGroupStatus, FailoverReason, PendingSwitchover};
use duomq_operator::controller::metrics::Metrics;
use duomq_operator::controller::{reconcile, BrokerStatusSource, Context, Endpoint, Error, RECONCILE_DEADLINE};
use futures::future::BoxFuture;
use http::{Method, Request, Response, StatusCode};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use k8s_openapi::jiff::Timestamp;
use k8s_openapi::ByteString;
use kube::client::Body;
use kube::runtime::controller::Action;
use kube::Client;
use parking_lot::Mutex;
use serde_json::{json, Value};
use tower_test::mock::Handle;

// ---------------------------------------------------------------------------------------------
// The scenario harness
// ---------------------------------------------------------------------------------------------

const NS: &str = "default";
const UID: &str = "5b0d7f6e-1c2a-4e8b-9f3d-000000000001";
/// A previous BrokerGroup of the same name: what it owned is not ours to delete.
const OTHER_UID: &str = "5b0d7f6e-1c2a-4e8b-9f3d-000000000002";
const SELECTOR: &str = "app.kubernetes.io/instance=pair";
const APPLY: &str = "application/apply-patch+yaml";
const MERGE: &str = "application/merge-patch+json";
const JSON: &str = "application/json";
/// The Accept header of a metadata-only list.
const METADATA_LIST: &str = "as=PartialObjectMetadataList";
/// Generous: a reconcile against the mock takes milliseconds; this only turns a hang into a
/// failure that shows how far the reconcile got.
const RECONCILE_TIMEOUT: Duration = Duration::from_secs(10);

/// What the mock API server answers to one expected call.
enum Reply {
    /// 200 with the request's own body (an apply or a create returns what was sent, closely
    /// enough for the controller, which does not read it).
    Echo,
    Json(StatusCode, Value),
}

/// One call a scenario expects, and its answer.
struct Call {
    method: Method,
    /// Exact, or a prefix when it ends with `*` (names the API server or kube generate).
    path: String,
    /// Query parameters that must be there, exactly (in any order); `None`: not checked.
    query: Option<Vec<(String, String)>>,
    content_type: Option<&'static str>,
    /// A fragment the Accept header must contain.
    accept: Option<&'static str>,
    reply: Reply,
}

impl Call {
    fn new(method: Method, path: impl Into<String>) -> Call {
        Call {
            method,
            path: path.into(),
            query: None,
            content_type: None,
            accept: None,
            reply: Reply::Echo,
        }
    }

    fn query(mut self, pairs: &[(&str, &str)]) -> Call {
        let mut q: Vec<(String, String)> = pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        q.sort();
        self.query = Some(q);
        self
    }

    fn content_type(mut self, content_type: &'static str) -> Call {
        self.content_type = Some(content_type);
        self
    }

    fn accept(mut self, fragment: &'static str) -> Call {
        self.accept = Some(fragment);
        self
    }

    /// 200 with this object.
    fn returns(mut self, object: Value) -> Call {
        self.reply = Reply::Json(StatusCode::OK, object);
        self
    }

    /// 404 with the Status the API server sends.
    fn not_found(mut self) -> Call {
        let name = self.path.rsplit('/').next().unwrap_or_default().to_string();
        self.reply = Reply::Json(
            StatusCode::NOT_FOUND,
            json!({
                "apiVersion": "v1", "kind": "Status", "metadata": {}, "status": "Failure",
                "message": format!("\"{name}\" not found"), "reason": "NotFound", "code": 404,
            }),
        );
        self
    }

    /// `code` with the Status the API server sends for a refusal (`reason`, `message`).
    fn refused(mut self, code: StatusCode, reason: &str, message: &str) -> Call {
        self.reply = Reply::Json(
            code,
            json!({
                "apiVersion": "v1", "kind": "Status", "metadata": {}, "status": "Failure",
                "message": message, "reason": reason, "code": code.as_u16(),
            }),
        );
        self
    }

    /// 200 with a list of these items.
    fn items(self, items: Vec<Value>) -> Call {
        self.returns(json!({
            "apiVersion": "v1", "kind": "List", "metadata": {"resourceVersion": "1"}, "items": items,
        }))
    }

    fn describe(&self) -> String {
        describe(
            &self.method,
            &self.path,
            self.query.as_deref().unwrap_or_default(),
            self.content_type,
        )
    }

    /// Why `seen` is not this call, if it is not.
    fn mismatch(&self, seen: &Seen) -> Option<String> {
        let path_matches = match self.path.strip_suffix('*') {
            Some(prefix) => seen.path.starts_with(prefix),
            None => seen.path == self.path,
        };
        if seen.method != self.method || !path_matches {
            return Some("another method or path".into());
        }
        if let Some(q) = &self.query {
            if &seen.query != q {
                return Some(format!("query {:?}, expected {:?}", seen.query, q));
            }
        }
        if let Some(ct) = self.content_type {
            if seen.content_type.as_deref() != Some(ct) {
                return Some(format!(
                    "content type {:?}, expected {ct}",
                    seen.content_type
                ));
            }
        }
        if let Some(accept) = self.accept {
            if !seen.accept.as_deref().is_some_and(|a| a.contains(accept)) {
                return Some(format!(
                    "accept {:?}, expected it to contain {accept}",
                    seen.accept
                ));
            }
        }
        None
    }
}

fn get(path: &str) -> Call {
    Call::new(Method::GET, path)
}

/// A server-side apply with the operator's one field manager, forced.
fn apply(path: &str) -> Call {
    Call::new(Method::PATCH, path)
        .query(&[("fieldManager", "duomq-operator"), ("force", "true")])
        .content_type(APPLY)
}

fn merge_patch(path: &str) -> Call {
    Call::new(Method::PATCH, path)
        .query(&[])
        .content_type(MERGE)
}

/// A list of a BrokerGroup's objects by its instance label, metadata only.
fn list_metadata(path: &str) -> Call {
    Call::new(Method::GET, path)
        .query(&[("labelSelector", SELECTOR)])
        .accept(METADATA_LIST)
}

/// A list of a BrokerGroup's objects by its instance label, whole objects.
fn list(path: &str) -> Call {
    Call::new(Method::GET, path).query(&[("labelSelector", SELECTOR)])
}

fn delete(path: &str) -> Call {
    Call::new(Method::DELETE, path)
        .query(&[])
        .content_type(JSON)
        .returns(json!({
            "apiVersion": "v1", "kind": "Status", "metadata": {}, "status": "Success",
        }))
}

/// kube's event Recorder creating an event (events.k8s.io/v1).
fn post_event() -> Call {
    Call::new(
        Method::POST,
        format!("/apis/events.k8s.io/v1/namespaces/{NS}/events"),
    )
    .query(&[])
    .content_type(JSON)
}

/// kube's event Recorder counting up the series of an event it created (named `<object>.<time>`).
fn patch_event_series() -> Call {
    merge_patch(&format!(
        "/apis/events.k8s.io/v1/namespaces/{NS}/events/pair.*"
    ))
}

/// One request the reconcile made.
#[derive(Debug, Clone)]
struct Seen {
    method: Method,
    path: String,
    /// Decoded, sorted, without the empty pairs kube's URLs carry (`?&force=true`).
    query: Vec<(String, String)>,
    content_type: Option<String>,
    accept: Option<String>,
    body: Vec<u8>,
}

impl Seen {
    fn describe(&self) -> String {
        describe(
            &self.method,
            &self.path,
            &self.query,
            self.content_type.as_deref(),
        )
    }

    fn json(&self) -> Value {
        serde_json::from_slice(&self.body)
            .unwrap_or_else(|e| panic!("body of {} is not JSON: {e}", self.describe()))
    }
}

/// `METHOD /path?k=v&… [content type]`, one line of a scenario report.
fn describe(
    method: &Method,
    path: &str,
    query: &[(String, String)],
    content_type: Option<&str>,
) -> String {
    let mut out = format!("{method} {path}");
    for (i, (k, v)) in query.iter().enumerate() {
        let _ = write!(out, "{}{k}={v}", if i == 0 { '?' } else { '&' });
    }
    if let Some(ct) = content_type {
        let _ = write!(out, " [{ct}]");
    }
    out
}

fn percent_decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'+' => out.push(b' '),
            b'%' => match s
                .get(i + 1..i + 3)
                .and_then(|hex| u8::from_str_radix(hex, 16).ok())
            {
                Some(byte) => {
                    out.push(byte);
                    i += 2;
                }
                None => out.push(b'%'),
            },
            b => out.push(b),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

fn parse_query(query: Option<&str>) -> Vec<(String, String)> {
    let mut pairs: Vec<(String, String)> = query
        .unwrap_or_default()
        .split('&')
        .filter(|p| !p.is_empty())
        .map(|p| {
            let (k, v) = p.split_once('=').unwrap_or((p, ""));
            (percent_decode(k), percent_decode(v))
        })
        .collect();
    pairs.sort();
    pairs
}

/// One exchange: what the scenario expected there (if anything) and what the reconcile did.
struct Exchange {
    expected: Option<String>,
    seen: Seen,
    problem: Option<String>,
}

#[derive(Default)]
struct ApiServer {
    expected: VecDeque<Call>,
    exchanges: Vec<Exchange>,
}

impl ApiServer {
    fn answer(&mut self, seen: Seen) -> Response<Body> {
        let (expected, problem, reply) = match self.expected.pop_front() {
            Some(call) => {
                let problem = call.mismatch(&seen);
                (Some(call.describe()), problem, call.reply)
            }
            None => (None, Some("not in the scenario".into()), Reply::Echo),
        };
        let response = match (&problem, reply) {
            (None, Reply::Echo) => json_response(StatusCode::OK, seen.body.clone()),
            (None, Reply::Json(status, value)) => {
                json_response(status, serde_json::to_vec(&value).unwrap_or_default())
            }
            // Fail the reconcile at once: the test then reports the exchange.
            (Some(why), _) => json_response(
                StatusCode::INTERNAL_SERVER_ERROR,
                serde_json::to_vec(&json!({
                    "apiVersion": "v1", "kind": "Status", "metadata": {}, "status": "Failure",
                    "message": format!("the scenario did not expect this call: {why}"),
                    "reason": "InternalError", "code": 500,
                }))
                .unwrap_or_default(),
            ),
        };
        self.exchanges.push(Exchange {
            expected,
            seen,
            problem,
        });
        response
    }

    /// Every call was expected and every expected call was made.
    fn as_expected(&self) -> bool {
        self.expected.is_empty() && self.exchanges.iter().all(|e| e.problem.is_none())
    }

    /// The calls made side by side with the ones expected.
    fn report(&self) -> String {
        let missing: Vec<String> = self.expected.iter().map(Call::describe).collect();
        let mut out = String::from(
            "the reconcile's calls against the scenario's \
             (= as expected, ! differs, + unexpected, - never made):\n",
        );
        for (i, e) in self.exchanges.iter().enumerate() {
            match (&e.expected, &e.problem) {
                (Some(_), None) => {
                    let _ = writeln!(out, "  {:>2} = {}", i + 1, e.seen.describe());
                }
                (Some(expected), Some(why)) => {
                    let _ = writeln!(
                        out,
                        "  {:>2} ! expected {expected}\n       but got  {}\n       ({why})",
                        i + 1,
                        e.seen.describe()
                    );
                }
                (None, _) => {
                    let _ = writeln!(out, "  {:>2} + {}", i + 1, e.seen.describe());
                }
            }
        }
        for (i, m) in missing.iter().enumerate() {
            let _ = writeln!(out, "  {:>2} - {m}", self.exchanges.len() + i + 1);
        }
        out
    }
}

fn json_response(status: StatusCode, body: Vec<u8>) -> Response<Body> {
    Response::builder()
        .status(status)
        .header(http::header::CONTENT_TYPE, JSON)
        .body(Body::from(body))
        .unwrap_or_else(|e| panic!("failed to build a response: {e}"))
}

async fn serve(mut handle: Handle<Request<Body>, Response<Body>>, server: Arc<Mutex<ApiServer>>) {
    while let Some((request, send)) = handle.next_request().await {
        let (parts, body) = request.into_parts();
        let body = body
            .collect_bytes()
            .await
            .map(|b| b.to_vec())
            .unwrap_or_default();
        let header = |name: http::header::HeaderName| {
            parts
                .headers
                .get(name)
                .and_then(|v| v.to_str().ok())
                .map(str::to_string)
        };
        let seen = Seen {
            method: parts.method.clone(),
            path: parts.uri.path().to_string(),
            query: parse_query(parts.uri.query()),
            content_type: header(http::header::CONTENT_TYPE),
            accept: header(http::header::ACCEPT),
            body,
        };
        let response = server.lock().answer(seen);
        send.send_response(response);
    }
}

/// Admin requests of one kind (switchover, drain, fence): recorded as (`ip:port`, what was
/// asked, password) and answered as canned per pod IP ("connection refused" when nothing is).
struct Canned<R> {
    answers: Mutex<BTreeMap<String, Result<R, String>>>,
    asked: Mutex<Vec<(String, String, String)>>,
}

impl<R> Default for Canned<R> {
    fn default() -> Self {
        Canned {
            answers: Mutex::new(BTreeMap::new()),
            asked: Mutex::new(Vec::new()),
        }
    }
}

impl<R: Send + 'static> Canned<R> {
    /// The answer to the next request to the broker at `ip`.
    fn can(&self, ip: &str, answer: Result<R, String>) {
        self.answers.lock().insert(ip.to_string(), answer);
    }

    fn ask<'a>(&self, at: &Endpoint, what: String) -> BoxFuture<'a, Result<R, String>> {
        let (ip, port) = (&at.ip, at.port);
        let password = at.password.clone().unwrap_or_default();
        self.asked
            .lock()
            .push((format!("{ip}:{port}"), what, password));
        let answer = self
            .answers
            .lock()
            .remove(ip)
            .unwrap_or_else(|| Err(format!("connection refused by {ip}:{port}")));
        Box::pin(async move { answer })
    }

    /// The requests since the last look, as `ip:port what`; each must be signed with the
    /// cluster password.
    fn take(&self) -> Vec<String> {
        std::mem::take(&mut *self.asked.lock())
            .into_iter()
            .map(|(addr, what, password)| {
                assert_eq!(password, "pw", "signed with the cluster password");
                format!("{addr} {what}")
            })
            .collect()
    }
}

/// Answers `/status` for brokers that do not run: per pod IP, or "connection refused"; and
/// records switchover, drain and fence requests, answering them as canned.
#[derive(Default)]
struct FakeBrokers {
    answers: Mutex<BTreeMap<String, BrokerStatus>>,
    asked: Mutex<Vec<String>>,
    /// The last `/status` request per pod IP: how it was signed and dialled.
    endpoints: Mutex<BTreeMap<String, Endpoint>>,
    /// Switchovers, asked as `-> <target>`.
    switchovers: Canned<SwitchoverReply>,
    /// Drains, asked as `-> <target groups, comma-separated>`.
    drains: Canned<DrainStatus>,
    /// Fences, asked as `fenced` or `unfenced`, with ` force` when forced.
    fences: Canned<FenceReply>,
}

impl FakeBrokers {
    fn answer(&self, ip: &str, status: Value) {
        let status: BrokerStatus = serde_json::from_value(status)
            .unwrap_or_else(|e| panic!("the fake status for {ip} is not a BrokerStatus: {e}"));
        self.answers.lock().insert(ip.to_string(), status);
    }

    fn silence(&self, ip: &str) {
        self.answers.lock().remove(ip);
    }

    /// The `ip:port`s asked since the last call, sorted.
    fn asked(&self) -> Vec<String> {
        let mut asked = std::mem::take(&mut *self.asked.lock());
        asked.sort();
        asked
    }
}

impl BrokerStatusSource for FakeBrokers {
    fn status<'a>(&'a self, at: &'a Endpoint) -> BoxFuture<'a, Result<BrokerStatus, String>> {
        let (ip, port) = (&at.ip, at.port);
        self.asked.lock().push(format!("{ip}:{port}"));
        self.endpoints.lock().insert(ip.clone(), at.clone());
        let answer = self
            .answers
            .lock()
            .get(ip)
            .cloned()
            .ok_or_else(|| format!("connection refused by {ip}:{port}"));
        Box::pin(async move { answer })
    }

    fn switchover<'a>(
        &'a self,
        at: &'a Endpoint,
        to: &'a str,
    ) -> BoxFuture<'a, Result<SwitchoverReply, String>> {
        self.switchovers.ask(at, format!("-> {to}"))
    }

    fn drain<'a>(
        &'a self,
        at: &'a Endpoint,
        targets: &'a [String],
    ) -> BoxFuture<'a, Result<DrainStatus, String>> {
        self.drains.ask(at, format!("-> {}", targets.join(",")))
    }

    fn fence<'a>(
        &'a self,
        at: &'a Endpoint,
        fenced: bool,
        force: bool,
    ) -> BoxFuture<'a, Result<FenceReply, String>> {
        let verb = if fenced { "fenced" } else { "unfenced" };
        let what = format!("{verb}{}", if force { " force" } else { "" });
        self.fences.ask(at, what)
    }
}

/// One controller (one `Context`, as the real controller shares across reconciles) in front of
/// the mock API server.
struct Harness {
    ctx: Arc<Context>,
    brokers: Arc<FakeBrokers>,
    server: Arc<Mutex<ApiServer>>,
    task: tokio::task::JoinHandle<()>,
}

/// What one reconcile did.
struct Step {
    result: Result<Action, Error>,
    requests: Vec<Seen>,
}

impl Harness {
    fn new() -> Harness {
        let (service, handle) = tower_test::mock::pair::<Request<Body>, Response<Body>>();
        let client = Client::new(service, NS);
        let server = Arc::new(Mutex::new(ApiServer::default()));
        let task = tokio::spawn(serve(handle, server.clone()));
        let brokers = Arc::new(FakeBrokers::default());
        let metrics = Arc::new(Metrics::new(
            &mut prometheus_client::registry::Registry::default(),
        ));
        let ctx = Arc::new(Context::new(client, metrics, brokers.clone()));
        Harness {
            ctx,
            brokers,
            server,
            task,
        }
    }

    /// Reconciles `bg` once; fails unless it made exactly `calls`, in order.
    async fn reconcile(&self, bg: &BrokerGroup, calls: Vec<Call>) -> Step {
        {
            let mut server = self.server.lock();
            server.expected = calls.into();
            server.exchanges.clear();
        }
        let outcome = tokio::time::timeout(
            RECONCILE_TIMEOUT,
            reconcile(Arc::new(bg.clone()), self.ctx.clone()),
        )
        .await;
        let server = self.server.lock();
        let Ok(result) = outcome else {
            panic!(
                "the reconcile did not finish within {RECONCILE_TIMEOUT:?}\n{}",
                server.report()
            );
        };
        if !server.as_expected() {
            panic!("{}\nthe reconcile returned {result:?}", server.report());
        }
        Step {
            result,
            requests: server.exchanges.iter().map(|e| e.seen.clone()).collect(),
        }
    }
}

impl Drop for Harness {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl Step {
    fn action(&self) -> Action {
        match &self.result {
            Ok(action) => action.clone(),
            Err(e) => panic!(
                "the reconcile failed: {e} ({:?})",
                std::error::Error::source(e).map(|s| s.to_string())
            ),
        }
    }

    /// The body of the one request with this method and path.
    fn body(&self, method: Method, path: &str) -> Value {
        let found: Vec<&Seen> = self
            .requests
            .iter()
            .filter(|s| s.method == method && s.path == path)
            .collect();
        match found.as_slice() {
            [one] => one.json(),
            _ => panic!("expected one {method} {path}, found {}", found.len()),
        }
    }

    /// The status the reconcile patched.
    fn status(&self) -> BrokerGroupStatus {
        let body = self.body(
            Method::PATCH,
            &format!("/apis/duomq.io/v1alpha1/namespaces/{NS}/brokergroups/pair/status"),
        );
        assert_eq!(body["apiVersion"], "duomq.io/v1alpha1");
        assert_eq!(body["kind"], "BrokerGroup");
        serde_json::from_value(body["status"].clone())
            .unwrap_or_else(|e| panic!("the patched status does not parse: {e}"))
    }

    /// Every server-side apply's path and exact body bytes, in order.
    fn applies(&self) -> Vec<(String, Vec<u8>)> {
        self.requests
            .iter()
            .filter(|s| s.content_type.as_deref() == Some(APPLY) && !s.path.ends_with("/status"))
            .map(|s| (s.path.clone(), s.body.clone()))
            .collect()
    }
}

// ---------------------------------------------------------------------------------------------
// Fixtures: the BrokerGroup of `manifests/examples/pair.yaml` and what the cluster holds
// ---------------------------------------------------------------------------------------------

fn pair() -> BrokerGroup {
    let mut bg: BrokerGroup =
        serde_yaml::from_str(include_str!("../../manifests/examples/pair.yaml"))
            .unwrap_or_else(|e| panic!("manifests/examples/pair.yaml is not a BrokerGroup: {e}"));
    bg.metadata.namespace = Some(NS.into());
    bg.metadata.uid = Some(UID.into());
    bg.metadata.generation = Some(1);
    bg.metadata.resource_version = Some("1".into());
    bg
}

fn with_status(mut bg: BrokerGroup, status: BrokerGroupStatus) -> BrokerGroup {
    bg.status = Some(status);
    bg
}

fn to_json(bg: &BrokerGroup) -> Value {
    serde_json::to_value(bg).unwrap_or_else(|e| panic!("a BrokerGroup serializes: {e}"))
}

fn core(plural: &str, name: &str) -> String {
    format!("/api/v1/namespaces/{NS}/{plural}/{name}")
}

fn apis(group_version: &str, plural: &str, name: &str) -> String {
    format!("/apis/{group_version}/namespaces/{NS}/{plural}/{name}")
}

fn status_path() -> String {
    apis("duomq.io/v1alpha1", "brokergroups", "pair") + "/status"
}

fn base64(text: &str) -> Value {
    serde_json::to_value(ByteString(text.as_bytes().to_vec())).unwrap_or(Value::Null)
}

fn unbase64(value: &Value) -> String {
    let bytes: ByteString = serde_json::from_value(value.clone())
        .unwrap_or_else(|e| panic!("{value} is not base64: {e}"));
    String::from_utf8(bytes.0).unwrap_or_else(|e| panic!("{value} is not UTF-8: {e}"))
}

fn owner(uid: &str) -> Value {
    json!([{
        "apiVersion": "duomq.io/v1alpha1", "kind": "BrokerGroup", "name": "pair", "uid": uid,
        "controller": true, "blockOwnerDeletion": true,
    }])
}

/// An object as a metadata-only list returns it; `owner_uid` None: no owner reference.
fn metadata(name: &str, owner_uid: Option<&str>) -> Value {
    let mut meta =
        json!({"name": name, "namespace": NS, "labels": {"app.kubernetes.io/instance": "pair"}});
    if let Some(uid) = owner_uid {
        meta["ownerReferences"] = owner(uid);
    }
    json!({"apiVersion": "meta.k8s.io/v1", "kind": "PartialObjectMetadata", "metadata": meta})
}

/// The metadata lists, in the order the controller's observation asks for them, of what a
/// BrokerGroup `pair` with `groups` owns once applied, plus `extra` (kind plural, item)
/// entries. Claims are not listed: they are never deleted.
fn orphan_lists(groups: &[&str], extra: &[(&str, Value)]) -> [Call; 6] {
    let owned = Some(UID);
    let of = |plural: &str| {
        extra
            .iter()
            .filter(|(p, _)| *p == plural)
            .map(|(_, v)| v.clone())
            .collect::<Vec<_>>()
    };
    let mut sts: Vec<Value> = groups.iter().map(|g| metadata(g, owned)).collect();
    sts.extend(of("statefulsets"));
    let mut svc: Vec<Value> = groups
        .iter()
        .flat_map(|g| [metadata(&format!("{g}-members"), owned), metadata(g, owned)])
        .collect();
    svc.push(metadata("pair", owned));
    svc.extend(of("services"));
    let mut cms: Vec<Value> = groups
        .iter()
        .map(|g| metadata(&format!("{g}-config"), owned))
        .collect();
    cms.extend(of("configmaps"));
    let mut pdbs: Vec<Value> = groups.iter().map(|g| metadata(g, owned)).collect();
    pdbs.extend(of("poddisruptionbudgets"));
    let mut secrets = vec![metadata("pair-cluster", owned)];
    secrets.extend(of("secrets"));
    let mut leases: Vec<Value> = groups.iter().map(|g| metadata(g, owned)).collect();
    leases.extend(of("leases"));
    [
        list_metadata(&format!("/apis/apps/v1/namespaces/{NS}/statefulsets")).items(sts),
        list_metadata(&format!("/api/v1/namespaces/{NS}/services")).items(svc),
        list_metadata(&format!("/api/v1/namespaces/{NS}/configmaps")).items(cms),
        list_metadata(&format!(
            "/apis/policy/v1/namespaces/{NS}/poddisruptionbudgets"
        ))
        .items(pdbs),
        list_metadata(&format!("/api/v1/namespaces/{NS}/secrets")).items(secrets),
        list_metadata(&format!(
            "/apis/coordination.k8s.io/v1/namespaces/{NS}/leases"
        ))
        .items(leases),
    ]
}

/// Every server-side apply of a replicated BrokerGroup `pair` with these groups, in order.
fn applies(groups: &[&str]) -> Vec<Call> {
    let mut calls = vec![
        apply(&core("serviceaccounts", "pair-broker")),
        apply(&apis(
            "rbac.authorization.k8s.io/v1",
            "roles",
            "pair-broker",
        )),
        apply(&apis(
            "rbac.authorization.k8s.io/v1",
            "rolebindings",
            "pair-broker",
        )),
        apply(&core("secrets", "pair-cluster")),
    ];
    calls.extend(
        groups
            .iter()
            .map(|g| apply(&core("configmaps", &format!("{g}-config")))),
    );
    for g in groups {
        calls.push(apply(&core("services", &format!("{g}-members"))));
        calls.push(apply(&core("services", g)));
    }
    calls.push(apply(&core("services", "pair")));
    calls.extend(
        groups
            .iter()
            .map(|g| apply(&apis("policy/v1", "poddisruptionbudgets", g))),
    );
    calls.extend(
        groups
            .iter()
            .map(|g| apply(&apis("coordination.k8s.io/v1", "leases", g))),
    );
    calls.extend(
        groups
            .iter()
            .map(|g| apply(&apis("apps/v1", "statefulsets", g))),
    );
    calls
}

/// The cluster-credentials Secret as the API server holds it.
fn cluster_secret(password: &str) -> Value {
    json!({
        "apiVersion": "v1", "kind": "Secret",
        "metadata": {"name": "pair-cluster", "namespace": NS, "ownerReferences": owner(UID)},
        "type": "Opaque",
        "data": {"user": base64("duomq-cluster"), "password": base64(password)},
    })
}

/// A group's StatefulSet as the API server holds it: just created (no status yet) or rolled out.
fn statefulset(name: &str, rolled_out: bool) -> Value {
    let mut sts = json!({
        "apiVersion": "apps/v1", "kind": "StatefulSet",
        "metadata": {"name": name, "namespace": NS, "generation": 1, "ownerReferences": owner(UID)},
        "spec": {"replicas": 2,
                 "selector": {"matchLabels": {"app.kubernetes.io/instance": "pair", "duomq.io/group": name}},
                 "serviceName": format!("{name}-members"), "template": {}},
    });
    if rolled_out {
        sts["status"] = json!({
            "observedGeneration": 1, "replicas": 2, "readyReplicas": 2, "updatedReplicas": 2,
            "currentRevision": format!("{name}-7d4b9c"), "updateRevision": format!("{name}-7d4b9c"),
        });
    }
    sts
}

/// A broker pod; `running`: its broker container runs (else it is in CrashLoopBackOff).
fn broker_pod(name: &str, ip: &str, running: bool, role: Option<&str>) -> Value {
    let group = group_of(name);
    let mut labels = json!({
        "app.kubernetes.io/name": "duomq-broker", "app.kubernetes.io/instance": "pair",
        "app.kubernetes.io/component": "broker", "app.kubernetes.io/managed-by": "duomq-operator",
        "duomq.io/group": group,
    });
    if let Some(role) = role {
        labels["duomq.io/role"] = json!(role);
    }
    let state = if running {
        json!({"running": {"startedAt": "2025-01-01T00:00:00Z"}})
    } else {
        json!({"waiting": {"reason": "CrashLoopBackOff"}})
    };
    json!({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": name, "namespace": NS, "labels": labels},
        "spec": {
            "nodeName": format!("node-{}", name.rsplit('-').next().unwrap_or("0")),
            "containers": [{"name": "broker", "image": "duomq/broker:0.1.0"}],
        },
        "status": {
            "phase": "Running", "podIP": ip,
            "containerStatuses": [{
                "name": "broker", "image": "duomq/broker:0.1.0", "imageID": "", "ready": running,
                "restartCount": 0, "state": state,
            }],
        },
    })
}

fn group_of(pod: &str) -> &str {
    pod.rsplit_once('-').map(|(group, _)| group).unwrap_or(pod)
}

/// The `/status` of a live broker with one synced backup.
fn live_status(node: &str, epoch: u64, backup: &str) -> Value {
    json!({
        "version": "0.1.0", "nodeId": node, "role": "live", "uptimeSeconds": 120,
        "connections": 3, "memoryBytes": 0, "queues": [],
        "ha": {"group": group_of(node), "epoch": epoch, "live": node, "sync": null, "alone": false,
               "backups": [{"node": backup, "state": "synced", "lagBytes": 0, "lagRecords": 0}]},
    })
}

/// The `/status` of a synced backup.
fn backup_status(node: &str, epoch: u64, live: &str) -> Value {
    json!({
        "version": "0.1.0", "nodeId": node, "role": "backup", "uptimeSeconds": 118,
        "connections": 0, "memoryBytes": 0, "queues": [],
        "ha": {"group": group_of(node), "epoch": epoch, "live": live, "alone": false, "backups": [],
               "sync": {"state": "synced", "lagBytes": 0, "lagRecords": 0}},
    })
}

/// The reconcile's first call: it reads the BrokerGroup back (its status as last written,
/// not the watch cache's copy); the API server answers `bg`.
fn read_status(bg: &BrokerGroup) -> Call {
    get(&apis("duomq.io/v1alpha1", "brokergroups", "pair")).returns(to_json(bg))
}

/// The list of the BrokerGroup's StatefulSets (whole objects) that ends the dereference.
fn list_statefulsets(sets: Vec<Value>) -> Call {
    list(&format!("/apis/apps/v1/namespaces/{NS}/statefulsets")).items(sets)
}

/// The list of pods (answered with `pods`), then of Leases (none), that end the observation.
fn pods_then_leases(pods: Vec<Value>) -> [Call; 2] {
    pods_and_leases(pods, vec![])
}

/// [`pods_then_leases`] with the Leases the API server answers.
fn pods_and_leases(pods: Vec<Value>, leases: Vec<Value>) -> [Call; 2] {
    [
        list(&format!("/api/v1/namespaces/{NS}/pods")).items(pods),
        list(&format!(
            "/apis/coordination.k8s.io/v1/namespaces/{NS}/leases"
        ))
        .items(leases),
    ]
}

/// The calls that create `pair` in an empty cluster (scenario 1).
fn create_calls(bg: &BrokerGroup) -> Vec<Call> {
    let mut calls = vec![
        read_status(bg),
        get(&core("secrets", "pair-cluster")).not_found(),
        list_statefulsets(vec![]),
    ];
    calls.extend(applies(&["pair-g0"]));
    calls.extend(orphan_lists(&["pair-g0"], &[]));
    calls.extend(pods_then_leases(vec![]));
    calls.push(apply(&status_path()).returns(to_json(bg)));
    calls
}

/// The status of `pair` once every group in `lives` (group, live pod, epoch) has its live and
/// its second member synced.
fn settled(lives: &[(&str, &str, u64)]) -> BrokerGroupStatus {
    let groups: Vec<Value> = lives
        .iter()
        .map(|(group, live, epoch)| {
            json!({
                "name": group, "live": live, "preferredLive": format!("{group}-0"), "epoch": epoch,
                "backups": [{"pod": format!("{group}-1"), "state": "backup", "synced": true, "lag": 0}],
            })
        })
        .collect();
    serde_json::from_value(json!({
        "observedGeneration": 1, "live": format!("{0}/{0}", lives.len()), "failovers": 0, "groups": groups,
    }))
    .unwrap_or_else(|e| panic!("a status: {e}"))
}

/// The calls of a reconcile of `pair` with `groups` whose objects all exist (every
/// StatefulSet rolled out), up to listing the pods (answered with `pods`) and Leases.
fn calls_until_observed(bg: &BrokerGroup, groups: &[&str], pods: Vec<Value>) -> Vec<Call> {
    calls_observing(
        bg,
        groups,
        pods,
        groups.iter().map(|g| statefulset(g, true)).collect(),
    )
}

/// [`calls_until_observed`] with the StatefulSets the API server answers.
fn calls_observing(
    bg: &BrokerGroup,
    groups: &[&str],
    pods: Vec<Value>,
    sets: Vec<Value>,
) -> Vec<Call> {
    let mut calls = vec![
        read_status(bg),
        get(&core("secrets", "pair-cluster")).returns(cluster_secret("pw")),
        list_statefulsets(sets),
    ];
    calls.extend(applies(groups));
    calls.extend(orphan_lists(groups, &[]));
    calls.extend(pods_then_leases(pods));
    calls
}

fn condition<'a>(status: &'a BrokerGroupStatus, kind: &str) -> (&'a str, &'a str) {
    let c = status
        .conditions
        .iter()
        .find(|c| c.type_ == kind)
        .unwrap_or_else(|| panic!("no {kind} condition in {status:?}"));
    (c.status.as_str(), c.reason.as_str())
}

// ---------------------------------------------------------------------------------------------
// Scenarios
// ---------------------------------------------------------------------------------------------

#[tokio::test]
async fn given_a_new_brokergroup_and_an_empty_cluster_when_reconciled_should_apply_every_object_in_order_and_report_progressing(
) {
    let h = Harness::new();
    let bg = pair();

    let step = h
        .reconcile(
            &bg,
            vec![
                // Dereference: the status as last written (not the watch cache's copy), the
                // cluster Secret, the StatefulSets that exist (none).
                get("/apis/duomq.io/v1alpha1/namespaces/default/brokergroups/pair")
                    .returns(to_json(&bg)),
                get("/api/v1/namespaces/default/secrets/pair-cluster").not_found(),
                list("/apis/apps/v1/namespaces/default/statefulsets").items(vec![]),
                // Apply.
                apply("/api/v1/namespaces/default/serviceaccounts/pair-broker"),
                apply("/apis/rbac.authorization.k8s.io/v1/namespaces/default/roles/pair-broker"),
                apply("/apis/rbac.authorization.k8s.io/v1/namespaces/default/rolebindings/pair-broker"),
                apply("/api/v1/namespaces/default/secrets/pair-cluster"),
                apply("/api/v1/namespaces/default/configmaps/pair-g0-config"),
                apply("/api/v1/namespaces/default/services/pair-g0-members"),
                apply("/api/v1/namespaces/default/services/pair-g0"),
                apply("/api/v1/namespaces/default/services/pair"),
                apply("/apis/policy/v1/namespaces/default/poddisruptionbudgets/pair-g0"),
                apply("/apis/coordination.k8s.io/v1/namespaces/default/leases/pair-g0"),
                apply("/apis/apps/v1/namespaces/default/statefulsets/pair-g0"),
                // Observe what it owns: everything listed is still rendered (or not ours), so
                // nothing is deleted. Claims are not listed: they are never deleted.
                list_metadata("/apis/apps/v1/namespaces/default/statefulsets")
                    .items(vec![metadata("pair-g0", Some(UID))]),
                list_metadata("/api/v1/namespaces/default/services").items(vec![]),
                list_metadata("/api/v1/namespaces/default/configmaps").items(vec![]),
                list_metadata("/apis/policy/v1/namespaces/default/poddisruptionbudgets").items(vec![]),
                list_metadata("/api/v1/namespaces/default/secrets")
                    .items(vec![metadata("pair-cluster", Some(UID))]),
                list_metadata("/apis/coordination.k8s.io/v1/namespaces/default/leases")
                    .items(vec![metadata("pair-g0", Some(UID))]),
                // Observe the pods (none yet) and Leases.
                list("/api/v1/namespaces/default/pods").items(vec![]),
                list("/apis/coordination.k8s.io/v1/namespaces/default/leases").items(vec![]),
                // Status.
                apply("/apis/duomq.io/v1alpha1/namespaces/default/brokergroups/pair/status")
                    .returns(to_json(&bg)),
            ],
        )
        .await;

    assert_eq!(
        step.action(),
        Action::requeue(Duration::from_secs(3)),
        "members are starting: look again soon"
    );
    assert!(h.brokers.asked().is_empty(), "no pod, no broker to ask");

    // Every applied object is owned by the BrokerGroup (so it is garbage collected with it)
    // and carries its instance label (so the orphan lists find it).
    for (path, body) in step.applies() {
        let object: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
        assert_eq!(object["metadata"]["ownerReferences"], owner(UID), "{path}");
        assert_eq!(
            object["metadata"]["labels"]["app.kubernetes.io/instance"], "pair",
            "{path}"
        );
        assert_eq!(
            object["metadata"]["labels"]["app.kubernetes.io/managed-by"], "duomq-operator",
            "{path}"
        );
        assert_eq!(object["metadata"]["namespace"], NS, "{path}");
    }
    let secret = step.body(
        Method::PATCH,
        "/api/v1/namespaces/default/secrets/pair-cluster",
    );
    assert_eq!(secret["kind"], "Secret");
    assert_eq!(unbase64(&secret["data"]["user"]), "duomq-cluster");
    let password = unbase64(&secret["data"]["password"]);
    assert!(
        password.len() == 32 && password.chars().all(|c| c.is_ascii_alphanumeric()),
        "a random password: {password:?}"
    );
    let role = step.body(
        Method::PATCH,
        "/apis/rbac.authorization.k8s.io/v1/namespaces/default/roles/pair-broker",
    );
    assert_eq!(role["rules"][0]["resources"], json!(["leases"]));
    assert_eq!(
        role["rules"][0]["resourceNames"],
        json!(["pair-g0"]),
        "the brokers may touch their own group's Lease only"
    );
    let config = step.body(
        Method::PATCH,
        "/api/v1/namespaces/default/configmaps/pair-g0-config",
    );
    let files: Vec<&String> = config["data"]
        .as_object()
        .map(|d| d.keys().collect())
        .unwrap_or_default();
    assert_eq!(
        files,
        ["pair-g0-0.yaml", "pair-g0-1.yaml"],
        "one broker.yaml per member"
    );
    let sts = step.body(
        Method::PATCH,
        "/apis/apps/v1/namespaces/default/statefulsets/pair-g0",
    );
    assert_eq!(sts["kind"], "StatefulSet");
    assert_eq!(sts["spec"]["replicas"], 2, "a live and one backup");
    assert_eq!(sts["spec"]["serviceName"], "pair-g0-members");
    let client_service = step.body(Method::PATCH, "/api/v1/namespaces/default/services/pair-g0");
    assert_eq!(
        client_service["spec"]["selector"]["duomq.io/role"], "live",
        "the client Service follows the live"
    );

    let status = step.status();
    assert_eq!(status.observed_generation, Some(1));
    assert_eq!(
        condition(&status, "Available"),
        ("False", "GroupsWithoutLive")
    );
    assert_eq!(
        condition(&status, "Progressing"),
        ("True", "MembersStarting")
    );
    assert_eq!(
        condition(&status, "Replicated"),
        ("False", "BackupsNotInSync")
    );
    assert_eq!(
        condition(&status, "Degraded"),
        ("False", "AsExpected"),
        "starting is not degraded"
    );
    assert!(status
        .conditions
        .iter()
        .all(|c| c.observed_generation == Some(1)));
    assert_eq!(status.live.as_deref(), Some("0/1"));
    assert_eq!(status.failovers, 0);
    assert_eq!(status.groups.len(), 1);
    let g0 = &status.groups[0];
    assert_eq!(g0.name, "pair-g0");
    assert_eq!(g0.preferred_live, "pair-g0-0");
    assert_eq!(g0.live, None);
    // With no live yet, every member is listed with its state.
    assert_eq!(
        g0.backups
            .iter()
            .map(|b| (b.pod.as_str(), b.state.as_str(), b.synced))
            .collect::<Vec<_>>(),
        [
            ("pair-g0-0", "missing", false),
            ("pair-g0-1", "missing", false)
        ]
    );
}

/// A Kubernetes API call that never answers (kube's read timeout is 295 s) must not hold
/// the BrokerGroup's reconciles up: the reconcile is cut off at the deadline and fails, so
/// the error policy retries it with the backoff.
#[tokio::test(start_paused = true)]
async fn given_an_api_server_that_never_answers_when_reconciled_should_fail_at_the_deadline_and_not_hang() {
    let (service, mut handle) = tower_test::mock::pair::<Request<Body>, Response<Body>>();
    let client = Client::new(service, NS);
    let metrics = Arc::new(Metrics::new(&mut prometheus_client::registry::Registry::default()));
    let ctx = Arc::new(Context::new(client, metrics, Arc::new(FakeBrokers::default())));
    let reconciling = tokio::spawn(reconcile(Arc::new(pair()), ctx));
    // The first request arrives and is never answered (the handle keeps the call open).
    let (request, _never) = handle.next_request().await.expect("the reconcile asks the API server");
    assert_eq!(request.method(), Method::GET, "{}", request.uri());
    let outcome = tokio::time::timeout(RECONCILE_DEADLINE * 2, reconciling)
        .await
        .expect("the reconcile ends by its deadline")
        .expect("the reconcile does not panic");
    assert!(
        matches!(outcome, Err(Error::TimedOut(after)) if after == RECONCILE_DEADLINE),
        "{outcome:?}"
    );
}

/// Changed with the one-way reconcile: the StatefulSets are read before applying, so the
/// second reconcile is the first to see the StatefulSet the first created (rolling out, a
/// status patch); the third, with nothing new, patches nothing.
#[tokio::test]
async fn given_an_applied_brokergroup_when_reconciled_again_unchanged_should_apply_identical_bodies_and_not_patch_status(
) {
    let h = Harness::new();
    let bg = pair();
    let first = h.reconcile(&bg, create_calls(&bg)).await;
    let status = first.status();
    let secret = first.body(Method::PATCH, &core("secrets", "pair-cluster"));

    // The API server now holds the Secret the first reconcile applied, the StatefulSet (not
    // rolled out yet) and the status it patched.
    let again = |bg: &BrokerGroup| {
        let mut calls = vec![
            read_status(bg),
            get(&core("secrets", "pair-cluster")).returns(secret.clone()),
            list_statefulsets(vec![statefulset("pair-g0", false)]),
        ];
        calls.extend(applies(&["pair-g0"]));
        calls.extend(orphan_lists(&["pair-g0"], &[]));
        calls.extend(pods_then_leases(vec![]));
        calls
    };
    let bg = with_status(bg, status);
    // The StatefulSet now shows as rolling out: the Progressing message says so.
    let mut calls = again(&bg);
    calls.push(apply(&status_path()).returns(to_json(&bg)));
    let second = h.reconcile(&bg, calls).await;
    let status = second.status();
    let progressing = status.conditions.iter().find(|c| c.type_ == "Progressing");
    assert!(
        progressing.is_some_and(|c| c.message.contains("rolling out: pair-g0")),
        "{progressing:?}"
    );

    // No status patch: nothing observed changed.
    let bg = with_status(bg, status);
    let third = h.reconcile(&bg, again(&bg)).await;

    assert_eq!(third.action(), Action::requeue(Duration::from_secs(3)));
    let (before, after) = (first.applies(), third.applies());
    assert_eq!(before.len(), after.len());
    for ((path, a), (_, b)) in before.iter().zip(&after) {
        assert!(
            a == b,
            "re-applying {path} changed its body:\nfirst:  {}\nthird: {}",
            String::from_utf8_lossy(a),
            String::from_utf8_lossy(b)
        );
    }
}

/// Changed with the one-way reconcile: lowering `spec.groups` no longer deletes the removed
/// group at once (it drains first, see the scale-down scenario). This is the reconcile after
/// its drained StatefulSet was deleted: it no longer exists, so the group is no longer
/// rendered and what it left behind is deleted as orphans, only what this BrokerGroup owns.
#[tokio::test]
async fn given_groups_reduced_from_two_to_one_when_the_removed_groups_statefulset_is_gone_should_delete_the_owned_objects_of_the_removed_group_only(
) {
    let h = Harness::new();
    let mut bg = pair();
    bg.metadata.generation = Some(2);
    bg.spec.groups = 1;

    let mut calls = vec![
        read_status(&bg),
        get(&core("secrets", "pair-cluster")).returns(cluster_secret("kept-password")),
        list_statefulsets(vec![statefulset("pair-g0", true)]),
    ];
    calls.extend(applies(&["pair-g0"]));
    // What two groups left behind (but the StatefulSet deleted once drained), plus a
    // ConfigMap a previous BrokerGroup of the same name owned (its garbage collection is not
    // ours).
    let [_, services, config_maps, pdbs, secrets, leases] = orphan_lists(
        &["pair-g0", "pair-g1"],
        &[("configmaps", metadata("pair-g1-old", Some(OTHER_UID)))],
    );
    let [statefulsets, ..] = orphan_lists(&["pair-g0"], &[]);
    calls.extend([statefulsets, services, config_maps, pdbs, secrets, leases]);
    calls.extend(pods_then_leases(vec![]));
    // Act: the deletions, in the order listed; no claim is ever deleted.
    calls.extend([
        delete(&core("services", "pair-g1-members")),
        delete(&core("services", "pair-g1")),
        delete(&core("configmaps", "pair-g1-config")),
        delete(&apis("policy/v1", "poddisruptionbudgets", "pair-g1")),
        delete(&apis("coordination.k8s.io/v1", "leases", "pair-g1")),
    ]);
    calls.push(apply(&status_path()).returns(to_json(&bg)));

    let step = h.reconcile(&bg, calls).await;

    assert_eq!(step.action(), Action::requeue(Duration::from_secs(3)));
    let deleted: Vec<Value> = step
        .requests
        .iter()
        .filter(|s| s.method == Method::DELETE)
        .map(Seen::json)
        .collect();
    assert_eq!(deleted.len(), 5);
    assert!(
        deleted
            .iter()
            .all(|d| d["propagationPolicy"] == "Background"),
        "{deleted:?}"
    );
    assert!(
        posted_events(&step).is_empty(),
        "GroupRemoved was said when the StatefulSet went"
    );
    let secret = step.body(Method::PATCH, &core("secrets", "pair-cluster"));
    assert_eq!(
        unbase64(&secret["data"]["password"]),
        "kept-password",
        "an existing password is never replaced"
    );
    let role = step.body(
        Method::PATCH,
        &apis("rbac.authorization.k8s.io/v1", "roles", "pair-broker"),
    );
    assert_eq!(role["rules"][0]["resourceNames"], json!(["pair-g0"]));
    let status = step.status();
    assert_eq!(status.observed_generation, Some(2));
    assert_eq!(
        status
            .groups
            .iter()
            .map(|g| g.name.as_str())
            .collect::<Vec<_>>(),
        ["pair-g0"]
    );
}

#[tokio::test]
async fn given_named_secrets_and_a_connector_target_when_reconciled_should_read_them_first_and_report_what_is_missing(
) {
    let h = Harness::new();
    let mut bg = pair();
    bg.metadata.generation = Some(2);
    bg.spec.ha.cluster_credentials_secret = Some("pair-credentials".into());
    bg.spec.users_secret = Some("pair-users".into());
    bg.spec.network_connectors =
        serde_json::from_value(json!([{"name": "to-billing", "brokerGroup": "billing"}]))
            .unwrap_or_else(|e| panic!("a connector: {e}"));
    let mut billing = pair();
    billing.metadata.name = Some("billing".into());
    billing.metadata.uid = Some(OTHER_UID.into());

    // Dereference: the BrokerGroup, the named cluster credentials, the users Secret
    // (missing), the target.
    let mut calls = vec![
        read_status(&bg),
        get(&core("secrets", "pair-credentials")).returns(json!({
            "apiVersion": "v1", "kind": "Secret", "metadata": {"name": "pair-credentials", "namespace": NS},
            "data": {"user": base64("cluster-admin"), "password": base64("theirs")},
        })),
        get(&core("secrets", "pair-users")).not_found(),
        get(&apis("duomq.io/v1alpha1", "brokergroups", "billing")).returns(to_json(&billing)),
        // billing's cluster password, for the connector to present.
        get(&core("secrets", "billing-cluster")).returns(json!({
            "apiVersion": "v1", "kind": "Secret", "metadata": {"name": "billing-cluster", "namespace": NS},
            "data": {"user": base64("cluster-admin"), "password": base64("billings")},
        })),
        list_statefulsets(vec![statefulset("pair-g0", false)]),
    ];
    // The operator renders no Secret of its own now...
    calls.extend(
        applies(&["pair-g0"])
            .into_iter()
            .filter(|c| !c.path.ends_with("/pair-cluster")),
    );
    calls.extend(orphan_lists(&["pair-g0"], &[]));
    calls.extend(pods_then_leases(vec![]));
    // ...so the one it generated before goes (act).
    calls.push(delete(&core("secrets", "pair-cluster")));
    calls.push(apply(&status_path()).returns(to_json(&bg)));

    let step = h.reconcile(&bg, calls).await;

    assert_eq!(step.action(), Action::requeue(Duration::from_secs(3)));
    let config = step.body(Method::PATCH, &core("configmaps", "pair-g0-config"));
    let broker_yaml = config["data"]["pair-g0-0.yaml"]
        .as_str()
        .unwrap_or_default();
    assert!(
        broker_yaml.contains(
            "masterslave:(tcp://billing-g0-0.billing-g0-members.default.svc:61616,\
             tcp://billing-g0-1.billing-g0-members.default.svc:61616)"
        ),
        "the connector lists every member of billing's group:\n{broker_yaml}"
    );
    assert!(
        broker_yaml.contains("cluster-admin"),
        "the user of the named Secret:\n{broker_yaml}"
    );
    assert!(
        broker_yaml.contains("passwordFile: /etc/duomq/network/to-billing/password"),
        "the connector presents billing's password:\n{broker_yaml}"
    );
    let set = step.body(Method::PATCH, &apis("apps/v1", "statefulsets", "pair-g0"));
    let volumes = set["spec"]["template"]["spec"]["volumes"].to_string();
    assert!(
        volumes.contains(r#""name":"billing-cluster""#) && volumes.contains("to-billing/password"),
        "billing's cluster Secret is mounted for the connector: {volumes}"
    );
    let status = step.status();
    assert_eq!(status.observed_generation, Some(2));
    let degraded = status.conditions.iter().find(|c| c.type_ == "Degraded");
    let degraded = degraded.unwrap_or_else(|| panic!("no Degraded in {status:?}"));
    assert_eq!(
        (degraded.status.as_str(), degraded.reason.as_str()),
        ("True", "UsersSecretMissing")
    );
    assert!(
        degraded.message.contains("pair-users"),
        "{}",
        degraded.message
    );
}

#[tokio::test]
async fn given_a_brokergroup_being_deleted_when_reconciled_should_make_no_call_and_await_change() {
    let h = Harness::new();
    let mut bg = pair();
    bg.metadata.deletion_timestamp = Some(k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(
        "2025-01-01T00:00:00Z"
            .parse()
            .unwrap_or_else(|e| panic!("a timestamp: {e}")),
    ));

    let step = h.reconcile(&bg, vec![]).await;

    assert_eq!(
        step.action(),
        Action::await_change(),
        "the garbage collector deletes what the BrokerGroup owned"
    );
    assert!(h.brokers.asked().is_empty());
}

#[tokio::test]
async fn given_running_brokers_when_the_live_is_lost_should_report_live_and_backup_then_the_failover(
) {
    let h = Harness::new();
    let bg = pair();
    let created = h.reconcile(&bg, create_calls(&bg)).await;
    let bg = with_status(bg, created.status());

    // Both members run; pod-0 says it is live (epoch 3), pod-1 a synced backup.
    h.brokers
        .answer("10.0.0.10", live_status("pair-g0-0", 3, "pair-g0-1"));
    h.brokers
        .answer("10.0.0.11", backup_status("pair-g0-1", 3, "pair-g0-0"));
    let mut calls = calls_until_observed(
        &bg,
        &["pair-g0"],
        vec![
            broker_pod("pair-g0-0", "10.0.0.10", true, None),
            broker_pod("pair-g0-1", "10.0.0.11", true, None),
        ],
    );
    calls.extend([
        merge_patch(&core("pods", "pair-g0-0")).returns(broker_pod(
            "pair-g0-0",
            "10.0.0.10",
            true,
            Some("live"),
        )),
        merge_patch(&core("pods", "pair-g0-1")).returns(broker_pod(
            "pair-g0-1",
            "10.0.0.11",
            true,
            Some("backup"),
        )),
        apply(&status_path()).returns(to_json(&bg)),
    ]);
    let settled = h.reconcile(&bg, calls).await;

    assert_eq!(
        settled.action(),
        Action::requeue(Duration::from_secs(15)),
        "settled: the slow poll"
    );
    assert_eq!(
        h.brokers.asked(),
        ["10.0.0.10:8161", "10.0.0.11:8161"],
        "every running broker, on the admin port"
    );
    assert_eq!(
        settled.body(Method::PATCH, &core("pods", "pair-g0-0")),
        json!({"metadata": {"labels": {"duomq.io/role": "live"}}})
    );
    assert_eq!(
        settled.body(Method::PATCH, &core("pods", "pair-g0-1")),
        json!({"metadata": {"labels": {"duomq.io/role": "backup"}}})
    );
    let status = settled.status();
    assert_eq!(condition(&status, "Available"), ("True", "AllGroupsLive"));
    assert_eq!(
        condition(&status, "Replicated"),
        ("True", "AllGroupsReplicated")
    );
    assert_eq!(condition(&status, "Progressing"), ("False", "Stable"));
    assert_eq!(condition(&status, "Degraded"), ("False", "AsExpected"));
    assert_eq!(status.live.as_deref(), Some("1/1"));
    let g0 = &status.groups[0];
    assert_eq!(g0.live.as_deref(), Some("pair-g0-0"));
    assert_eq!(g0.epoch, 3);
    assert_eq!(g0.failovers, 0);
    assert_eq!(
        g0.backups
            .iter()
            .map(|b| (b.pod.as_str(), b.state.as_str(), b.synced, b.lag))
            .collect::<Vec<_>>(),
        [("pair-g0-1", "backup", true, 0)]
    );

    // pod-0's broker dies (its container restarts); pod-1 takes over at epoch 4.
    let bg = with_status(bg, status);
    h.brokers.silence("10.0.0.10");
    h.brokers
        .answer("10.0.0.11", live_status("pair-g0-1", 4, "pair-g0-0"));
    let mut calls = calls_until_observed(
        &bg,
        &["pair-g0"],
        vec![
            broker_pod("pair-g0-0", "10.0.0.10", false, Some("live")),
            broker_pod("pair-g0-1", "10.0.0.11", true, Some("backup")),
        ],
    );
    calls.extend([
        merge_patch(&core("pods", "pair-g0-1")).returns(broker_pod(
            "pair-g0-1",
            "10.0.0.11",
            true,
            Some("live"),
        )),
        post_event(),
        apply(&status_path()).returns(to_json(&bg)),
    ]);
    let failed_over = h.reconcile(&bg, calls).await;

    assert_eq!(
        failed_over.action(),
        Action::requeue(Duration::from_secs(3)),
        "pod-0 is restarting: look again soon"
    );
    assert_eq!(
        h.brokers.asked(),
        ["10.0.0.11:8161"],
        "a broker whose container does not run is not asked"
    );
    assert_eq!(
        failed_over.body(Method::PATCH, &core("pods", "pair-g0-1")),
        json!({"metadata": {"labels": {"duomq.io/role": "live"}}})
    );
    let event = failed_over.body(
        Method::POST,
        &format!("/apis/events.k8s.io/v1/namespaces/{NS}/events"),
    );
    assert_eq!(event["type"], "Warning");
    assert_eq!(event["reason"], "FailedOver");
    assert_eq!(event["reportingController"], "duomq-operator");
    assert_eq!(event["regarding"]["kind"], "BrokerGroup");
    assert_eq!(event["regarding"]["name"], "pair");
    assert_eq!(event["regarding"]["uid"], UID);
    let note = event["note"].as_str().unwrap_or_default();
    assert!(note.contains("from pair-g0-0 to pair-g0-1"), "{note}");
    let status = failed_over.status();
    assert_eq!(status.failovers, 1);
    assert_eq!(status.live.as_deref(), Some("1/1"));
    assert_eq!(condition(&status, "Available"), ("True", "AllGroupsLive"));
    assert_eq!(
        condition(&status, "Replicated"),
        ("False", "BackupsNotInSync")
    );
    assert_eq!(
        condition(&status, "Progressing"),
        ("True", "MembersStarting")
    );
    let g0 = &status.groups[0];
    assert_eq!(g0.live.as_deref(), Some("pair-g0-1"));
    assert_eq!(g0.preferred_live, "pair-g0-0");
    assert_eq!(g0.epoch, 4);
    assert_eq!(g0.failovers, 1);
    let last = g0
        .last_failover
        .as_ref()
        .unwrap_or_else(|| panic!("no lastFailover in {g0:?}"));
    assert_eq!(
        (last.from.as_str(), last.to.as_str(), last.reason),
        ("pair-g0-0", "pair-g0-1", FailoverReason::LiveLost)
    );
    assert_eq!(
        g0.backups
            .iter()
            .map(|b| (b.pod.as_str(), b.state.as_str(), b.synced))
            .collect::<Vec<_>>(),
        [("pair-g0-0", "pending", false)]
    );
    assert_eq!(h.ctx.metrics.failovers.get(), 1);
}

/// An invalid spec: dereferenced, rejected before anything is applied, reported once.
async fn assert_invalid_spec_reported(
    bg: BrokerGroup,
    dereference: fn(&BrokerGroup) -> Vec<Call>,
    message: &str,
) {
    let h = Harness::new();
    let mut calls = dereference(&bg);
    calls.push(post_event());
    calls.push(apply(&status_path()).returns(to_json(&bg)));

    let step = h.reconcile(&bg, calls).await;

    assert_eq!(
        step.action(),
        Action::await_change(),
        "retrying cannot help: wait for the spec to change"
    );
    let event = step.body(
        Method::POST,
        &format!("/apis/events.k8s.io/v1/namespaces/{NS}/events"),
    );
    assert_eq!(event["type"], "Warning");
    assert_eq!(event["reason"], "InvalidSpec");
    assert!(
        event["note"].as_str().unwrap_or_default().contains(message),
        "{event}"
    );
    let status = step.status();
    assert_eq!(status.observed_generation, Some(1));
    let degraded = status
        .conditions
        .iter()
        .find(|c| c.type_ == "Degraded")
        .unwrap_or_else(|| panic!("no Degraded in {status:?}"));
    assert_eq!(
        (degraded.status.as_str(), degraded.reason.as_str()),
        ("True", "InvalidSpec")
    );
    assert!(degraded.message.contains(message), "{}", degraded.message);
    assert_eq!(h.ctx.metrics.invalid_specs.get(), 1);

    // Reconciled again with that status: nothing new to say, so no event and no patch.
    let bg = with_status(bg, status);
    let again = h.reconcile(&bg, dereference(&bg)).await;
    assert_eq!(again.action(), Action::await_change());
}

#[tokio::test]
async fn given_a_connector_to_its_own_brokergroup_when_reconciled_should_apply_nothing_and_report_invalid_spec(
) {
    let mut bg = pair();
    bg.spec.network_connectors =
        serde_json::from_value(json!([{"name": "loop", "brokerGroup": "pair"}]))
            .unwrap_or_else(|e| panic!("a connector: {e}"));
    assert_invalid_spec_reported(
        bg,
        |bg| {
            vec![
                read_status(bg),
                get(&core("secrets", "pair-cluster")).not_found(),
                // The connector's target: itself.
                get(&apis("duomq.io/v1alpha1", "brokergroups", "pair")).returns(to_json(bg)),
                list_statefulsets(vec![]),
            ]
        },
        "a network connector cannot point at its own BrokerGroup",
    )
    .await;
}

/// What a reconcile of a new `pair` reads first: its status, its cluster Secret (not made
/// yet), its StatefulSets (none).
fn dereference_new_pair(bg: &BrokerGroup) -> Vec<Call> {
    vec![
        read_status(bg),
        get(&core("secrets", "pair-cluster")).not_found(),
        list_statefulsets(vec![]),
    ]
}

#[tokio::test]
async fn given_replication_without_backups_when_reconciled_should_apply_nothing_and_report_invalid_spec(
) {
    let mut bg = pair();
    bg.spec.backups_per_group = 0;
    assert_invalid_spec_reported(
        bg,
        dereference_new_pair,
        "replication needs a backup to replicate to: set backupsPerGroup to 1 or more",
    )
    .await;
}

/// An addressSettings entry that passes the CRD's rules but that the broker refuses: the
/// operator checks it with the broker's own rules and rolls nothing out.
#[tokio::test]
async fn given_address_settings_the_broker_refuses_when_reconciled_should_apply_nothing_and_report_the_entry(
) {
    let mut bg = pair();
    bg.spec.address_settings = serde_json::from_value(json!([
        {"match": ">", "maxDeliveryAttempts": 6},
        {"match": "/queue/orders*", "deadLetterAddress": "/queue/orders.DLQ"}
    ]))
    .unwrap_or_else(|e| panic!("address settings: {e}"));
    assert_invalid_spec_reported(
        bg,
        dereference_new_pair,
        "spec.addressSettings[1]: match \"/queue/orders*\" word \"orders*\" mixes a wildcard with other characters",
    )
    .await;
}

#[tokio::test]
async fn given_two_groups_when_both_lives_are_lost_at_once_should_post_one_failover_event_per_group(
) {
    let h = Harness::new();
    let mut bg = pair();
    bg.spec.groups = 2;
    let bg = with_status(
        bg,
        settled(&[("pair-g0", "pair-g0-0", 3), ("pair-g1", "pair-g1-0", 5)]),
    );
    h.brokers
        .answer("10.0.1.11", live_status("pair-g0-1", 4, "pair-g0-0"));
    h.brokers
        .answer("10.0.2.11", live_status("pair-g1-1", 6, "pair-g1-0"));
    let mut calls = calls_until_observed(
        &bg,
        &["pair-g0", "pair-g1"],
        vec![
            broker_pod("pair-g0-0", "10.0.1.10", false, Some("live")),
            broker_pod("pair-g0-1", "10.0.1.11", true, Some("backup")),
            broker_pod("pair-g1-0", "10.0.2.10", false, Some("live")),
            broker_pod("pair-g1-1", "10.0.2.11", true, Some("backup")),
        ],
    );
    calls.extend([
        merge_patch(&core("pods", "pair-g0-1")).returns(broker_pod(
            "pair-g0-1",
            "10.0.1.11",
            true,
            Some("live"),
        )),
        merge_patch(&core("pods", "pair-g1-1")).returns(broker_pod(
            "pair-g1-1",
            "10.0.2.11",
            true,
            Some("live"),
        )),
        post_event(),
        post_event(),
        apply(&status_path()).returns(to_json(&bg)),
    ]);

    let step = h.reconcile(&bg, calls).await;

    assert_eq!(step.action(), Action::requeue(Duration::from_secs(3)));
    let notes: Vec<String> = step
        .requests
        .iter()
        .filter(|s| s.method == Method::POST)
        .map(|s| s.json()["note"].as_str().unwrap_or_default().to_string())
        .collect();
    assert!(
        notes[0].contains("group pair-g0: live moved from pair-g0-0 to pair-g0-1"),
        "{notes:?}"
    );
    assert!(
        notes[1].contains("group pair-g1: live moved from pair-g1-0 to pair-g1-1"),
        "{notes:?}"
    );
    let status = step.status();
    assert_eq!(status.failovers, 2);
    assert_eq!(h.ctx.metrics.failovers.get(), 2);
}

#[tokio::test]
async fn given_two_members_reporting_live_when_reconciled_twice_should_warn_of_split_brain_in_one_event_series(
) {
    let h = Harness::new();
    let bg = with_status(pair(), settled(&[("pair-g0", "pair-g0-0", 3)]));
    h.brokers
        .answer("10.0.0.10", live_status("pair-g0-0", 3, "pair-g0-1"));
    h.brokers
        .answer("10.0.0.11", live_status("pair-g0-1", 3, "pair-g0-0"));
    let pods = || {
        vec![
            broker_pod("pair-g0-0", "10.0.0.10", true, Some("live")),
            broker_pod("pair-g0-1", "10.0.0.11", true, Some("backup")),
        ]
    };
    let mut calls = calls_until_observed(&bg, &["pair-g0"], pods());
    // The first member stays the reported live; its labels are already right.
    calls.extend([post_event(), apply(&status_path()).returns(to_json(&bg))]);
    let first = h.reconcile(&bg, calls).await;

    let event = first.body(
        Method::POST,
        &format!("/apis/events.k8s.io/v1/namespaces/{NS}/events"),
    );
    assert_eq!(
        (event["type"].as_str(), event["reason"].as_str()),
        (Some("Warning"), Some("SplitBrain"))
    );
    assert!(
        event["note"]
            .as_str()
            .unwrap_or_default()
            .contains("pair-g0-0, pair-g0-1"),
        "{event}"
    );
    let status = first.status();
    assert_eq!(status.groups[0].live.as_deref(), Some("pair-g0-0"));
    assert_eq!(status.groups[0].backups[0].state, "live");

    // Still split: the same warning counts up the first event's series instead of adding one.
    let bg = with_status(bg, status);
    let mut calls = calls_until_observed(&bg, &["pair-g0"], pods());
    calls.push(patch_event_series());
    let second = h.reconcile(&bg, calls).await;

    let series = second
        .requests
        .iter()
        .find(|s| s.method == Method::PATCH && s.path.contains("/events/"))
        .map(Seen::json);
    let series = series.unwrap_or_else(|| panic!("no event series patch"));
    assert_eq!(series["series"]["count"], 2);
    assert_eq!(series["reason"], "SplitBrain");
    assert_eq!(second.action(), Action::requeue(Duration::from_secs(15)));
}

// ---------------------------------------------------------------------------------------------
// Switchover, failback and rolling upgrades
// ---------------------------------------------------------------------------------------------

const SWITCHOVER: &str = "duomq.io/switchover";
/// The revision of [`statefulset`]: pods at it are up to date.
const CURRENT: &str = "pair-g0-7d4b9c";

fn with_annotation(mut bg: BrokerGroup, key: &str, value: &str) -> BrokerGroup {
    bg.metadata
        .annotations
        .get_or_insert_with(Default::default)
        .insert(key.into(), value.into());
    bg
}

/// A broker pod created from StatefulSet revision `revision`.
fn pod_at(name: &str, ip: &str, role: &str, revision: &str) -> Value {
    let mut pod = broker_pod(name, ip, true, Some(role));
    pod["metadata"]["labels"]["controller-revision-hash"] = json!(revision);
    pod
}

/// A rolled-out StatefulSet whose spec changed to revision `update` (pods update on delete).
fn statefulset_updating(name: &str, current: &str, update: &str) -> Value {
    let mut sts = statefulset(name, true);
    sts["status"]["currentRevision"] = json!(current);
    sts["status"]["updateRevision"] = json!(update);
    sts
}

/// The brokers of pair-g0 answer: `live` is live at `epoch`, the other a synced backup.
fn answer_pair(h: &Harness, live: &str, epoch: u64) {
    for (pod, ip, other) in [
        ("pair-g0-0", "10.0.0.10", "pair-g0-1"),
        ("pair-g0-1", "10.0.0.11", "pair-g0-0"),
    ] {
        let status = if pod == live {
            live_status(pod, epoch, other)
        } else {
            backup_status(pod, epoch, other)
        };
        h.brokers.answer(ip, status);
    }
}

/// The pods of pair-g0, `labelled_live` carrying the live label, at these revisions.
fn pair_pods(labelled_live: &str, revisions: [&str; 2]) -> Vec<Value> {
    [("pair-g0-0", "10.0.0.10"), ("pair-g0-1", "10.0.0.11")]
        .iter()
        .zip(revisions)
        .map(|((pod, ip), revision)| {
            let role = if *pod == labelled_live {
                "live"
            } else {
                "backup"
            };
            pod_at(pod, ip, role, revision)
        })
        .collect()
}

/// The switchovers asked for since the last look, as `admin address -> target`.
fn switchovers_asked(h: &Harness) -> Vec<String> {
    h.brokers.switchovers.take()
}

fn reply(from: &str, to: &str, epoch: u64) -> Result<SwitchoverReply, String> {
    Ok(SwitchoverReply {
        from: from.into(),
        to: to.into(),
        epoch,
    })
}

/// The events the reconcile posted, in order, as (type, reason, note).
fn posted_events(step: &Step) -> Vec<(String, String, String)> {
    step.requests
        .iter()
        .filter(|s| s.method == Method::POST && s.path.ends_with("/events"))
        .map(|s| {
            let e = s.json();
            let text = |k: &str| e[k].as_str().unwrap_or_default().to_string();
            (text("type"), text("reason"), text("note"))
        })
        .collect()
}

/// Changed with the one-way reconcile: the SwitchingOver event is posted with the others
/// after the pod labels, and the done switchover counts in `switchovers`, not `failovers`.
#[tokio::test]
async fn given_a_switchover_annotation_when_reconciled_should_ask_the_live_then_record_the_switchover_and_clear_the_annotation(
) {
    let h = Harness::new();
    let bg = with_annotation(
        with_status(pair(), settled(&[("pair-g0", "pair-g0-0", 3)])),
        SWITCHOVER,
        "pair-g0=pair-g0-1",
    );
    answer_pair(&h, "pair-g0-0", 3);
    h.brokers
        .switchovers
        .can("10.0.0.10", reply("pair-g0-0", "pair-g0-1", 4));
    let pods = || pair_pods("pair-g0-0", [CURRENT; 2]);
    let mut calls = calls_until_observed(&bg, &["pair-g0"], pods());
    calls.extend([post_event(), apply(&status_path()).returns(to_json(&bg))]);
    let asked = h.reconcile(&bg, calls).await;

    assert_eq!(
        switchovers_asked(&h),
        ["10.0.0.10:8161 -> pair-g0-1"],
        "the live, on its admin port, signed with the cluster password"
    );
    let read = h.brokers.endpoints.lock().get("10.0.0.10").cloned();
    let read = read.expect("the live's /status was read");
    assert_eq!(
        (read.port, read.password.as_deref()),
        (8161, Some("pw")),
        "/status is signed with the cluster password too"
    );
    assert!(read.tls.is_none(), "plain HTTP without spec.tls");
    let events = posted_events(&asked);
    assert_eq!(
        (events[0].0.as_str(), events[0].1.as_str()),
        ("Normal", "SwitchingOver")
    );
    assert!(
        events[0]
            .2
            .contains("pair-g0-0 handed the live role to pair-g0-1 at epoch 4"),
        "{events:?}"
    );
    let status = asked.status();
    let pending = status.groups[0].switchover.clone();
    assert_eq!(
        pending.map(|p| (p.to, p.reason)),
        Some(("pair-g0-1".to_string(), FailoverReason::Switchover))
    );
    assert_eq!(condition(&status, "Progressing"), ("True", "Switchover"));
    assert_eq!(asked.action(), Action::requeue(Duration::from_secs(3)));

    // The target is live: the annotation entry goes, the failover is a Switchover.
    let bg = with_status(bg, status);
    answer_pair(&h, "pair-g0-1", 4);
    let mut calls = calls_until_observed(&bg, &["pair-g0"], pods());
    calls.extend([
        merge_patch(&apis("duomq.io/v1alpha1", "brokergroups", "pair")).returns(to_json(&bg)),
        merge_patch(&core("pods", "pair-g0-0")),
        merge_patch(&core("pods", "pair-g0-1")),
        post_event(),
        apply(&status_path()).returns(to_json(&bg)),
    ]);
    let done = h.reconcile(&bg, calls).await;

    assert!(switchovers_asked(&h).is_empty(), "asked once");
    assert_eq!(
        done.body(
            Method::PATCH,
            &apis("duomq.io/v1alpha1", "brokergroups", "pair")
        ),
        json!({"metadata": {"annotations": {SWITCHOVER: null}}})
    );
    let events = posted_events(&done);
    assert_eq!(
        (events[0].0.as_str(), events[0].1.as_str()),
        ("Normal", "SwitchedOver")
    );
    let status = done.status();
    let g0 = &status.groups[0];
    let last = g0.last_failover.as_ref().expect("a lastFailover");
    assert_eq!(
        (last.from.as_str(), last.to.as_str(), last.reason),
        ("pair-g0-0", "pair-g0-1", FailoverReason::Switchover)
    );
    // A planned hand-over counts as a switchover, not a failover (changed with the one-way
    // reconcile: failovers used to count both).
    assert_eq!(
        (
            g0.failovers,
            g0.switchovers,
            g0.epoch,
            g0.switchover.is_none()
        ),
        (0, 1, 4, true)
    );
    assert_eq!((status.failovers, status.switchovers), (0, 1));

    // allowFailback leaves a live chosen by a switchover alone.
    let bg = with_status(pair(), status);
    let pods = pair_pods("pair-g0-1", [CURRENT; 2]);
    h.reconcile(&bg, calls_until_observed(&bg, &["pair-g0"], pods))
        .await
        .action();
    assert!(switchovers_asked(&h).is_empty(), "no failback");
}

#[tokio::test]
async fn given_a_switchover_the_live_refuses_should_report_it_and_keep_the_annotation() {
    let h = Harness::new();
    let bg = with_annotation(
        with_status(pair(), settled(&[("pair-g0", "pair-g0-0", 3)])),
        SWITCHOVER,
        "pair-g0=pair-g0-1",
    );
    answer_pair(&h, "pair-g0-0", 3);
    h.brokers.switchovers.can(
        "10.0.0.10",
        Err("409 Conflict: pair-g0-1 is not an in-sync backup of this live (in sync: none)".into()),
    );
    let mut calls = calls_until_observed(&bg, &["pair-g0"], pair_pods("pair-g0-0", [CURRENT; 2]));
    calls.extend([post_event(), apply(&status_path()).returns(to_json(&bg))]);
    let refused = h.reconcile(&bg, calls).await;

    let events = posted_events(&refused);
    assert_eq!(
        (events[0].0.as_str(), events[0].1.as_str()),
        ("Warning", "SwitchoverFailed")
    );
    assert!(events[0].2.contains("not an in-sync backup"), "{events:?}");
    let status = refused.status();
    assert_eq!(condition(&status, "Degraded"), ("True", "SwitchoverFailed"));
    assert_eq!(status.groups[0].switchover, None);
    assert_eq!(status.groups[0].live.as_deref(), Some("pair-g0-0"));
}

#[tokio::test]
async fn given_allow_failback_when_the_preferred_member_is_back_in_sync_should_switch_over_to_it_with_reason_failback(
) {
    let h = Harness::new();
    let mut status = settled(&[("pair-g0", "pair-g0-1", 4)]);
    status.groups[0].backups[0].pod = "pair-g0-0".into();
    status.groups[0].failovers = 1;
    status.groups[0].last_failover = serde_json::from_value(json!({
        "time": "2026-01-01T00:00:00Z", "from": "pair-g0-0", "to": "pair-g0-1", "reason": "LiveLost",
    }))
    .ok();
    let bg = with_status(pair(), status);
    answer_pair(&h, "pair-g0-1", 4);
    h.brokers
        .switchovers
        .can("10.0.0.11", reply("pair-g0-1", "pair-g0-0", 5));
    let mut calls = calls_until_observed(&bg, &["pair-g0"], pair_pods("pair-g0-1", [CURRENT; 2]));
    calls.extend([post_event(), apply(&status_path()).returns(to_json(&bg))]);
    let step = h.reconcile(&bg, calls).await;

    assert_eq!(switchovers_asked(&h), ["10.0.0.11:8161 -> pair-g0-0"]);
    let status = step.status();
    assert_eq!(
        status.groups[0]
            .switchover
            .as_ref()
            .map(|p| (p.to.as_str(), p.reason)),
        Some(("pair-g0-0", FailoverReason::Failback))
    );
    assert!(posted_events(&step)[0]
        .2
        .contains("failback to the preferred live"));
}

/// CloudNativePG's order for a pair whose StatefulSet moved to revision r2: delete the
/// backup; once it is back in sync at r2, switch over to it; then, in the reconcile where
/// the hand-over shows, delete the former live. Events come after the pod labels.
#[tokio::test]
async fn given_a_new_revision_when_reconciled_should_update_the_backup_then_switch_over_then_update_the_former_live(
) {
    let h = Harness::new();
    let bg = with_status(pair(), settled(&[("pair-g0", "pair-g0-0", 3)]));
    let sets = || vec![statefulset_updating("pair-g0", "r1", "r2")];

    // 1. Both at r1: the backup goes first.
    answer_pair(&h, "pair-g0-0", 3);
    let mut calls = calls_observing(
        &bg,
        &["pair-g0"],
        pair_pods("pair-g0-0", ["r1", "r1"]),
        sets(),
    );
    calls.extend([
        delete(&core("pods", "pair-g0-1")),
        post_event(),
        apply(&status_path()).returns(to_json(&bg)),
    ]);
    let first = h.reconcile(&bg, calls).await;
    let status = first.status();
    assert_eq!(
        condition(&status, "Progressing"),
        ("True", "RollingUpgrade")
    );
    assert_eq!(
        posted_events(&first)[0].1,
        "RollingUpgrade",
        "{:?}",
        posted_events(&first)
    );
    assert!(switchovers_asked(&h).is_empty());

    // 2. The backup is back at r2 and in sync: the live hands over to it.
    let bg = with_status(bg, status);
    h.brokers
        .switchovers
        .can("10.0.0.10", reply("pair-g0-0", "pair-g0-1", 4));
    let mut calls = calls_observing(
        &bg,
        &["pair-g0"],
        pair_pods("pair-g0-0", ["r1", "r2"]),
        sets(),
    );
    calls.extend([post_event(), apply(&status_path()).returns(to_json(&bg))]);
    let second = h.reconcile(&bg, calls).await;
    assert_eq!(switchovers_asked(&h), ["10.0.0.10:8161 -> pair-g0-1"]);
    let status = second.status();

    // 3. pair-g0-1 is live: the hand-over shows (labels, SwitchedOver, counted as a
    // switchover) and the former live, a synced backup at r1, is updated at once.
    let bg = with_status(bg, status);
    answer_pair(&h, "pair-g0-1", 4);
    let mut calls = calls_observing(
        &bg,
        &["pair-g0"],
        pair_pods("pair-g0-0", ["r1", "r2"]),
        sets(),
    );
    calls.extend([
        delete(&core("pods", "pair-g0-0")),
        merge_patch(&core("pods", "pair-g0-0")),
        merge_patch(&core("pods", "pair-g0-1")),
        post_event(),
        post_event(),
        apply(&status_path()).returns(to_json(&bg)),
    ]);
    let third = h.reconcile(&bg, calls).await;
    assert!(switchovers_asked(&h).is_empty(), "no failback mid-upgrade");
    let reasons: Vec<String> = posted_events(&third).into_iter().map(|e| e.1).collect();
    assert_eq!(reasons, ["RollingUpgrade", "SwitchedOver"]);
    let status = third.status();
    let last = status.groups[0]
        .last_failover
        .as_ref()
        .expect("a lastFailover");
    assert_eq!(
        (last.from.as_str(), last.to.as_str(), last.reason),
        ("pair-g0-0", "pair-g0-1", FailoverReason::RollingUpgrade)
    );
    assert_eq!((status.failovers, status.switchovers), (0, 1));
    assert_eq!(
        condition(&status, "Progressing"),
        ("True", "RollingUpgrade")
    );
    assert_eq!(h.ctx.metrics.upgrade_pod_deletions.get(), 2);
}

/// The pending switchover of `status`'s first group: to `to` for `reason`, agreed just now.
fn pending(mut status: BrokerGroupStatus, to: &str, reason: FailoverReason) -> BrokerGroupStatus {
    status.groups[0].switchover = Some(PendingSwitchover {
        to: to.into(),
        reason,
        time: Time(Timestamp::now()),
    });
    status
}

/// The reconcile in which a rolling upgrade's hand-over shows also updates the former live:
/// a pending switchover the observation shows done (its target is live) holds nothing up.
#[tokio::test]
async fn given_a_rolling_upgrade_hand_over_that_shows_should_update_the_former_live_in_the_same_reconcile(
) {
    let h = Harness::new();
    let status = pending(
        settled(&[("pair-g0", "pair-g0-0", 3)]),
        "pair-g0-1",
        FailoverReason::RollingUpgrade,
    );
    let bg = with_status(pair(), status);
    answer_pair(&h, "pair-g0-1", 4);
    let mut calls = calls_observing(
        &bg,
        &["pair-g0"],
        pair_pods("pair-g0-0", ["r1", "r2"]),
        vec![statefulset_updating("pair-g0", "r1", "r2")],
    );
    calls.extend([
        delete(&core("pods", "pair-g0-0")),
        merge_patch(&core("pods", "pair-g0-0")),
        merge_patch(&core("pods", "pair-g0-1")),
        post_event(),
        post_event(),
        apply(&status_path()).returns(to_json(&bg)),
    ]);
    let step = h.reconcile(&bg, calls).await;
    let reasons: Vec<String> = posted_events(&step).into_iter().map(|e| e.1).collect();
    assert_eq!(reasons, ["RollingUpgrade", "SwitchedOver"]);
}

/// `status` (a live's `/status`) with one network connector whose one link is in `state` for
/// `seconds`.
fn with_connector(mut status: Value, name: &str, state: &str, seconds: u64) -> Value {
    status["network"] = json!({
        "connectors": [{"name": name, "uri": "masterslave:(…)", "duplex": false, "links": [{
            "target": "masterslave:(…)", "state": state, "stateSeconds": seconds,
            "lastError": if state == "linked" { Value::Null } else { json!("wrong password") },
            "remoteDemand": [], "remoteDemandCount": 0, "localDemandCount": 0,
            "forwardedOut": 0, "forwardedIn": 0,
        }]}],
        "inbound": [],
    });
    status
}

#[tokio::test]
async fn given_a_connector_refused_for_over_a_minute_when_reconciled_should_warn_once_and_report_network_linked_false(
) {
    let h = Harness::new();
    let mut bg = pair();
    bg.spec.groups = 2;
    let bg = with_status(
        bg,
        settled(&[("pair-g0", "pair-g0-0", 1), ("pair-g1", "pair-g1-0", 1)]),
    );
    h.brokers.answer(
        "10.0.1.10",
        with_connector(
            live_status("pair-g0-0", 1, "pair-g0-1"),
            "pair-g1",
            "refused",
            90,
        ),
    );
    h.brokers
        .answer("10.0.1.11", backup_status("pair-g0-1", 1, "pair-g0-0"));
    h.brokers.answer(
        "10.0.2.10",
        with_connector(
            live_status("pair-g1-0", 1, "pair-g1-1"),
            "pair-g0",
            "linked",
            300,
        ),
    );
    h.brokers
        .answer("10.0.2.11", backup_status("pair-g1-1", 1, "pair-g1-0"));
    let pods = vec![
        broker_pod("pair-g0-0", "10.0.1.10", true, Some("live")),
        broker_pod("pair-g0-1", "10.0.1.11", true, Some("backup")),
        broker_pod("pair-g1-0", "10.0.2.10", true, Some("live")),
        broker_pod("pair-g1-1", "10.0.2.11", true, Some("backup")),
    ];
    let mut calls = calls_until_observed(&bg, &["pair-g0", "pair-g1"], pods.clone());
    calls.extend([post_event(), apply(&status_path()).returns(to_json(&bg))]);

    let step = h.reconcile(&bg, calls).await;

    let event = step.body(
        Method::POST,
        "/apis/events.k8s.io/v1/namespaces/default/events",
    );
    assert_eq!(
        (event["type"].as_str(), event["reason"].as_str()),
        (Some("Warning"), Some("ConnectorUnlinked"))
    );
    assert_eq!(
        event["note"].as_str(),
        Some("group pair-g0: connector pair-g1 has not linked for 90s (refused: wrong password)")
    );
    let status = step.status();
    assert_eq!(status.linked.as_deref(), Some("1/2"));
    let g0 = &status.groups[0];
    assert_eq!((g0.connectors, g0.connectors_linked), (1, 0));
    assert_eq!(g0.unlinked_connectors, vec!["pair-g1".to_string()]);
    assert_eq!(
        condition(&status, "NetworkLinked"),
        ("False", "ConnectorUnlinked")
    );

    // Still refused a reconcile later: no second event, no status patch.
    let bg = with_status(bg, status);
    let calls = calls_until_observed(&bg, &["pair-g0", "pair-g1"], pods);
    h.reconcile(&bg, calls).await;
}

// ---------------------------------------------------------------------------------------------
// sharedDatabase: the members share a PostgreSQL database named by a Secret
// ---------------------------------------------------------------------------------------------

/// `pair` in sharedDatabase mode, its URL in Secret `pg-app` (CloudNativePG's shape).
fn shared_database() -> BrokerGroup {
    let mut bg = pair();
    bg.spec.ha = serde_json::from_value(json!({
        "mode": "sharedDatabase",
        "database": {"secretRef": {"name": "pg-app"}},
    }))
    .unwrap_or_else(|e| panic!("an ha section: {e}"));
    // No journal volumes in this mode: `pair`'s storage size would be refused.
    bg.spec.storage = Default::default();
    bg
}

/// The Secret CloudNativePG creates for a cluster's application user.
fn app_secret() -> Value {
    json!({
        "apiVersion": "v1", "kind": "Secret", "metadata": {"name": "pg-app", "namespace": NS},
        "type": "kubernetes.io/basic-auth",
        "data": {
            "uri": base64("postgresql://app:pw@pg-rw.default.svc:5432/app"),
            "host": base64("pg-rw"), "port": base64("5432"), "dbname": base64("app"),
            "user": base64("app"), "username": base64("app"), "password": base64("pw"),
        },
    })
}

/// Every call of a reconcile of the sharedDatabase `pair` up to reading its status: the
/// database Secret read after the cluster Secret, no Lease applied (the database lease is
/// the arbiter), nothing owned deleted.
fn shared_database_calls(bg: &BrokerGroup, secret: Call, pods: Vec<Value>) -> Vec<Call> {
    let mut calls = vec![
        read_status(bg),
        get(&core("secrets", "pair-cluster")).returns(cluster_secret("pw")),
        secret,
        list_statefulsets(vec![statefulset("pair-g0", true)]),
    ];
    calls.extend(
        applies(&["pair-g0"])
            .into_iter()
            .filter(|c| !c.path.contains("/leases/")),
    );
    let [statefulsets, services, config_maps, pdbs, secrets, _] = orphan_lists(&["pair-g0"], &[]);
    calls.extend([statefulsets, services, config_maps, pdbs, secrets]);
    calls.push(
        list_metadata(&format!(
            "/apis/coordination.k8s.io/v1/namespaces/{NS}/leases"
        ))
        .items(vec![]),
    );
    calls.extend(pods_then_leases(pods));
    calls
}

/// The `/status` of a shared-database member: `role` at `epoch`, and the database as it
/// sees it (`error`: unreachable, with that error).
fn database_member_status(node: &str, role: &str, epoch: u64, error: Option<&str>) -> Value {
    let mut database = json!({
        "reachable": error.is_none(), "leaseHolder": "pair-g0-0", "leaseRemainingMs": 8000,
        "commits": 40,
    });
    if let Some(e) = error {
        database["lastError"] = json!(e);
    }
    json!({
        "version": "0.1.0", "nodeId": node, "role": role, "uptimeSeconds": 60,
        "connections": 0, "memoryBytes": 0, "queues": [],
        "ha": {"group": group_of(node), "epoch": epoch, "live": "pair-g0-0", "sync": null,
               "alone": false, "backups": [], "database": database},
    })
}

#[tokio::test]
async fn given_shared_database_whose_secret_is_missing_when_reconciled_should_render_it_without_lease_or_volumes_and_report_the_secret_once(
) {
    let h = Harness::new();
    let bg = shared_database();
    let mut calls = shared_database_calls(&bg, get(&core("secrets", "pg-app")).not_found(), vec![]);
    calls.push(post_event());
    calls.push(apply(&status_path()).returns(to_json(&bg)));

    let step = h.reconcile(&bg, calls).await;

    let config = step.body(Method::PATCH, &core("configmaps", "pair-g0-config"));
    let broker_yaml = config["data"]["pair-g0-0.yaml"]
        .as_str()
        .unwrap_or_default();
    for line in [
        "store: database",
        "urlFile: /etc/duomq/database/uri",
        "policy: sharedStore",
        "groupName: pair-g0",
    ] {
        assert!(broker_yaml.contains(line), "{line} in:\n{broker_yaml}");
    }
    let set = step.body(Method::PATCH, &apis("apps/v1", "statefulsets", "pair-g0"));
    assert_eq!(
        set["spec"]["volumeClaimTemplates"],
        Value::Null,
        "no journal volumes"
    );
    let volumes = set["spec"]["template"]["spec"]["volumes"].to_string();
    assert!(
        volumes.contains(r#""secretName":"pg-app""#) && volumes.contains(r#""emptyDir":{}"#),
        "the Secret mounted (the pods wait for it), dataDir on an emptyDir: {volumes}"
    );
    let events = posted_events(&step);
    assert_eq!(
        events
            .iter()
            .map(|(t, r, _)| (t.as_str(), r.as_str()))
            .collect::<Vec<_>>(),
        [("Warning", "DatabaseSecretMissing")]
    );
    let status = step.status();
    assert_eq!(
        condition(&status, "Degraded"),
        ("True", "DatabaseSecretMissing")
    );
    let said: Vec<&str> = status
        .conditions
        .iter()
        .filter(|c| c.type_ == "Degraded")
        .map(|c| c.message.as_str())
        .collect();
    assert!(
        said[0].starts_with("database URL Secret pg-app does not exist"),
        "{said:?}"
    );

    // Looked at again with that status: said already, so no second event.
    let bg = with_status(bg, status);
    let again = h
        .reconcile(
            &bg,
            shared_database_calls(&bg, get(&core("secrets", "pg-app")).not_found(), vec![]),
        )
        .await;
    assert_eq!(again.action(), Action::requeue(Duration::from_secs(3)));
}

/// Changed with the one-way reconcile: a shared store's Replicated condition says
/// NoSlaveStandingBy (nothing is copied) rather than BackupsNotInSync.
#[tokio::test]
async fn given_shared_database_when_the_backup_cannot_reach_the_database_should_report_it_degraded_and_not_in_sync(
) {
    let h = Harness::new();
    let bg = with_status(shared_database(), settled(&[("pair-g0", "pair-g0-0", 2)]));
    h.brokers.answer(
        "10.0.0.10",
        database_member_status("pair-g0-0", "live", 2, None),
    );
    h.brokers.answer(
        "10.0.0.11",
        database_member_status("pair-g0-1", "backup", 2, Some("connection refused")),
    );
    let mut calls = shared_database_calls(
        &bg,
        get(&core("secrets", "pg-app")).returns(app_secret()),
        vec![
            broker_pod("pair-g0-0", "10.0.0.10", true, Some("live")),
            broker_pod("pair-g0-1", "10.0.0.11", true, Some("backup")),
        ],
    );
    calls.push(post_event());
    calls.push(apply(&status_path()).returns(to_json(&bg)));

    let step = h.reconcile(&bg, calls).await;

    assert_eq!(
        posted_events(&step),
        [(
            "Warning".to_string(),
            "DatabaseUnreachable".to_string(),
            "group pair-g0: pair-g0-1 cannot reach the database: connection refused".to_string()
        )]
    );
    let status = step.status();
    let conditions: Vec<(&str, &str)> = ["Available", "Replicated", "Degraded"]
        .into_iter()
        .map(|kind| condition(&status, kind))
        .collect();
    assert_eq!(
        conditions,
        [
            ("True", "AllGroupsLive"),
            ("False", "NoSlaveStandingBy"),
            ("True", "DatabaseUnreachable")
        ]
    );
    let g0 = &status.groups[0];
    assert_eq!(g0.database_unreachable, vec!["pair-g0-1".to_string()]);
    assert_eq!(
        g0.backups
            .iter()
            .map(|b| (b.pod.as_str(), b.state.as_str(), b.synced))
            .collect::<Vec<_>>(),
        [("pair-g0-1", "backup", false)]
    );
}

// ---------------------------------------------------------------------------------------------
// Day two: scale-down, fencing, hibernation, volume expansion, what degrades and what counts
// ---------------------------------------------------------------------------------------------

const FENCED_MEMBERS: &str = "duomq.io/fenced-members";
const HIBERNATION: &str = "duomq.io/hibernation";

/// The brokers of pair-g0 and pair-g1 answer: each `-0` live at epoch 1, each `-1` a synced
/// backup; `drain` is pair-g1's live's drain section, if any.
fn answer_two_groups(h: &Harness, drain: Option<Value>) {
    for g in 0..2 {
        let (live, backup) = (format!("pair-g{g}-0"), format!("pair-g{g}-1"));
        let mut status = live_status(&live, 1, &backup);
        if let (1, Some(drain)) = (g, &drain) {
            status["drain"] = drain.clone();
        }
        h.brokers.answer(&format!("10.0.{}.10", g + 1), status);
        h.brokers.answer(
            &format!("10.0.{}.11", g + 1),
            backup_status(&backup, 1, &live),
        );
    }
}

/// A draining live's drain section into pair-g0.
fn drain_section(state: &str, left: u64, forwarded: u64, reason: Option<&str>) -> Value {
    let mut drain = json!({
        "state": state, "messagesLeft": left, "forwarded": forwarded, "targets": ["pair-g0"],
    });
    if let Some(reason) = reason {
        drain["reason"] = json!(reason);
    }
    drain
}

/// The pods of pair-g0 and pair-g1 (each `-0` labelled live, pair-g1-0 `g1_live_label`).
fn two_groups_pods(g1_live_label: &str) -> Vec<Value> {
    vec![
        broker_pod("pair-g0-0", "10.0.1.10", true, Some("live")),
        broker_pod("pair-g0-1", "10.0.1.11", true, Some("backup")),
        broker_pod("pair-g1-0", "10.0.2.10", true, Some(g1_live_label)),
        broker_pod("pair-g1-1", "10.0.2.11", true, Some("backup")),
    ]
}

/// `pair` with `spec.groups` lowered from two to one, both groups settled before.
fn scaled_down() -> BrokerGroup {
    let mut bg = pair();
    bg.metadata.generation = Some(2);
    bg.spec.groups = 1;
    with_status(
        bg,
        settled(&[("pair-g0", "pair-g0-0", 1), ("pair-g1", "pair-g1-0", 1)]),
    )
}

/// The drains asked for since the last look, as `admin address -> targets`.
fn drains_asked(h: &Harness) -> Vec<String> {
    h.brokers.drains.take()
}

/// The fences asked for since the last look, as `admin address fenced|unfenced [force]`.
fn fences_asked(h: &Harness) -> Vec<String> {
    h.brokers.fences.take()
}

/// The (type, reason) of every event the reconcile posted, in order.
fn event_reasons(step: &Step) -> Vec<(String, String)> {
    posted_events(step)
        .into_iter()
        .map(|(kind, reason, _)| (kind, reason))
        .collect()
}

fn pair_of(kind: &str, reason: &str) -> (String, String) {
    (kind.to_string(), reason.to_string())
}

/// The message of `status`'s condition `kind`.
fn message<'a>(status: &'a BrokerGroupStatus, kind: &str) -> &'a str {
    status
        .conditions
        .iter()
        .find(|c| c.type_ == kind)
        .map(|c| c.message.as_str())
        .unwrap_or_else(|| panic!("no {kind} condition in {status:?}"))
}

/// Scale-down: the removed group is still rendered and its live is asked to drain into the
/// remaining group (its pod labelled `draining`, out of the client Service); the status
/// follows the drain; once the live reports it drained, its StatefulSet is deleted (pods
/// with it, claims kept).
#[tokio::test]
async fn given_groups_lowered_from_two_to_one_should_drain_the_removed_group_then_delete_its_statefulset_once_drained(
) {
    let h = Harness::new();
    let bg = scaled_down();
    let groups = ["pair-g0", "pair-g1"];

    // 1. pair-g1 still exists: it is rendered, and its live is asked to drain into pair-g0.
    answer_two_groups(&h, None);
    h.brokers.drains.can(
        "10.0.2.10",
        Ok(DrainStatus {
            state: DrainState::Draining,
            messages_left: 40,
            forwarded: 0,
            targets: vec!["pair-g0".into()],
            reason: None,
        }),
    );
    let mut calls = calls_until_observed(&bg, &groups, two_groups_pods("live"));
    calls.extend([
        merge_patch(&core("pods", "pair-g1-0")),
        post_event(),
        apply(&status_path()).returns(to_json(&bg)),
    ]);
    let asked = h.reconcile(&bg, calls).await;

    assert_eq!(drains_asked(&h), ["10.0.2.10:8161 -> pair-g0"]);
    assert_eq!(
        asked.body(Method::PATCH, &core("pods", "pair-g1-0")),
        json!({"metadata": {"labels": {"duomq.io/role": "draining"}}}),
        "out of the client Service while it drains"
    );
    let set = asked.body(Method::PATCH, &apis("apps/v1", "statefulsets", "pair-g1"));
    assert_eq!(
        set["spec"]["replicas"], 2,
        "rendered as before while it drains"
    );
    let events = posted_events(&asked);
    assert_eq!(
        event_reasons(&asked),
        [pair_of("Normal", "Draining")],
        "{events:?}"
    );
    assert!(
        events[0].2.contains(
            "group pair-g1 is being removed: its live pair-g1-0 moves its 40 messages to pair-g0"
        ),
        "{events:?}"
    );
    let status = asked.status();
    assert_eq!(status.observed_generation, Some(2));
    let names: Vec<&str> = status.groups.iter().map(|g| g.name.as_str()).collect();
    assert_eq!(names, groups);
    let drain = status.groups[1].drain.clone().expect("pair-g1 drains");
    assert_eq!(
        (drain.messages_left, drain.forwarded, drain.stuck),
        (Some(40), 0, None)
    );
    assert_eq!(status.groups[0].drain, None);
    assert_eq!(condition(&status, "Progressing"), ("True", "ScalingDown"));
    assert!(
        message(&status, "Progressing").contains("pair-g1 (40 messages left)"),
        "{status:?}"
    );
    assert_eq!(condition(&status, "Degraded"), ("False", "AsExpected"));
    assert_eq!(asked.action(), Action::requeue(Duration::from_secs(3)));

    // 2. Under way: not asked again, the status follows the live's count.
    let bg = with_status(bg, status);
    answer_two_groups(&h, Some(drain_section("draining", 12, 28, None)));
    let mut calls = calls_until_observed(&bg, &groups, two_groups_pods("draining"));
    calls.push(apply(&status_path()).returns(to_json(&bg)));
    let under_way = h.reconcile(&bg, calls).await;

    assert!(
        drains_asked(&h).is_empty(),
        "it already drains into pair-g0"
    );
    let status = under_way.status();
    let drain = status.groups[1].drain.clone().expect("pair-g1 drains");
    assert_eq!((drain.messages_left, drain.forwarded), (Some(12), 28));

    // 3. Drained: its StatefulSet goes (its pods with it), no claim is touched.
    let bg = with_status(bg, status);
    answer_two_groups(&h, Some(drain_section("drained", 0, 40, None)));
    let mut calls = calls_until_observed(&bg, &groups, two_groups_pods("draining"));
    calls.extend([
        delete(&apis("apps/v1", "statefulsets", "pair-g1")),
        post_event(),
        apply(&status_path()).returns(to_json(&bg)),
    ]);
    let drained = h.reconcile(&bg, calls).await;

    let deleted = drained.body(Method::DELETE, &apis("apps/v1", "statefulsets", "pair-g1"));
    assert_eq!(deleted["propagationPolicy"], "Background");
    let events = posted_events(&drained);
    assert_eq!(event_reasons(&drained), [pair_of("Normal", "GroupRemoved")]);
    assert!(
        events[0].2.contains("its journal claims are kept"),
        "{events:?}"
    );
    assert!(drains_asked(&h).is_empty());
}

/// A removed group whose live cannot move its messages (no bridge to the remaining group
/// links) is kept: Degraded DrainStuck with the live's reason, one Warning event.
#[tokio::test]
async fn given_a_removed_group_whose_drain_is_stuck_should_keep_it_and_warn_once_with_drain_stuck()
{
    let h = Harness::new();
    let bg = scaled_down();
    let groups = ["pair-g0", "pair-g1"];
    let why = "no bridge to pair-g0 is linked (connector pair-g0: refused: wrong password)";
    answer_two_groups(&h, Some(drain_section("stuck", 7, 0, Some(why))));
    let mut calls = calls_until_observed(&bg, &groups, two_groups_pods("draining"));
    calls.extend([post_event(), apply(&status_path()).returns(to_json(&bg))]);
    let stuck = h.reconcile(&bg, calls).await;

    assert!(
        drains_asked(&h).is_empty(),
        "asked already: it says why it is stuck"
    );
    assert_eq!(event_reasons(&stuck), [pair_of("Warning", "DrainStuck")]);
    let status = stuck.status();
    assert_eq!(condition(&status, "Degraded"), ("True", "DrainStuck"));
    let said = message(&status, "Degraded");
    assert!(
        said.contains("group pair-g1 is being removed but cannot drain") && said.contains(why),
        "{said}"
    );
    let drain = status.groups[1].drain.clone().expect("pair-g1 drains");
    assert_eq!(
        (drain.messages_left, drain.stuck.as_deref()),
        (Some(7), Some(why))
    );

    // Still stuck: said already, nothing changed.
    let bg = with_status(bg, status);
    let again = h
        .reconcile(
            &bg,
            calls_until_observed(&bg, &groups, two_groups_pods("draining")),
        )
        .await;
    assert_eq!(again.action(), Action::requeue(Duration::from_secs(3)));
}

/// A removed group with no live (both members down) cannot drain: DrainStuck says so.
#[tokio::test]
async fn given_a_removed_group_without_a_live_should_report_its_drain_stuck() {
    let h = Harness::new();
    let mut bg = pair();
    bg.spec.groups = 1;
    let bg = with_status(bg, settled(&[("pair-g0", "pair-g0-0", 1)]));
    answer_two_groups(&h, None);
    h.brokers.silence("10.0.2.10");
    h.brokers.silence("10.0.2.11");
    let mut pods = two_groups_pods("draining");
    pods[2] = broker_pod("pair-g1-0", "10.0.2.10", false, Some("draining"));
    pods[3] = broker_pod("pair-g1-1", "10.0.2.11", false, Some("backup"));
    let mut calls = calls_until_observed(&bg, &["pair-g0", "pair-g1"], pods);
    calls.extend([post_event(), apply(&status_path()).returns(to_json(&bg))]);
    let step = h.reconcile(&bg, calls).await;

    assert!(drains_asked(&h).is_empty(), "no live to ask");
    assert_eq!(event_reasons(&step), [pair_of("Warning", "DrainStuck")]);
    let status = step.status();
    assert_eq!(condition(&status, "Degraded"), ("True", "DrainStuck"));
    assert_eq!(
        status.groups[1]
            .drain
            .as_ref()
            .and_then(|d| d.stuck.as_deref()),
        Some("the group has no live broker to drain it")
    );
}

/// The `/status` of a member fenced by an admin request.
fn fenced_status(node: &str, epoch: u64, live: &str) -> Value {
    let mut status = backup_status(node, epoch, live);
    status["role"] = json!("fenced");
    status["adminFenced"] = json!(true);
    status["ha"]["sync"] = Value::Null;
    status
}

fn fence_reply(node: &str, fenced: bool) -> Result<FenceReply, String> {
    Ok(FenceReply {
        node: node.into(),
        fenced,
    })
}

#[tokio::test]
async fn given_a_backup_listed_in_fenced_members_should_fence_it_through_its_admin_endpoint_and_show_it_fenced(
) {
    let h = Harness::new();
    let bg = with_annotation(
        with_status(pair(), settled(&[("pair-g0", "pair-g0-0", 3)])),
        FENCED_MEMBERS,
        r#"["pair-g0-1"]"#,
    );
    answer_pair(&h, "pair-g0-0", 3);
    h.brokers
        .fences
        .can("10.0.0.11", fence_reply("pair-g0-1", true));
    let pods = || pair_pods("pair-g0-0", [CURRENT; 2]);
    let mut calls = calls_until_observed(&bg, &["pair-g0"], pods());
    calls.extend([post_event(), apply(&status_path()).returns(to_json(&bg))]);
    let fenced = h.reconcile(&bg, calls).await;

    assert_eq!(
        fences_asked(&h),
        ["10.0.0.11:8161 fenced"],
        "the backup, on its admin port, not forced"
    );
    assert!(
        switchovers_asked(&h).is_empty(),
        "a backup hands nothing over"
    );
    let events = posted_events(&fenced);
    assert_eq!(event_reasons(&fenced), [pair_of("Normal", "Fenced")]);
    assert!(events[0].2.contains("fenced pair-g0-1"), "{events:?}");
    let status = fenced.status();
    assert_eq!(status.groups[0].fenced, ["pair-g0-1"]);
    assert_eq!(status.groups[0].live.as_deref(), Some("pair-g0-0"));

    // It reports itself fenced: not asked again; the status reads it from the broker.
    let bg = with_status(bg, status);
    h.brokers
        .answer("10.0.0.11", fenced_status("pair-g0-1", 3, "pair-g0-0"));
    let mut calls = calls_until_observed(&bg, &["pair-g0"], pods());
    calls.push(apply(&status_path()).returns(to_json(&bg)));
    let after = h.reconcile(&bg, calls).await;

    assert!(fences_asked(&h).is_empty(), "fenced already");
    let status = after.status();
    let g0 = &status.groups[0];
    assert_eq!(g0.fenced, ["pair-g0-1"]);
    assert_eq!(
        g0.backups
            .iter()
            .map(|b| (b.pod.as_str(), b.state.as_str(), b.synced))
            .collect::<Vec<_>>(),
        [("pair-g0-1", "fenced", false)]
    );
}

#[tokio::test]
async fn given_a_fenced_member_no_longer_listed_should_unfence_it() {
    let h = Harness::new();
    let mut status = settled(&[("pair-g0", "pair-g0-0", 3)]);
    status.groups[0].fenced = vec!["pair-g0-1".into()];
    let bg = with_status(pair(), status);
    answer_pair(&h, "pair-g0-0", 3);
    h.brokers
        .answer("10.0.0.11", fenced_status("pair-g0-1", 3, "pair-g0-0"));
    h.brokers
        .fences
        .can("10.0.0.11", fence_reply("pair-g0-1", false));
    let mut calls = calls_until_observed(&bg, &["pair-g0"], pair_pods("pair-g0-0", [CURRENT; 2]));
    calls.extend([post_event(), apply(&status_path()).returns(to_json(&bg))]);
    let step = h.reconcile(&bg, calls).await;

    assert_eq!(fences_asked(&h), ["10.0.0.11:8161 unfenced"]);
    let events = posted_events(&step);
    assert_eq!(event_reasons(&step), [pair_of("Normal", "Unfenced")]);
    assert!(events[0].2.contains("unfenced pair-g0-1"), "{events:?}");
    assert!(step.status().groups[0].fenced.is_empty());
}

/// Fencing the live: it first hands its role to an in-sync backup (a switchover with reason
/// Fence, counted as a switchover), and is fenced once it is a backup.
#[tokio::test]
async fn given_the_live_listed_in_fenced_members_should_switch_over_to_the_backup_first_then_fence_it(
) {
    let h = Harness::new();
    let bg = with_annotation(
        with_status(pair(), settled(&[("pair-g0", "pair-g0-0", 3)])),
        FENCED_MEMBERS,
        r#"["pair-g0-0"]"#,
    );
    answer_pair(&h, "pair-g0-0", 3);
    h.brokers
        .switchovers
        .can("10.0.0.10", reply("pair-g0-0", "pair-g0-1", 4));
    let mut calls = calls_until_observed(&bg, &["pair-g0"], pair_pods("pair-g0-0", [CURRENT; 2]));
    calls.extend([post_event(), apply(&status_path()).returns(to_json(&bg))]);
    let handing = h.reconcile(&bg, calls).await;

    assert_eq!(switchovers_asked(&h), ["10.0.0.10:8161 -> pair-g0-1"]);
    assert!(
        fences_asked(&h).is_empty(),
        "never fence a live that serves"
    );
    let events = posted_events(&handing);
    assert_eq!(
        event_reasons(&handing),
        [pair_of("Normal", "SwitchingOver")]
    );
    assert!(
        events[0].2.contains("the live is to be fenced"),
        "{events:?}"
    );
    let status = handing.status();
    assert_eq!(
        status.groups[0]
            .switchover
            .as_ref()
            .map(|p| (p.to.as_str(), p.reason)),
        Some(("pair-g0-1", FailoverReason::Fence))
    );

    // pair-g0-1 is live: the former live, now a backup, is fenced.
    let bg = with_status(bg, status);
    answer_pair(&h, "pair-g0-1", 4);
    h.brokers
        .fences
        .can("10.0.0.10", fence_reply("pair-g0-0", true));
    let mut calls = calls_until_observed(&bg, &["pair-g0"], pair_pods("pair-g0-0", [CURRENT; 2]));
    calls.extend([
        merge_patch(&core("pods", "pair-g0-0")),
        merge_patch(&core("pods", "pair-g0-1")),
        post_event(),
        post_event(),
        apply(&status_path()).returns(to_json(&bg)),
    ]);
    let fenced = h.reconcile(&bg, calls).await;

    assert_eq!(fences_asked(&h), ["10.0.0.10:8161 fenced"]);
    assert!(switchovers_asked(&h).is_empty());
    assert_eq!(
        event_reasons(&fenced),
        [
            pair_of("Normal", "Fenced"),
            pair_of("Normal", "SwitchedOver")
        ]
    );
    let status = fenced.status();
    let g0 = &status.groups[0];
    assert_eq!(g0.fenced, ["pair-g0-0"]);
    assert_eq!(g0.live.as_deref(), Some("pair-g0-1"));
    let last = g0.last_failover.as_ref().expect("a lastFailover");
    assert_eq!(
        (last.from.as_str(), last.to.as_str(), last.reason),
        ("pair-g0-0", "pair-g0-1", FailoverReason::Fence)
    );
    assert_eq!((g0.failovers, g0.switchovers), (0, 1));

    // No failback onto a fenced member.
    let bg = with_status(bg, status);
    h.brokers
        .answer("10.0.0.10", fenced_status("pair-g0-0", 4, "pair-g0-1"));
    let mut calls = calls_until_observed(&bg, &["pair-g0"], pair_pods("pair-g0-1", [CURRENT; 2]));
    calls.push(apply(&status_path()).returns(to_json(&bg)));
    h.reconcile(&bg, calls).await.action();
    assert!(
        switchovers_asked(&h).is_empty(),
        "no failback to a fenced member"
    );
    assert!(fences_asked(&h).is_empty());
}

#[tokio::test]
async fn given_a_garbled_fenced_members_annotation_should_fence_nothing_and_warn_once_with_invalid_annotation(
) {
    let h = Harness::new();
    let bg = with_annotation(
        with_status(pair(), settled(&[("pair-g0", "pair-g0-0", 3)])),
        FENCED_MEMBERS,
        "pair-g0-1",
    );
    answer_pair(&h, "pair-g0-0", 3);
    let pods = || pair_pods("pair-g0-0", [CURRENT; 2]);
    let mut calls = calls_until_observed(&bg, &["pair-g0"], pods());
    calls.extend([post_event(), apply(&status_path()).returns(to_json(&bg))]);
    let step = h.reconcile(&bg, calls).await;

    assert!(fences_asked(&h).is_empty() && switchovers_asked(&h).is_empty());
    assert_eq!(
        event_reasons(&step),
        [pair_of("Warning", "InvalidAnnotation")]
    );
    let status = step.status();
    assert_eq!(
        condition(&status, "Degraded"),
        ("True", "InvalidAnnotation")
    );
    let said = message(&status, "Degraded");
    assert!(
        said.contains("duomq.io/fenced-members")
            && said.contains("is not a JSON list of pod names"),
        "{said}"
    );

    // Said once.
    let bg = with_status(bg, status);
    h.reconcile(&bg, calls_until_observed(&bg, &["pair-g0"], pods()))
        .await
        .action();
}

/// A group's Lease as the API server holds it.
fn lease(group: &str, holder: Option<&str>, released: Option<&str>) -> Value {
    let mut lease = json!({
        "apiVersion": "coordination.k8s.io/v1", "kind": "Lease",
        "metadata": {"name": group, "namespace": NS, "resourceVersion": "7",
                     "labels": {"app.kubernetes.io/instance": "pair"}, "ownerReferences": owner(UID)},
        "spec": {"leaseDurationSeconds": 10},
    });
    if let Some(holder) = holder {
        lease["spec"]["holderIdentity"] = json!(holder);
    }
    if let Some(released) = released {
        lease["metadata"]["annotations"] = json!({"duomq.io/released-holder": released});
    }
    lease
}

/// The calls of a reconcile of `pair` (one group, rolled out) up to observing `pods` and
/// `leases`.
fn calls_with_leases(bg: &BrokerGroup, pods: Vec<Value>, leases: Vec<Value>) -> Vec<Call> {
    let mut calls = vec![
        read_status(bg),
        get(&core("secrets", "pair-cluster")).returns(cluster_secret("pw")),
        list_statefulsets(vec![statefulset("pair-g0", true)]),
    ];
    calls.extend(applies(&["pair-g0"]));
    calls.extend(orphan_lists(&["pair-g0"], &[]));
    calls.extend(pods_and_leases(pods, leases));
    calls
}

/// Hibernation: every StatefulSet goes to no pod; once none is left the BrokerGroup says
/// Hibernated (no LiveLost, no Lease release for the lives that stopped); resumed, the pods
/// come back and Resumed is said once every group is live again.
#[tokio::test]
async fn given_hibernation_on_then_off_should_stop_every_pod_without_failover_then_resume() {
    let h = Harness::new();
    let settled_bg = with_status(pair(), settled(&[("pair-g0", "pair-g0-0", 3)]));
    let bg = with_annotation(settled_bg.clone(), HIBERNATION, "on");

    // 1. Asked: the StatefulSet is applied with no replica; the pods are still stopping.
    answer_pair(&h, "pair-g0-0", 3);
    let mut calls = calls_until_observed(&bg, &["pair-g0"], pair_pods("pair-g0-0", [CURRENT; 2]));
    calls.push(apply(&status_path()).returns(to_json(&bg)));
    let stopping = h.reconcile(&bg, calls).await;

    let set = stopping.body(Method::PATCH, &apis("apps/v1", "statefulsets", "pair-g0"));
    assert_eq!(set["spec"]["replicas"], 0);
    assert!(posted_events(&stopping).is_empty());
    let status = stopping.status();
    assert_eq!(condition(&status, "Hibernated"), ("False", "Hibernating"));
    assert_eq!(condition(&status, "Progressing"), ("True", "Hibernating"));

    // 2. No pod left; the live that stopped still holds its Lease: not released.
    let bg = with_status(bg, status);
    let calls = calls_with_leases(&bg, vec![], vec![lease("pair-g0", Some("pair-g0-0"), None)]);
    let mut calls = calls;
    calls.extend([post_event(), apply(&status_path()).returns(to_json(&bg))]);
    let asleep = h.reconcile(&bg, calls).await;

    assert_eq!(
        event_reasons(&asleep),
        [pair_of("Normal", "Hibernated")],
        "no LiveLost, no OperatorFailover"
    );
    let status = asleep.status();
    assert_eq!(condition(&status, "Available"), ("False", "Hibernated"));
    assert_eq!(condition(&status, "Hibernated"), ("True", "Hibernated"));
    assert_eq!(condition(&status, "Degraded"), ("False", "AsExpected"));
    assert_eq!((status.failovers, status.switchovers), (0, 0));
    assert_eq!(
        asleep.action(),
        Action::requeue(Duration::from_secs(15)),
        "asleep: the slow poll"
    );

    // 3. Resumed: the StatefulSet is applied with its members again.
    let bg = with_annotation(with_status(settled_bg, status), HIBERNATION, "off");
    let mut calls = calls_until_observed(&bg, &["pair-g0"], vec![]);
    calls.push(apply(&status_path()).returns(to_json(&bg)));
    let resuming = h.reconcile(&bg, calls).await;

    let set = resuming.body(Method::PATCH, &apis("apps/v1", "statefulsets", "pair-g0"));
    assert_eq!(set["spec"]["replicas"], 2);
    assert!(posted_events(&resuming).is_empty());
    let status = resuming.status();
    assert_eq!(condition(&status, "Hibernated"), ("False", "Resuming"));
    assert_eq!(condition(&status, "Degraded"), ("False", "AsExpected"));

    // 4. Every group live again: Resumed, and no failover was counted.
    let bg = with_status(bg, status);
    let mut pods = pair_pods("pair-g0-0", [CURRENT; 2]);
    for pod in &mut pods {
        if let Some(labels) = pod["metadata"]["labels"].as_object_mut() {
            labels.remove("duomq.io/role");
        }
    }
    let mut calls = calls_until_observed(&bg, &["pair-g0"], pods);
    calls.extend([
        merge_patch(&core("pods", "pair-g0-0")),
        merge_patch(&core("pods", "pair-g0-1")),
        post_event(),
        apply(&status_path()).returns(to_json(&bg)),
    ]);
    let resumed = h.reconcile(&bg, calls).await;

    assert_eq!(event_reasons(&resumed), [pair_of("Normal", "Resumed")]);
    let status = resumed.status();
    assert_eq!(condition(&status, "Available"), ("True", "AllGroupsLive"));
    assert_eq!(condition(&status, "Hibernated"), ("False", "Running"));
    assert_eq!((status.failovers, status.switchovers), (0, 0));
}

/// A group's StatefulSet whose `data` claim template asks for `size`.
fn statefulset_with_claims(name: &str, size: &str) -> Value {
    let mut sts = statefulset(name, true);
    sts["spec"]["volumeClaimTemplates"] = json!([{
        "metadata": {"name": "data"},
        "spec": {"accessModes": ["ReadWriteOnce"], "resources": {"requests": {"storage": size}}},
    }]);
    sts
}

/// A journal claim as the API server holds it.
fn claim(name: &str, size: &str) -> Value {
    json!({
        "apiVersion": "v1", "kind": "PersistentVolumeClaim",
        "metadata": {"name": name, "namespace": NS},
        "spec": {"accessModes": ["ReadWriteOnce"], "resources": {"requests": {"storage": size}}},
    })
}

/// `pair` whose `storage.size` grew from 1Gi to 2Gi.
fn grown() -> BrokerGroup {
    let mut bg = pair();
    bg.metadata.generation = Some(2);
    bg.spec.storage.size = "2Gi".into();
    with_status(bg, settled(&[("pair-g0", "pair-g0-0", 3)]))
}

#[tokio::test]
async fn given_a_larger_storage_size_should_apply_the_old_template_grow_each_claim_then_orphan_delete_the_statefulset(
) {
    let h = Harness::new();
    let bg = grown();
    answer_pair(&h, "pair-g0-0", 3);
    let mut calls = calls_observing(
        &bg,
        &["pair-g0"],
        pair_pods("pair-g0-0", [CURRENT; 2]),
        vec![statefulset_with_claims("pair-g0", "1Gi")],
    );
    calls.extend([
        merge_patch(&core("persistentvolumeclaims", "data-pair-g0-0"))
            .returns(claim("data-pair-g0-0", "2Gi")),
        merge_patch(&core("persistentvolumeclaims", "data-pair-g0-1"))
            .returns(claim("data-pair-g0-1", "2Gi")),
        delete(&apis("apps/v1", "statefulsets", "pair-g0")),
        post_event(),
        apply(&status_path()).returns(to_json(&bg)),
    ]);
    let step = h.reconcile(&bg, calls).await;

    let set = step.body(Method::PATCH, &apis("apps/v1", "statefulsets", "pair-g0"));
    assert_eq!(
        set["spec"]["volumeClaimTemplates"][0]["spec"]["resources"]["requests"]["storage"], "1Gi",
        "a claim template is immutable: applied as it is"
    );
    for pod in ["pair-g0-0", "pair-g0-1"] {
        assert_eq!(
            step.body(
                Method::PATCH,
                &core("persistentvolumeclaims", &format!("data-{pod}"))
            ),
            json!({"spec": {"resources": {"requests": {"storage": "2Gi"}}}})
        );
    }
    let deleted = step.body(Method::DELETE, &apis("apps/v1", "statefulsets", "pair-g0"));
    assert_eq!(
        deleted["propagationPolicy"], "Orphan",
        "its pods keep running while it is recreated"
    );
    let events = posted_events(&step);
    assert_eq!(event_reasons(&step), [pair_of("Normal", "VolumeExpanding")]);
    assert!(events[0].2.contains("2Gi"), "{events:?}");
    let status = step.status();
    assert_eq!(condition(&status, "Degraded"), ("False", "AsExpected"));

    // The StatefulSet is gone: it is created again with the new claim template, around the
    // pods that kept running; nothing is resized twice.
    let bg = with_status(bg, status);
    let calls = calls_observing(
        &bg,
        &["pair-g0"],
        pair_pods("pair-g0-0", [CURRENT; 2]),
        vec![],
    );
    let recreated = h.reconcile(&bg, calls).await;
    let set = recreated.body(Method::PATCH, &apis("apps/v1", "statefulsets", "pair-g0"));
    assert_eq!(
        set["spec"]["volumeClaimTemplates"][0]["spec"]["resources"]["requests"]["storage"],
        "2Gi"
    );
    assert_eq!(recreated.action(), Action::requeue(Duration::from_secs(15)));
}

#[tokio::test]
async fn given_a_larger_storage_size_that_the_storage_class_refuses_should_report_volume_expansion_refused_and_delete_nothing(
) {
    let h = Harness::new();
    let bg = grown();
    answer_pair(&h, "pair-g0-0", 3);
    let refusal = "persistentvolumeclaims \"data-pair-g0-0\" is forbidden: only dynamically provisioned pvc can be resized and the storageclass that provisions the pvc must support resize";
    let mut calls = calls_observing(
        &bg,
        &["pair-g0"],
        pair_pods("pair-g0-0", [CURRENT; 2]),
        vec![statefulset_with_claims("pair-g0", "1Gi")],
    );
    calls.extend([
        merge_patch(&core("persistentvolumeclaims", "data-pair-g0-0")).refused(
            StatusCode::FORBIDDEN,
            "Forbidden",
            refusal,
        ),
        post_event(),
        apply(&status_path()).returns(to_json(&bg)),
    ]);
    let step = h.reconcile(&bg, calls).await;

    assert!(
        !step.requests.iter().any(|s| s.method == Method::DELETE),
        "the StatefulSet is kept"
    );
    assert_eq!(
        event_reasons(&step),
        [pair_of("Warning", "VolumeExpansionRefused")]
    );
    let status = step.status();
    assert_eq!(
        condition(&status, "Degraded"),
        ("True", "VolumeExpansionRefused")
    );
    let said = message(&status, "Degraded");
    assert!(
        said.contains("claim data-pair-g0-0 cannot grow to 2Gi") && said.contains(refusal),
        "{said}"
    );
}

/// A member pod the scheduler cannot place: PodScheduled False, reason Unschedulable.
fn unschedulable_pod(name: &str) -> Value {
    let mut pod = broker_pod(name, "", false, None);
    if let Some(spec) = pod["spec"].as_object_mut() {
        spec.remove("nodeName");
    }
    pod["status"] = json!({
        "phase": "Pending",
        "conditions": [{"type": "PodScheduled", "status": "False", "reason": "Unschedulable",
                        "message": "0/3 nodes are available: 3 Insufficient memory."}],
    });
    pod
}

#[tokio::test]
async fn given_member_pods_that_cannot_be_scheduled_should_report_pods_unschedulable_naming_them_once(
) {
    let h = Harness::new();
    let bg = pair();
    let pods = || {
        vec![
            unschedulable_pod("pair-g0-0"),
            unschedulable_pod("pair-g0-1"),
        ]
    };
    let mut calls = calls_until_observed(&bg, &["pair-g0"], pods());
    calls.extend([post_event(), apply(&status_path()).returns(to_json(&bg))]);
    let step = h.reconcile(&bg, calls).await;

    assert!(h.brokers.asked().is_empty(), "no broker runs to ask");
    assert_eq!(
        event_reasons(&step),
        [pair_of("Warning", "PodsUnschedulable")]
    );
    let status = step.status();
    assert_eq!(
        condition(&status, "Degraded"),
        ("True", "PodsUnschedulable")
    );
    let said = message(&status, "Degraded");
    for pod in ["pair-g0-0", "pair-g0-1"] {
        assert!(
            said.contains(&format!(
                "{pod} (0/3 nodes are available: 3 Insufficient memory.)"
            )),
            "{said}"
        );
    }
    assert_eq!(
        status.groups[0]
            .backups
            .iter()
            .map(|b| b.state.as_str())
            .collect::<Vec<_>>(),
        ["unschedulable", "unschedulable"]
    );

    // Still unschedulable: said already, nothing changed.
    let bg = with_status(bg, status);
    h.reconcile(&bg, calls_until_observed(&bg, &["pair-g0"], pods()))
        .await
        .action();
}

/// Between the live letting go and its target taking over there is no live for a moment:
/// while the switchover the live agreed to is pending, that look says nothing (changed with
/// the one-way reconcile: it used to post LiveLost and SwitchoverFailed "has no live to hand
/// over").
#[tokio::test]
async fn given_a_pending_switchover_when_a_look_finds_no_live_should_say_nothing_and_wait() {
    let h = Harness::new();
    let status = pending(
        settled(&[("pair-g0", "pair-g0-0", 3)]),
        "pair-g0-1",
        FailoverReason::Switchover,
    );
    let bg = with_annotation(with_status(pair(), status), SWITCHOVER, "pair-g0=pair-g0-1");
    // The former live is a backup already; its target is not live yet.
    h.brokers
        .answer("10.0.0.10", backup_status("pair-g0-0", 3, "pair-g0-1"));
    h.brokers
        .answer("10.0.0.11", backup_status("pair-g0-1", 3, "pair-g0-0"));
    let mut calls = calls_until_observed(&bg, &["pair-g0"], pair_pods("pair-g0-0", [CURRENT; 2]));
    calls.extend([
        merge_patch(&core("pods", "pair-g0-0")),
        apply(&status_path()).returns(to_json(&bg)),
    ]);
    let step = h.reconcile(&bg, calls).await;

    assert!(
        posted_events(&step).is_empty(),
        "{:?}",
        posted_events(&step)
    );
    assert!(switchovers_asked(&h).is_empty(), "asked once already");
    assert_eq!(
        step.body(Method::PATCH, &core("pods", "pair-g0-0")),
        json!({"metadata": {"labels": {"duomq.io/role": "backup"}}}),
        "out of the client Service"
    );
    let status = step.status();
    assert_eq!(status.groups[0].live, None);
    assert_eq!(
        status.groups[0].switchover.as_ref().map(|p| p.to.as_str()),
        Some("pair-g0-1"),
        "still waiting for it"
    );
    assert_eq!(condition(&status, "Progressing"), ("True", "Switchover"));
    assert_eq!(condition(&status, "Degraded"), ("False", "AsExpected"));
    assert_eq!((status.failovers, status.switchovers), (0, 0));
}

/// A dead live's Lease is released (GET, then PUT without holder), the backup takes over
/// (an unplanned change: a failover), then the preferred member fails back (planned: a
/// switchover): status.failovers and status.switchovers count them apart, and only the
/// failover counts in the operator's failover metric.
#[tokio::test]
async fn given_an_operator_failover_then_a_failback_should_count_one_failover_and_one_switchover() {
    let h = Harness::new();
    let bg = with_status(pair(), settled(&[("pair-g0", "pair-g0-0", 3)]));

    // 1. The live's container died while it holds the Lease: released at once.
    h.brokers
        .answer("10.0.0.11", backup_status("pair-g0-1", 3, "pair-g0-0"));
    let dead = || {
        vec![
            broker_pod("pair-g0-0", "10.0.0.10", false, Some("live")),
            broker_pod("pair-g0-1", "10.0.0.11", true, Some("backup")),
        ]
    };
    let held = lease("pair-g0", Some("pair-g0-0"), None);
    let mut calls = calls_with_leases(&bg, dead(), vec![held.clone()]);
    calls.extend([
        get(&apis("coordination.k8s.io/v1", "leases", "pair-g0")).returns(held),
        Call::new(
            Method::PUT,
            apis("coordination.k8s.io/v1", "leases", "pair-g0"),
        )
        .query(&[])
        .content_type(JSON),
        post_event(),
        post_event(),
        apply(&status_path()).returns(to_json(&bg)),
    ]);
    let released = h.reconcile(&bg, calls).await;

    let put = released.body(
        Method::PUT,
        &apis("coordination.k8s.io/v1", "leases", "pair-g0"),
    );
    assert_eq!(put["spec"]["holderIdentity"], Value::Null, "{put}");
    assert_eq!(
        put["metadata"]["annotations"]["duomq.io/released-holder"], "pair-g0-0",
        "{put}"
    );
    assert_eq!(
        put["metadata"]["resourceVersion"], "7",
        "a concurrent change is refused"
    );
    assert_eq!(
        event_reasons(&released),
        [
            pair_of("Warning", "OperatorFailover"),
            pair_of("Warning", "LiveLost")
        ]
    );

    // 2. The backup took the released Lease and is live: a failover.
    let bg = with_status(bg, released.status());
    h.brokers
        .answer("10.0.0.11", live_status("pair-g0-1", 4, "pair-g0-0"));
    let mut calls = calls_with_leases(
        &bg,
        dead(),
        vec![lease("pair-g0", Some("pair-g0-1"), Some("pair-g0-0"))],
    );
    calls.extend([
        merge_patch(&core("pods", "pair-g0-1")),
        post_event(),
        apply(&status_path()).returns(to_json(&bg)),
    ]);
    let failed_over = h.reconcile(&bg, calls).await;

    assert_eq!(
        event_reasons(&failed_over),
        [pair_of("Warning", "FailedOver")]
    );
    let status = failed_over.status();
    let g0 = &status.groups[0];
    assert_eq!(
        g0.last_failover.as_ref().map(|f| f.reason),
        Some(FailoverReason::OperatorFailover)
    );
    assert_eq!((g0.failovers, g0.switchovers), (1, 0));

    // 3. The preferred member is back in sync: failback asked.
    let bg = with_status(bg, status);
    answer_pair(&h, "pair-g0-1", 4);
    h.brokers
        .switchovers
        .can("10.0.0.11", reply("pair-g0-1", "pair-g0-0", 5));
    let mut calls = calls_with_leases(
        &bg,
        pair_pods("pair-g0-1", [CURRENT; 2]),
        vec![lease("pair-g0", Some("pair-g0-1"), Some("pair-g0-0"))],
    );
    calls.extend([post_event(), apply(&status_path()).returns(to_json(&bg))]);
    let asked = h.reconcile(&bg, calls).await;
    assert_eq!(switchovers_asked(&h), ["10.0.0.11:8161 -> pair-g0-0"]);
    assert_eq!(event_reasons(&asked), [pair_of("Normal", "SwitchingOver")]);

    // 4. It is live again: a switchover, not a failover.
    let bg = with_status(bg, asked.status());
    answer_pair(&h, "pair-g0-0", 5);
    let mut calls = calls_with_leases(
        &bg,
        pair_pods("pair-g0-1", [CURRENT; 2]),
        vec![lease("pair-g0", Some("pair-g0-0"), Some("pair-g0-0"))],
    );
    calls.extend([
        merge_patch(&core("pods", "pair-g0-0")),
        merge_patch(&core("pods", "pair-g0-1")),
        post_event(),
        apply(&status_path()).returns(to_json(&bg)),
    ]);
    let back = h.reconcile(&bg, calls).await;

    assert_eq!(event_reasons(&back), [pair_of("Normal", "FailedBack")]);
    let status = back.status();
    let g0 = &status.groups[0];
    assert_eq!(
        g0.last_failover.as_ref().map(|f| f.reason),
        Some(FailoverReason::Failback)
    );
    assert_eq!((g0.failovers, g0.switchovers), (1, 1));
    assert_eq!((status.failovers, status.switchovers), (1, 1));
    assert_eq!(
        h.ctx.metrics.failovers.get(),
        1,
        "planned hand-overs are not failovers"
    );
}

/// The live cannot be fenced while no unfenced backup is in sync to take its role: it keeps
/// serving, nothing is asked of it, and Degraded FenceFailed says why.
#[tokio::test]
async fn given_the_live_listed_in_fenced_members_without_an_in_sync_backup_should_keep_it_serving_and_report_fence_failed(
) {
    let h = Harness::new();
    let bg = with_annotation(
        with_status(pair(), settled(&[("pair-g0", "pair-g0-0", 3)])),
        FENCED_MEMBERS,
        r#"["pair-g0-0"]"#,
    );
    answer_pair(&h, "pair-g0-0", 3);
    h.brokers.silence("10.0.0.11");
    let mut calls = calls_until_observed(&bg, &["pair-g0"], pair_pods("pair-g0-0", [CURRENT; 2]));
    calls.extend([post_event(), apply(&status_path()).returns(to_json(&bg))]);
    let step = h.reconcile(&bg, calls).await;

    assert!(switchovers_asked(&h).is_empty() && fences_asked(&h).is_empty());
    assert_eq!(event_reasons(&step), [pair_of("Warning", "FenceFailed")]);
    let status = step.status();
    assert_eq!(condition(&status, "Degraded"), ("True", "FenceFailed"));
    assert!(
        message(&status, "Degraded").contains(
            "cannot fence pair-g0-0: it is the live of pair-g0 and no unfenced backup is in sync"
        ),
        "{status:?}"
    );
    assert_eq!(status.groups[0].live.as_deref(), Some("pair-g0-0"));
    assert!(status.groups[0].fenced.is_empty());
}

/// A shared-database live has nothing to hand over: it is fenced with `force` (as if it
/// crashed) and its slave takes the database lease.
#[tokio::test]
async fn given_a_shared_database_live_listed_in_fenced_members_should_fence_it_with_force_and_no_switchover(
) {
    let h = Harness::new();
    let bg = with_annotation(
        with_status(shared_database(), settled(&[("pair-g0", "pair-g0-0", 2)])),
        FENCED_MEMBERS,
        r#"["pair-g0-0"]"#,
    );
    h.brokers.answer(
        "10.0.0.10",
        database_member_status("pair-g0-0", "live", 2, None),
    );
    h.brokers.answer(
        "10.0.0.11",
        database_member_status("pair-g0-1", "backup", 2, None),
    );
    h.brokers
        .fences
        .can("10.0.0.10", fence_reply("pair-g0-0", true));
    let mut calls = shared_database_calls(
        &bg,
        get(&core("secrets", "pg-app")).returns(app_secret()),
        vec![
            broker_pod("pair-g0-0", "10.0.0.10", true, Some("live")),
            broker_pod("pair-g0-1", "10.0.0.11", true, Some("backup")),
        ],
    );
    calls.extend([post_event(), apply(&status_path()).returns(to_json(&bg))]);
    let step = h.reconcile(&bg, calls).await;

    assert_eq!(fences_asked(&h), ["10.0.0.10:8161 fenced force"]);
    assert!(
        switchovers_asked(&h).is_empty(),
        "a shared store hands nothing over"
    );
    assert_eq!(event_reasons(&step), [pair_of("Normal", "Fenced")]);
    assert_eq!(step.status().groups[0].fenced, ["pair-g0-0"]);
}

/// A member that refuses to be fenced (or cannot be reached) is said with a Warning event,
/// as `Reason::FenceFailed` is documented (Warning; problem), besides the Degraded condition.
#[tokio::test]
async fn given_a_backup_that_refuses_to_be_fenced_should_warn_with_fence_failed() {
    let h = Harness::new();
    let bg = with_annotation(
        with_status(pair(), settled(&[("pair-g0", "pair-g0-0", 3)])),
        FENCED_MEMBERS,
        r#"["pair-g0-1"]"#,
    );
    answer_pair(&h, "pair-g0-0", 3);
    // Nothing canned: the fake refuses the connection.
    let mut calls = calls_until_observed(&bg, &["pair-g0"], pair_pods("pair-g0-0", [CURRENT; 2]));
    calls.extend([post_event(), apply(&status_path()).returns(to_json(&bg))]);
    let step = h.reconcile(&bg, calls).await;

    assert_eq!(fences_asked(&h), ["10.0.0.11:8161 fenced"]);
    assert_eq!(event_reasons(&step), [pair_of("Warning", "FenceFailed")]);
    assert_eq!(
        condition(&step.status(), "Degraded"),
        ("True", "FenceFailed")
    );
}

/// Claims the storage class cannot grow are said with a Warning event (once), as
/// `Reason::VolumeExpansionRefused` is documented (Warning; problem).
#[tokio::test]
async fn given_a_larger_storage_size_that_the_storage_class_refuses_should_warn_once() {
    let h = Harness::new();
    let bg = grown();
    answer_pair(&h, "pair-g0-0", 3);
    let mut calls = calls_observing(
        &bg,
        &["pair-g0"],
        pair_pods("pair-g0-0", [CURRENT; 2]),
        vec![statefulset_with_claims("pair-g0", "1Gi")],
    );
    calls.extend([
        merge_patch(&core("persistentvolumeclaims", "data-pair-g0-0")).refused(
            StatusCode::FORBIDDEN,
            "Forbidden",
            "the storageclass that provisions the pvc must support resize",
        ),
        post_event(),
        apply(&status_path()).returns(to_json(&bg)),
    ]);
    let step = h.reconcile(&bg, calls).await;
    assert_eq!(
        event_reasons(&step),
        [pair_of("Warning", "VolumeExpansionRefused")]
    );
}

/// The API server stores quantities in canonical form: a StatefulSet created with a claim
/// template of `2048Mi` reads back as `2Gi`. The same size written another way is no
/// resize (sizes compare as quantities), or every reconcile would patch the claims and
/// orphan-delete the StatefulSet again.
#[tokio::test]
async fn given_a_storage_size_equal_to_the_template_but_written_differently_should_resize_nothing()
{
    let h = Harness::new();
    let mut bg = pair();
    bg.spec.storage.size = "2048Mi".into();
    let bg = with_status(bg, settled(&[("pair-g0", "pair-g0-0", 3)]));
    answer_pair(&h, "pair-g0-0", 3);
    let mut calls = calls_observing(
        &bg,
        &["pair-g0"],
        pair_pods("pair-g0-0", [CURRENT; 2]),
        vec![statefulset_with_claims("pair-g0", "2Gi")],
    );
    calls.push(apply(&status_path()).returns(to_json(&bg)));
    let step = h.reconcile(&bg, calls).await;
    assert!(posted_events(&step).is_empty());
}

/// A switchover that never showed within two minutes is no longer waited for: the group
/// has lost its live (LiveLost), and the request, still in the annotation, cannot be made.
#[tokio::test]
async fn given_a_pending_switchover_older_than_two_minutes_when_no_member_is_live_should_report_the_live_lost(
) {
    let h = Harness::new();
    let mut status = pending(
        settled(&[("pair-g0", "pair-g0-0", 3)]),
        "pair-g0-1",
        FailoverReason::Switchover,
    );
    if let Some(p) = status.groups[0].switchover.as_mut() {
        p.time = Time(
            Timestamp::from_second(Timestamp::now().as_second() - 200)
                .unwrap_or_else(|e| panic!("a timestamp: {e}")),
        );
    }
    let bg = with_annotation(with_status(pair(), status), SWITCHOVER, "pair-g0=pair-g0-1");
    h.brokers
        .answer("10.0.0.10", backup_status("pair-g0-0", 3, "pair-g0-1"));
    h.brokers
        .answer("10.0.0.11", backup_status("pair-g0-1", 3, "pair-g0-0"));
    let mut calls = calls_until_observed(&bg, &["pair-g0"], pair_pods("pair-g0-0", [CURRENT; 2]));
    calls.extend([
        merge_patch(&core("pods", "pair-g0-0")),
        post_event(),
        post_event(),
        apply(&status_path()).returns(to_json(&bg)),
    ]);
    let step = h.reconcile(&bg, calls).await;

    assert_eq!(
        event_reasons(&step),
        [
            pair_of("Warning", "LiveLost"),
            pair_of("Warning", "SwitchoverFailed")
        ]
    );
    assert!(switchovers_asked(&h).is_empty(), "no live to ask");
    let status = step.status();
    assert_eq!(status.groups[0].switchover, None, "no longer waited for");
    assert_eq!(condition(&status, "Degraded"), ("True", "SwitchoverFailed"));
    assert!(
        message(&status, "Degraded").contains("pair-g0 has no live to hand over"),
        "{status:?}"
    );
}

#[tokio::test]
async fn given_a_garbled_hibernation_annotation_should_leave_the_brokers_running_and_warn_with_invalid_annotation(
) {
    let h = Harness::new();
    let bg = with_annotation(
        with_status(pair(), settled(&[("pair-g0", "pair-g0-0", 3)])),
        HIBERNATION,
        "yes",
    );
    answer_pair(&h, "pair-g0-0", 3);
    let mut calls = calls_until_observed(&bg, &["pair-g0"], pair_pods("pair-g0-0", [CURRENT; 2]));
    calls.extend([post_event(), apply(&status_path()).returns(to_json(&bg))]);
    let step = h.reconcile(&bg, calls).await;

    let set = step.body(Method::PATCH, &apis("apps/v1", "statefulsets", "pair-g0"));
    assert_eq!(set["spec"]["replicas"], 2, "left running");
    assert_eq!(
        event_reasons(&step),
        [pair_of("Warning", "InvalidAnnotation")]
    );
    let status = step.status();
    assert_eq!(
        condition(&status, "Degraded"),
        ("True", "InvalidAnnotation")
    );
    assert!(
        message(&status, "Degraded").contains("duomq.io/hibernation"),
        "{status:?}"
    );
    assert_eq!(condition(&status, "Hibernated"), ("False", "Running"));
}

/// A removed group's live that cannot be asked to drain (its admin endpoint refuses): the
/// group is kept and DrainStuck says why, with one Warning event.
#[tokio::test]
async fn given_a_removed_groups_live_that_cannot_be_asked_to_drain_should_warn_with_drain_stuck() {
    let h = Harness::new();
    let bg = scaled_down();
    answer_two_groups(&h, None);
    // Nothing canned: the fake refuses the drain request.
    let mut calls = calls_until_observed(&bg, &["pair-g0", "pair-g1"], two_groups_pods("live"));
    calls.extend([
        merge_patch(&core("pods", "pair-g1-0")),
        post_event(),
        apply(&status_path()).returns(to_json(&bg)),
    ]);
    let step = h.reconcile(&bg, calls).await;

    assert_eq!(drains_asked(&h), ["10.0.2.10:8161 -> pair-g0"]);
    assert!(
        !step.requests.iter().any(|s| s.method == Method::DELETE),
        "nothing deleted before it drained"
    );
    let events = posted_events(&step);
    assert_eq!(event_reasons(&step), [pair_of("Warning", "DrainStuck")]);
    assert!(
        events[0]
            .2
            .contains("did not start draining: connection refused"),
        "{events:?}"
    );
    assert_eq!(
        condition(&step.status(), "Degraded"),
        ("True", "DrainStuck")
    );
}

// ---------------------------------------------------------------------------------------------
// spec.tls and spec.authorization
// ---------------------------------------------------------------------------------------------

/// `pair` with `spec.tls` (and `authorization`) as given.
fn with_spec(mut bg: BrokerGroup, field: &str, value: Value) -> BrokerGroup {
    let mut spec = serde_json::to_value(&bg.spec).unwrap_or_else(|e| panic!("a spec: {e}"));
    spec[field] = value;
    bg.spec = serde_json::from_value(spec).unwrap_or_else(|e| panic!("spec.{field}: {e}"));
    bg
}

/// A Secret as the API server holds it, with these text keys.
fn secret_with(name: &str, data: &BTreeMap<String, String>) -> Value {
    let data: serde_json::Map<String, Value> =
        data.iter().map(|(k, v)| (k.clone(), base64(v))).collect();
    json!({
        "apiVersion": "v1", "kind": "Secret",
        "metadata": {"name": name, "namespace": NS, "ownerReferences": owner(UID)},
        "type": "kubernetes.io/tls", "data": data,
    })
}

/// The text data of an applied Secret.
fn applied_secret(step: &Step, name: &str) -> BTreeMap<String, String> {
    let body = step.body(Method::PATCH, &core("secrets", name));
    body["data"]
        .as_object()
        .unwrap_or_else(|| panic!("{name} has data: {body}"))
        .iter()
        .map(|(k, v)| (k.clone(), unbase64(v)))
        .collect()
}

/// A reconcile of `pair` with OperatorManaged TLS whose group's objects exist: `ca` and
/// `tls` answer the reads of `pair-ca` and `pair-tls` (`None`: not found); no pods yet.
fn tls_calls(bg: &BrokerGroup, ca: Option<Value>, tls: Option<Value>) -> Vec<Call> {
    let read = |name: &str, found: Option<Value>| match found {
        Some(v) => get(&core("secrets", name)).returns(v),
        None => get(&core("secrets", name)).not_found(),
    };
    let mut calls = vec![
        read_status(bg),
        get(&core("secrets", "pair-cluster")).returns(cluster_secret("pw")),
        read("pair-ca", ca),
        read("pair-tls", tls),
        list_statefulsets(vec![statefulset("pair-g0", true)]),
    ];
    let mut applied = applies(&["pair-g0"]);
    let after_cluster = applied
        .iter()
        .position(|c| c.path.ends_with("/secrets/pair-cluster"))
        .map_or(0, |i| i + 1);
    applied.splice(
        after_cluster..after_cluster,
        [apply(&core("secrets", "pair-ca")), apply(&core("secrets", "pair-tls"))],
    );
    calls.extend(applied);
    calls.extend(orphan_lists(
        &["pair-g0"],
        &[
            ("secrets", metadata("pair-ca", Some(UID))),
            ("secrets", metadata("pair-tls", Some(UID))),
        ],
    ));
    calls.extend(pods_then_leases(vec![]));
    calls
}

fn operator_managed() -> BrokerGroup {
    with_spec(pair(), "tls", json!({"mode": "OperatorManaged"}))
}

/// The certificate checksum on the StatefulSet's pod template.
fn tls_checksum(step: &Step) -> String {
    let sts = step.body(Method::PATCH, &apis("apps/v1", "statefulsets", "pair-g0"));
    sts["spec"]["template"]["metadata"]["annotations"]["duomq.io/tls-checksum"]
        .as_str()
        .unwrap_or_else(|| panic!("no checksum annotation: {sts}"))
        .to_string()
}

fn dns_names_of(pem: &str) -> Vec<String> {
    use rustls::pki_types::pem::PemObject;
    let der = rustls::pki_types::CertificateDer::pem_slice_iter(pem.as_bytes())
        .next()
        .expect("a certificate")
        .expect("PEM");
    let (_, cert) = x509_parser::parse_x509_certificate(der.as_ref()).expect("X.509");
    let sans = cert
        .subject_alternative_name()
        .expect("SAN")
        .expect("SAN present");
    sans.value
        .general_names
        .iter()
        .filter_map(|n| match n {
            x509_parser::extensions::GeneralName::DNSName(d) => Some(d.to_string()),
            _ => None,
        })
        .collect()
}

#[tokio::test]
async fn given_operator_managed_tls_and_no_certificates_should_make_a_ca_and_a_member_certificate_and_mount_it(
) {
    let h = Harness::new();
    let bg = operator_managed();
    let mut calls = tls_calls(&bg, None, None);
    calls.extend([post_event(), apply(&status_path()).returns(to_json(&bg))]);
    let step = h.reconcile(&bg, calls).await;

    let ca = applied_secret(&step, "pair-ca");
    let tls = applied_secret(&step, "pair-tls");
    assert_eq!(ca.keys().collect::<Vec<_>>(), ["tls.crt", "tls.key"]);
    assert_eq!(tls.keys().collect::<Vec<_>>(), ["ca.crt", "tls.crt", "tls.key"]);
    assert_eq!(tls["ca.crt"], ca["tls.crt"], "the member Secret carries the CA certificate");
    let names = dns_names_of(&tls["tls.crt"]);
    for name in [
        "pair-g0-0.pair-g0-members.default.svc",
        "pair-g0-1.pair-g0-members.default.svc.cluster.local",
        "pair",
        "pair.default",
        "pair-g0.default.svc",
        "pair.default.svc.cluster.local",
    ] {
        assert!(names.contains(&name.to_string()), "{name} in {names:?}");
    }
    let events = posted_events(&step);
    assert_eq!(
        (events[0].0.as_str(), events[0].1.as_str()),
        ("Normal", "CertificateIssued"),
        "{events:?}"
    );

    // The pods mount the Secret, probe over HTTPS, and every listener speaks TLS.
    let sts = step.body(Method::PATCH, &apis("apps/v1", "statefulsets", "pair-g0"));
    let pod = &sts["spec"]["template"]["spec"];
    let volume = pod["volumes"]
        .as_array()
        .and_then(|v| v.iter().find(|v| v["name"] == "tls"))
        .unwrap_or_else(|| panic!("a tls volume: {pod}"));
    assert_eq!(volume["secret"]["secretName"], "pair-tls");
    assert_eq!(pod["containers"][0]["readinessProbe"]["httpGet"]["scheme"], "HTTPS");
    assert!(!tls_checksum(&step).is_empty());
    let config = step.body(Method::PATCH, &core("configmaps", "pair-g0-config"));
    let yaml = config["data"]["pair-g0-0.yaml"].as_str().unwrap_or_default();
    let broker: duomq_broker::config::BrokerConfig =
        serde_yaml::from_str(yaml).unwrap_or_else(|e| panic!("the broker reads it: {e}\n{yaml}"));
    assert!(broker.tls.stomp.enabled && broker.tls.cluster.enabled && broker.tls.admin.enabled);
    assert_eq!(
        broker.tls.cert_file.as_deref(),
        Some(std::path::Path::new("/etc/duomq/tls/tls.crt"))
    );

    let status = step.status();
    let tls_status = status.tls.expect("status.tls");
    assert_eq!(tls_status.secret_name, "pair-tls");
    assert!(tls_status.not_after.is_some() && tls_status.ca_not_after.is_some());
    assert!(tls_status.renewed_at.is_some());
}

#[tokio::test]
async fn given_operator_managed_tls_with_good_certificates_should_reuse_them_without_an_event() {
    let h = Harness::new();
    let bg = operator_managed();
    let mut calls = tls_calls(&bg, None, None);
    calls.extend([post_event(), apply(&status_path()).returns(to_json(&bg))]);
    let first = h.reconcile(&bg, calls).await;
    let (ca, tls) = (applied_secret(&first, "pair-ca"), applied_secret(&first, "pair-tls"));

    let bg = with_status(bg, first.status());
    let calls = tls_calls(
        &bg,
        Some(secret_with("pair-ca", &ca)),
        Some(secret_with("pair-tls", &tls)),
    );
    let again = h.reconcile(&bg, calls).await;
    assert!(posted_events(&again).is_empty(), "nothing issued");
    // The status is unchanged (renewedAt stays), so it is not even patched.
    assert_eq!(applied_secret(&again, "pair-ca"), ca, "the CA is never replaced");
    assert_eq!(applied_secret(&again, "pair-tls"), tls, "the certificate is kept");
    assert_eq!(tls_checksum(&again), tls_checksum(&first), "no rolling restart");
}

#[tokio::test]
async fn given_a_member_certificate_near_expiry_should_renew_it_from_the_same_ca_and_roll_the_pods(
) {
    use duomq_broker::tls::pki::{Authority, Leaf};
    let h = Harness::new();
    let bg = operator_managed();
    let authority = Authority::generate("duomq default/pair CA", Duration::from_secs(86_400 * 365))
        .expect("a CA");
    let groups = duomq_operator::validate::group_models("pair", NS, &bg.spec);
    let mut leaf = Leaf::new("pair", Duration::from_secs(600));
    for name in duomq_operator::certificates::dns_names("pair", NS, &groups) {
        leaf = leaf.dns(name);
    }
    let old = authority.issue(&leaf).expect("a certificate expiring in 10 minutes");
    let ca = BTreeMap::from([
        ("tls.crt".to_string(), authority.pem().cert_pem.clone()),
        ("tls.key".to_string(), authority.pem().key_pem.clone()),
    ]);
    let tls = BTreeMap::from([
        ("tls.crt".to_string(), old.cert_pem.clone()),
        ("tls.key".to_string(), old.key_pem.clone()),
        ("ca.crt".to_string(), authority.pem().cert_pem.clone()),
    ]);
    let mut calls = tls_calls(
        &bg,
        Some(secret_with("pair-ca", &ca)),
        Some(secret_with("pair-tls", &tls)),
    );
    calls.extend([post_event(), apply(&status_path()).returns(to_json(&bg))]);
    let step = h.reconcile(&bg, calls).await;

    let events = posted_events(&step);
    assert_eq!(events[0].1, "CertificateRenewed", "{events:?}");
    assert!(events[0].2.contains("within renewBefore 720h"), "{}", events[0].2);
    let renewed = applied_secret(&step, "pair-tls");
    assert_ne!(renewed["tls.crt"], old.cert_pem, "a new certificate");
    assert_eq!(renewed["ca.crt"], authority.pem().cert_pem, "from the same CA");
    assert_eq!(applied_secret(&step, "pair-ca"), ca, "the CA is kept");
    let before = duomq_operator::certificates::Certificates {
        secret_name: "pair-tls".into(),
        data: tls,
        authority: None,
        issued: None,
        renew_at: None,
    };
    assert_ne!(
        tls_checksum(&step),
        before.checksum(),
        "the pod template changes: the members roll onto the new certificate"
    );
}

#[tokio::test]
async fn given_secret_mode_and_a_missing_secret_should_apply_nothing_and_say_so() {
    let h = Harness::new();
    let bg = with_spec(pair(), "tls", json!({"mode": "Secret", "secretName": "mine"}));
    let calls = vec![
        read_status(&bg),
        get(&core("secrets", "pair-cluster")).returns(cluster_secret("pw")),
        get(&core("secrets", "mine")).not_found(),
        list_statefulsets(vec![]),
        post_event(),
        apply(&status_path()).returns(to_json(&bg)),
    ];
    let step = h.reconcile(&bg, calls).await;
    assert_eq!(
        step.action(),
        Action::requeue(Duration::from_secs(15)),
        "the Secret may appear: look again"
    );
    let events = posted_events(&step);
    assert_eq!((events[0].0.as_str(), events[0].1.as_str()), ("Warning", "TlsSecretInvalid"));
    assert!(events[0].2.contains("tls.secretName mine: the Secret does not exist"), "{}", events[0].2);
    assert_eq!(condition(&step.status(), "Degraded"), ("True", "TlsSecretInvalid"));
    assert!(step.applies().is_empty(), "nothing applied");
}

#[tokio::test]
async fn given_permissions_from_a_config_map_should_render_them_or_say_it_is_missing() {
    let h = Harness::new();
    let bg = with_spec(
        pair(),
        "authorization",
        json!({"adminRoles": ["ops"], "permissionsFrom": {"configMapKeyRef": {"name": "perms", "key": "auth.yaml"}}}),
    );
    let perms = json!({
        "apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "perms", "namespace": NS},
        "data": {"auth.yaml": "roles: {producers: [app]}\npermissions:\n  - match: /queue/orders.>\n    send: [producers]\n"},
    });
    let mut calls = vec![
        read_status(&bg),
        get(&core("secrets", "pair-cluster")).returns(cluster_secret("pw")),
        get(&core("configmaps", "perms")).returns(perms),
        list_statefulsets(vec![statefulset("pair-g0", true)]),
    ];
    calls.extend(applies(&["pair-g0"]));
    calls.extend(orphan_lists(&["pair-g0"], &[]));
    calls.extend(pods_then_leases(vec![]));
    calls.push(apply(&status_path()).returns(to_json(&bg)));
    let step = h.reconcile(&bg, calls).await;
    let config = step.body(Method::PATCH, &core("configmaps", "pair-g0-config"));
    let yaml = config["data"]["pair-g0-1.yaml"].as_str().unwrap_or_default();
    let broker: duomq_broker::config::BrokerConfig =
        serde_yaml::from_str(yaml).unwrap_or_else(|e| panic!("the broker reads it: {e}\n{yaml}"));
    assert_eq!(broker.auth.roles.get("producers"), Some(&vec!["app".to_string()]));
    assert_eq!(broker.auth.permissions.len(), 1);
    assert_eq!(broker.auth.permissions[0].pattern, "/queue/orders.>");
    assert_eq!(broker.auth.permissions[0].send, ["producers"]);
    assert_eq!(broker.auth.admin_roles, ["ops"]);

    // The ConfigMap is gone: nothing is applied (no broker loses its permissions).
    let h = Harness::new();
    let calls = vec![
        read_status(&bg),
        get(&core("secrets", "pair-cluster")).returns(cluster_secret("pw")),
        get(&core("configmaps", "perms")).not_found(),
        list_statefulsets(vec![statefulset("pair-g0", true)]),
        post_event(),
        apply(&status_path()).returns(to_json(&bg)),
    ];
    let step = h.reconcile(&bg, calls).await;
    assert!(step.applies().is_empty(), "nothing applied");
    assert_eq!(condition(&step.status(), "Degraded"), ("True", "AuthorizationInvalid"));
    let events = posted_events(&step);
    assert!(events[0].2.contains("ConfigMap perms does not exist"), "{events:?}");
    assert_eq!(step.action(), Action::requeue(Duration::from_secs(15)));
}
