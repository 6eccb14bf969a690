//! HTTP: one fallback handler that parses the path, negotiates the representation (object,
//! PartialObjectMetadata, Table, aggregated discovery, protobuf OpenAPI) and dispatches to
//! discovery, OpenAPI, or the resource verbs (get, list, watch, create, update, patch,
//! delete, deletecollection, and the status, scale and binding subresources); port-forward
//! and pod log requests go to [`super::portforward`] and [`super::logs`] before the body is
//! read.
//!
//! It must not hold API rules: those live in write, delete, gc, admission and watch; this
//! module reads requests and writes responses, logging each at debug.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::body::Bytes;
use axum::extract::{ConnectInfo, Request, State};
use axum::response::{IntoResponse, Response};
use axum::Router;
use http::{header, HeaderMap, HeaderValue, Method, StatusCode};
use serde_json::{json, Value};
use tokio_util::sync::CancellationToken;

use super::crd_validation::FieldValidation;
use super::delete::{self, DeleteOptions, Deleted};
use super::discovery;
use super::error::{ApiError, ApiResult};
use super::faults::Faults;
use super::gc;
use super::logs;
use super::meta;
use super::openapi;
use super::patch::PatchType;
use super::portforward;
use super::path::{self, ResourcePath, Route};
use super::protobuf;
use super::registry::ResourceInfo;
use super::selectors::{FieldSelector, LabelSelector};
use super::store::{self, Store};
use super::subresources;
use super::table::{self, IncludeObject};
use super::watch::{self, Output, Start, WatchSpec};
use super::write::{self, Part, WriteOptions, Written};

/// Request bodies larger than this are refused, like Kubernetes' 3 MiB limit (with room).
const MAX_BODY: usize = 16 * 1024 * 1024;

/// What every request handler shares.
#[derive(Debug, Clone)]
pub(crate) struct AppState {
    pub store: Arc<Store>,
    pub cancel: CancellationToken,
    pub faults: Faults,
}

pub(crate) fn router(state: AppState) -> Router {
    Router::new().fallback(dispatch).with_state(Arc::new(state))
}

/// Query parameters, decoded.
struct Params(Vec<(String, String)>);

impl Params {
    fn parse(query: Option<&str>) -> Self {
        Self(
            form_urlencoded::parse(query.unwrap_or_default().as_bytes())
                .map(|(k, v)| (k.into_owned(), v.into_owned()))
                .collect(),
        )
    }

    fn get(&self, key: &str) -> Option<&str> {
        self.0
            .iter()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.as_str())
    }

    fn flag(&self, key: &str) -> bool {
        matches!(self.get(key), Some("true" | "1"))
    }
}

/// A request, read whole.
struct Req {
    method: Method,
    params: Params,
    headers: HeaderMap,
    body: Bytes,
}

impl Req {
    fn header(&self, name: header::HeaderName) -> &str {
        self.headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
    }

    fn output(&self) -> Output {
        let accept = self.header(header::ACCEPT);
        if accept.contains("as=Table") {
            Output::Table(IncludeObject::parse(self.params.get("includeObject")))
        } else if accept.contains("as=PartialObjectMetadata") {
            Output::Metadata
        } else {
            Output::Object
        }
    }

    fn write_options(&self) -> ApiResult<WriteOptions> {
        let field_manager = self.params.get("fieldManager").map(str::to_string);
        // Kubernetes names an unnamed writer after its user agent, up to the first '/'.
        let from_agent = self
            .header(header::USER_AGENT)
            .split('/')
            .next()
            .filter(|a| !a.is_empty())
            .unwrap_or("unknown")
            .to_string();
        Ok(WriteOptions {
            dry_run: self.params.get("dryRun").is_some_and(|d| !d.is_empty()),
            validation: FieldValidation::parse(self.params.get("fieldValidation"))?,
            manager: field_manager.clone().unwrap_or(from_agent),
            field_manager,
            force: self.params.flag("force"),
        })
    }

    fn json_body(&self) -> ApiResult<Value> {
        let content_type = self.header(header::CONTENT_TYPE);
        if content_type.contains("protobuf") {
            return protobuf::decode(&self.body).map_err(|e| {
                let mut err = ApiError::unsupported_media_type(content_type);
                err.message = e.to_string();
                err
            });
        }
        if content_type.contains("cbor") {
            return Err(ApiError::unsupported_media_type(content_type));
        }
        if content_type.contains("yaml") {
            return serde_yaml::from_slice(&self.body)
                .map_err(|e| ApiError::bad_request(format!("failed to decode YAML body: {e}")));
        }
        serde_json::from_slice(&self.body)
            .map_err(|e| ApiError::bad_request(format!("failed to decode JSON body: {e}")))
    }
}

async fn dispatch(State(app): State<Arc<AppState>>, request: Request) -> Response {
    let started = Instant::now();
    if let Some(ConnectInfo(peer)) = request.extensions().get::<ConnectInfo<SocketAddr>>() {
        if !app.faults.pass(peer.ip(), &app.cancel).await {
            return StatusCode::SERVICE_UNAVAILABLE.into_response();
        }
    }
    if let Route::Resource(rp) = path::parse(request.uri().path()) {
        if let (Some("portforward"), "", "pods", Some(ns), Some(name)) =
            (rp.subresource.as_deref(), rp.group.as_str(), rp.plural.as_str(), &rp.namespace, &rp.name)
        {
            let method = request.method().clone();
            let response = portforward::serve(app.store.clone(), app.cancel.clone(), request, ns, name).await;
            tracing::debug!(%method, namespace = %ns, pod = %name, status = response.status().as_u16(), "port-forward request");
            return response;
        }
        if let (Some("log"), "", "pods", Some(ns), Some(name)) =
            (rp.subresource.as_deref(), rp.group.as_str(), rp.plural.as_str(), &rp.namespace, &rp.name)
        {
            let method = request.method().clone();
            let response = logs::serve(app.store.clone(), app.cancel.clone(), &method, request.uri().query(), ns, name).await;
            tracing::debug!(%method, namespace = %ns, pod = %name, status = response.status().as_u16(), "pod log request");
            return response;
        }
    }
    let (parts, body) = request.into_parts();
    let path = parts.uri.path().to_string();
    let method = parts.method.clone();
    let body = match axum::body::to_bytes(body, MAX_BODY).await {
        Ok(b) => b,
        Err(error) => {
            tracing::debug!(%method, %path, %error, "request body not read");
            return ApiError::bad_request("failed to read the request body").into_response();
        }
    };
    let req = Req {
        method: parts.method,
        params: Params::parse(parts.uri.query()),
        headers: parts.headers,
        body,
    };
    let response = route(&app, &req, &path).unwrap_or_else(IntoResponse::into_response);
    tracing::debug!(
        %method,
        %path,
        query = parts.uri.query().unwrap_or_default(),
        status = response.status().as_u16(),
        elapsed_ms = started.elapsed().as_millis() as u64,
        "request"
    );
    response
}

fn json_response(code: StatusCode, value: &Value, warnings: &[String]) -> Response {
    let mut response = (
        code,
        [(header::CONTENT_TYPE, "application/json")],
        value.to_string(),
    )
        .into_response();
    for warning in warnings {
        let text = format!(
            "299 - {}",
            serde_json::to_string(warning).unwrap_or_default()
        );
        if let Ok(v) = HeaderValue::from_str(&text) {
            response.headers_mut().append(header::WARNING, v);
        }
    }
    response
}

fn ok(value: &Value) -> ApiResult<Response> {
    Ok(json_response(StatusCode::OK, value, &[]))
}

fn route(app: &AppState, req: &Req, path: &str) -> ApiResult<Response> {
    let store = &app.store;
    let get_only = |req: &Req| {
        if req.method == Method::GET {
            Ok(())
        } else {
            Err(ApiError::method_not_allowed(&req.method))
        }
    };
    match path::parse(path) {
        Route::Version => {
            get_only(req)?;
            ok(&discovery::version())
        }
        Route::Health => Ok((StatusCode::OK, "ok").into_response()),
        Route::CoreVersions | Route::Groups => {
            get_only(req)?;
            let core = matches!(path::parse(path), Route::CoreVersions);
            if discovery::wants_aggregated(req.header(header::ACCEPT)) {
                let doc = store.read(|s| discovery::aggregated(&s.registry, core));
                let mut response = json_response(StatusCode::OK, &doc, &[]);
                response.headers_mut().insert(
                    header::CONTENT_TYPE,
                    HeaderValue::from_static(discovery::AGGREGATED_CONTENT_TYPE),
                );
                return Ok(response);
            }
            if core {
                ok(&discovery::core_versions(req.header(header::HOST)))
            } else {
                ok(&store.read(|s| discovery::groups(&s.registry)))
            }
        }
        Route::Group(name) => {
            get_only(req)?;
            store
                .read(|s| discovery::group(&s.registry, &name))
                .map_or_else(|| Err(ApiError::not_found_path()), |d| ok(&d))
        }
        Route::GroupVersion { group, version } => {
            get_only(req)?;
            store
                .read(|s| discovery::resource_list(&s.registry, &group, &version))
                .map_or_else(|| Err(ApiError::not_found_path()), |d| ok(&d))
        }
        Route::OpenApiV2 => {
            get_only(req)?;
            if req.header(header::ACCEPT).contains("protobuf") {
                Ok((
                    [(header::CONTENT_TYPE, openapi::V2_PROTOBUF)],
                    openapi::v2_protobuf(),
                )
                    .into_response())
            } else {
                ok(&openapi::v2_json())
            }
        }
        Route::OpenApiV3Index => {
            get_only(req)?;
            ok(&store.read(|s| openapi::v3_index(&s.registry)))
        }
        Route::OpenApiV3 { group, version } => {
            get_only(req)?;
            store
                .read(|s| openapi::v3_document(&s.registry, &group, &version))
                .map_or_else(|| Err(ApiError::not_found_path()), |d| ok(&d))
        }
        Route::Resource(rp) => resource(app, req, rp),
        Route::Unknown => Err(ApiError::not_found_path()),
    }
}

fn resource(app: &AppState, req: &Req, rp: ResourcePath) -> ApiResult<Response> {
    let resource = app
        .store
        .read(|s| s.registry.lookup(&rp.group, &rp.version, &rp.plural))
        .ok_or_else(ApiError::not_found_path)?;
    if rp.namespace.is_some() && !resource.namespaced {
        return Err(ApiError::not_found_path());
    }
    if resource.namespaced && rp.namespace.is_none() && rp.name.is_some() {
        return Err(ApiError::not_found_path());
    }
    let sub = rp.subresource.as_deref();
    let valid_sub = match sub {
        None => true,
        Some("status") => resource.subresources.status,
        Some("scale") => resource.subresources.scale,
        Some("binding") => resource.subresources.binding,
        Some(_) => false,
    };
    if !valid_sub {
        return Err(ApiError::not_found_path());
    }
    let ns = rp.namespace.as_deref();
    let watching = rp.watch || req.params.flag("watch");
    let m = &req.method;
    match (rp.name.as_deref(), sub) {
        (None, None) if *m == Method::GET && watching => start_watch(app, req, &resource, ns, None),
        (None, None) if *m == Method::GET => list(app, req, &resource, ns),
        (None, None) if *m == Method::POST && (ns.is_some() || !resource.namespaced) => {
            create(app, req, &resource, ns)
        }
        (None, None) if *m == Method::DELETE => delete_collection(app, req, &resource, ns),
        (Some(name), None) if *m == Method::GET && watching => {
            start_watch(app, req, &resource, ns, Some(name))
        }
        (Some(name), Some("scale")) => scale(app, req, &resource, ns, name),
        (Some(name), Some("binding")) if *m == Method::POST => {
            app.store.write(|s| {
                subresources::bind(s, &resource, ns.unwrap_or_default(), name, &req.body)
            })?;
            ok(&json!({"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Success", "code": 201}))
                .map(|mut r| {
                    *r.status_mut() = StatusCode::CREATED;
                    r
                })
        }
        (Some(name), None | Some("status")) if *m == Method::GET => {
            get(app, req, &resource, ns, name)
        }
        (Some(name), part) if *m == Method::PUT || *m == Method::PATCH => {
            let part = if part == Some("status") {
                Part::Status
            } else {
                Part::Main
            };
            update(app, req, &resource, ns, name, part)
        }
        (Some(name), None) if *m == Method::DELETE => delete_one(app, req, &resource, ns, name),
        _ => Err(ApiError::method_not_allowed(m)),
    }
}

fn get(
    app: &AppState,
    req: &Req,
    resource: &ResourceInfo,
    ns: Option<&str>,
    name: &str,
) -> ApiResult<Response> {
    let (obj, rv) = app.store.read(|s| {
        (
            s.get(&resource.storage, ns.unwrap_or_default(), name),
            s.rv(),
        )
    });
    let obj = obj.ok_or_else(|| ApiError::not_found(resource, name))?;
    let body = match req.output() {
        Output::Object => resource.present(&obj),
        Output::Metadata => table::partial_metadata(&resource.present(&obj)),
        Output::Table(include) => table::table(resource, &[obj], include, rv),
    };
    ok(&body)
}

fn selectors(req: &Req, resource: &ResourceInfo) -> ApiResult<(LabelSelector, FieldSelector)> {
    Ok((
        LabelSelector::parse(req.params.get("labelSelector").unwrap_or_default())?,
        FieldSelector::parse(
            req.params.get("fieldSelector").unwrap_or_default(),
            resource,
        )?,
    ))
}

fn parse_rv(text: &str) -> ApiResult<u64> {
    text.parse()
        .map_err(|_| ApiError::bad_request(format!("invalid resource version {text:?}")))
}

fn list(
    app: &AppState,
    req: &Req,
    resource: &ResourceInfo,
    ns: Option<&str>,
) -> ApiResult<Response> {
    let (labels, fields) = selectors(req, resource)?;
    let exact = req.params.get("resourceVersionMatch") == Some("Exact");
    let requested = match req.params.get("resourceVersion").filter(|v| !v.is_empty()) {
        Some(v) => Some(parse_rv(v)?),
        None => None,
    };
    let (items, rv) = app.store.read(|s| {
        // Only the current state is kept: an exact list of any other version is as gone as
        // a compacted one. NotOlderThan (or no match) is served from the current state.
        if let Some(rv) = requested.filter(|rv| exact && *rv > 0) {
            if rv != s.rv() {
                return Err(ApiError::expired(format!(
                    "The resourceVersion for the provided list is too old (requested {rv}, current {}).",
                    s.rv()
                )));
            }
        }
        let items: Vec<Arc<Value>> = s
            .list(&resource.storage, ns)
            .into_iter()
            .filter(|o| labels.matches(o) && fields.matches(o))
            .collect();
        Ok((items, s.rv()))
    })?;
    let body = match req.output() {
        Output::Table(include) => table::table(resource, &items, include, rv),
        Output::Metadata => json!({
            "kind": "PartialObjectMetadataList",
            "apiVersion": "meta.k8s.io/v1",
            "metadata": {"resourceVersion": rv.to_string()},
            "items": items.iter().map(|o| table::partial_metadata(&resource.present(o))).collect::<Vec<_>>(),
        }),
        Output::Object => json!({
            "kind": resource.list_kind(),
            "apiVersion": resource.api_version(),
            "metadata": {"resourceVersion": rv.to_string()},
            "items": items.iter().map(|o| resource.present(o)).collect::<Vec<_>>(),
        }),
    };
    ok(&body)
}

fn start_watch(
    app: &AppState,
    req: &Req,
    resource: &Arc<ResourceInfo>,
    ns: Option<&str>,
    name: Option<&str>,
) -> ApiResult<Response> {
    let (labels, mut fields) = selectors(req, resource)?;
    if let Some(name) = name {
        fields = fields.with_name(name);
    }
    let rv = match req.params.get("resourceVersion").filter(|v| !v.is_empty()) {
        Some(v) => parse_rv(v)?,
        None => 0,
    };
    let send_initial = req.params.flag("sendInitialEvents");
    if send_initial && req.params.get("resourceVersionMatch") != Some("NotOlderThan") {
        return Err(ApiError::bad_request(
            "sendInitialEvents is only supported with resourceVersionMatch=NotOlderThan",
        ));
    }
    let start = match (send_initial, rv) {
        (true, _) => Start::InitialEvents,
        (false, 0) => Start::Current,
        (false, rv) => Start::After(rv),
    };
    let timeout = match req.params.get("timeoutSeconds") {
        Some(t) => Duration::from_secs(
            t.parse()
                .map_err(|_| ApiError::bad_request(format!("invalid timeoutSeconds {t:?}")))?,
        ),
        None => watch::DEFAULT_TIMEOUT,
    };
    let spec = WatchSpec {
        resource: resource.clone(),
        namespace: ns.map(str::to_string),
        labels,
        fields,
        start,
        bookmarks: req.params.flag("allowWatchBookmarks"),
        timeout,
        output: req.output(),
    };
    Ok(watch::serve(app.store.clone(), app.cancel.clone(), spec))
}

fn written_response(resource: &ResourceInfo, written: &Written) -> Response {
    json_response(
        written.code,
        &resource.present(&written.object),
        &written.warnings,
    )
}

fn create(
    app: &AppState,
    req: &Req,
    resource: &ResourceInfo,
    ns: Option<&str>,
) -> ApiResult<Response> {
    let body = req.json_body()?;
    let opts = req.write_options()?;
    let written = write_and_collect(app, |s| write::create(s, resource, ns, body, &opts))?;
    Ok(written_response(resource, &written))
}

/// One write, then the garbage collection it may have made due, in the same locked step.
fn write_and_collect<R>(app: &AppState, f: impl FnOnce(&mut store::State) -> R) -> R {
    app.store.write(|s| {
        let r = f(s);
        gc::collect(s);
        r
    })
}

fn update(
    app: &AppState,
    req: &Req,
    resource: &ResourceInfo,
    ns: Option<&str>,
    name: &str,
    part: Part,
) -> ApiResult<Response> {
    let opts = req.write_options()?;
    let written = if req.method == Method::PUT {
        let body = req.json_body()?;
        write_and_collect(app, |s| write::update(s, resource, ns, name, part, body, &opts))?
    } else {
        let patch_type = PatchType::from_content_type(req.header(header::CONTENT_TYPE))?;
        write_and_collect(app, |s| write::patch(s, resource, ns, name, part, patch_type, &req.body, &opts))?
    };
    Ok(written_response(resource, &written))
}

fn scale(
    app: &AppState,
    req: &Req,
    resource: &ResourceInfo,
    ns: Option<&str>,
    name: &str,
) -> ApiResult<Response> {
    let namespace = ns.unwrap_or_default();
    let written = match req.method {
        Method::GET => {
            let obj = app
                .store
                .read(|s| s.get(&resource.storage, namespace, name))
                .ok_or_else(|| ApiError::not_found(resource, name))?;
            return ok(&subresources::scale_of(&obj));
        }
        Method::PUT | Method::PATCH => {
            let patch_type = match req.method {
                Method::PATCH => Some(PatchType::from_content_type(
                    req.header(header::CONTENT_TYPE),
                )?),
                _ => None,
            };
            let opts = req.write_options()?;
            app.store.write(|s| {
                subresources::write_scale(
                    s, resource, namespace, name, &req.body, patch_type, &opts,
                )
            })?
        }
        _ => return Err(ApiError::method_not_allowed(&req.method)),
    };
    ok(&subresources::scale_of(&written.object))
}

fn delete_options(req: &Req) -> ApiResult<DeleteOptions> {
    let mut opts = DeleteOptions::default();
    if let Some(g) = req.params.get("gracePeriodSeconds") {
        opts.grace_period = Some(
            g.parse()
                .map_err(|_| ApiError::bad_request(format!("invalid gracePeriodSeconds {g:?}")))?,
        );
    }
    if let Some(p) = req.params.get("propagationPolicy") {
        opts.propagation = delete::parse_propagation(p)?;
    }
    opts.dry_run = req.params.get("dryRun").is_some_and(|d| !d.is_empty());
    opts.merge_body(&req.body)
}

/// Built-ins whose storage answers a completed delete with the object
/// (`ReturnDeletedObject`); the others answer with a Success Status.
const RETURN_DELETED_OBJECT: &[&str] = &["pods", "services", "serviceaccounts"];

/// The body of a completed delete, as Kubernetes answers it: the object for custom
/// resources and some built-ins, a Success Status for the rest.
fn deleted_body(resource: &ResourceInfo, obj: &Value) -> Value {
    let core_returning =
        resource.group.is_empty() && RETURN_DELETED_OBJECT.contains(&resource.plural.as_str());
    if resource.custom.is_some() || core_returning {
        return resource.present(obj);
    }
    let mut details =
        json!({"name": meta::name(obj), "kind": resource.plural, "uid": meta::uid(obj)});
    if !resource.group.is_empty() {
        details["group"] = json!(resource.group);
    }
    json!({"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Success", "details": details})
}

fn delete_one(
    app: &AppState,
    req: &Req,
    resource: &ResourceInfo,
    ns: Option<&str>,
    name: &str,
) -> ApiResult<Response> {
    let opts = delete_options(req)?;
    let deleted = write_and_collect(app, |s| delete::delete(s, resource, ns.unwrap_or_default(), name, &opts))?;
    match deleted {
        Deleted::Removed(obj) => ok(&deleted_body(resource, &obj)),
        Deleted::Pending(obj) => ok(&resource.present(&obj)),
    }
}

fn delete_collection(
    app: &AppState,
    req: &Req,
    resource: &ResourceInfo,
    ns: Option<&str>,
) -> ApiResult<Response> {
    let (labels, fields) = selectors(req, resource)?;
    let opts = delete_options(req)?;
    let (items, rv) = app.store.write(|s| {
        let targets: Vec<Arc<Value>> = s
            .list(&resource.storage, ns)
            .into_iter()
            .filter(|o| labels.matches(o) && fields.matches(o))
            .collect();
        let mut items = Vec::new();
        for t in targets {
            match delete::delete(s, resource, meta::namespace(&t), meta::name(&t), &opts) {
                Ok(Deleted::Removed(o) | Deleted::Pending(o)) => items.push(resource.present(&o)),
                Err(error) => tracing::debug!(name = meta::name(&t), message = %error.message, "deletecollection skipped an object"),
            }
        }
        gc::collect(s);
        (items, s.rv())
    });
    ok(&json!({
        "kind": resource.list_kind(),
        "apiVersion": resource.api_version(),
        "metadata": {"resourceVersion": rv.to_string()},
        "items": items,
    }))
}
