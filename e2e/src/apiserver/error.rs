//! Kubernetes `Status` failures: every error a request can end in, rendered as the
//! `kind: Status` body with the reason and code Kubernetes uses, so clients (kube-rs's
//! `Error::Api`, kubectl's error printing) react as they would against a real cluster.
//!
//! It must not decide policy: handlers choose the error, this module only shapes it.

use axum::response::{IntoResponse, Response};
use http::StatusCode;
use serde_json::{json, Value};

use super::registry::ResourceInfo;

/// One field error of an Invalid status (`details.causes`).
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Cause {
    /// `FieldValueInvalid`, `FieldValueRequired`, `FieldValueNotSupported`, …
    pub reason: &'static str,
    /// The body after `field: `, e.g. `Invalid value: "object": …`.
    pub message: String,
    /// The field path, e.g. `spec.groups`.
    pub field: String,
}

impl Cause {
    pub(crate) fn invalid(field: &str, value: &str, detail: &str) -> Self {
        Self {
            reason: "FieldValueInvalid",
            message: format!("Invalid value: {value}: {detail}"),
            field: field.to_string(),
        }
    }

    pub(crate) fn required(field: &str, detail: &str) -> Self {
        let message = if detail.is_empty() {
            "Required value".to_string()
        } else {
            format!("Required value: {detail}")
        };
        Self {
            reason: "FieldValueRequired",
            message,
            field: field.to_string(),
        }
    }

    /// `field: message`, as Kubernetes prints a field error.
    pub(crate) fn line(&self) -> String {
        if self.field.is_empty() {
            self.message.clone()
        } else {
            format!("{}: {}", self.field, self.message)
        }
    }
}

/// A failed request, as a Kubernetes `Status`.
#[derive(Debug, Clone, thiserror::Error)]
#[error("{message}")]
pub(crate) struct ApiError {
    pub code: StatusCode,
    pub reason: &'static str,
    pub message: String,
    pub details: Option<Value>,
}

impl ApiError {
    fn new(code: StatusCode, reason: &'static str, message: impl Into<String>) -> Self {
        Self {
            code,
            reason,
            message: message.into(),
            details: None,
        }
    }

    fn with_details(mut self, details: Value) -> Self {
        self.details = Some(details);
        self
    }

    pub(crate) fn bad_request(message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, "BadRequest", message)
    }

    /// 404 for a path that names no resource at all.
    pub(crate) fn not_found_path() -> Self {
        Self::new(
            StatusCode::NOT_FOUND,
            "NotFound",
            "the server could not find the requested resource",
        )
        .with_details(json!({}))
    }

    /// 404 for a missing object: `configmaps "x" not found`.
    pub(crate) fn not_found(resource: &ResourceInfo, name: &str) -> Self {
        Self::not_found_in(&resource.group, &resource.plural, name)
    }

    pub(crate) fn not_found_in(group: &str, plural: &str, name: &str) -> Self {
        Self::new(
            StatusCode::NOT_FOUND,
            "NotFound",
            format!("{} \"{name}\" not found", qualified(group, plural)),
        )
        .with_details(details(group, plural, name))
    }

    pub(crate) fn already_exists(resource: &ResourceInfo, name: &str) -> Self {
        Self::new(
            StatusCode::CONFLICT,
            "AlreadyExists",
            format!(
                "{} \"{name}\" already exists",
                qualified(&resource.group, &resource.plural)
            ),
        )
        .with_details(details(&resource.group, &resource.plural, name))
    }

    /// 409 for a stale resourceVersion.
    pub(crate) fn conflict(resource: &ResourceInfo, name: &str) -> Self {
        Self::precondition(
            resource,
            name,
            "the object has been modified; please apply your changes to the latest version and try again",
        )
    }

    /// 409 without details, e.g. an apply conflict.
    pub(crate) fn conflict_status(message: impl Into<String>) -> Self {
        Self::new(StatusCode::CONFLICT, "Conflict", message)
    }

    /// 409 for a precondition (uid, resourceVersion, an unassigned pod) a request did not meet.
    pub(crate) fn precondition(resource: &ResourceInfo, name: &str, what: &str) -> Self {
        Self::new(
            StatusCode::CONFLICT,
            "Conflict",
            format!(
                "Operation cannot be fulfilled on {} \"{name}\": {what}",
                qualified(&resource.group, &resource.plural)
            ),
        )
        .with_details(details(&resource.group, &resource.plural, name))
    }

    /// 422 with field causes: `BrokerGroup.duomq.io "x" is invalid: spec: Invalid value: …`.
    pub(crate) fn invalid(resource: &ResourceInfo, name: &str, causes: Vec<Cause>) -> Self {
        let qualified_kind = if resource.group.is_empty() {
            resource.kind.clone()
        } else {
            format!("{}.{}", resource.kind, resource.group)
        };
        let lines: Vec<String> = causes.iter().map(Cause::line).collect();
        let body = if lines.len() == 1 {
            lines[0].clone()
        } else {
            format!("[{}]", lines.join(", "))
        };
        let causes_json: Vec<Value> = causes
            .iter()
            .map(|c| json!({"reason": c.reason, "message": c.message, "field": c.field}))
            .collect();
        Self::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            "Invalid",
            format!("{qualified_kind} \"{name}\" is invalid: {body}"),
        )
        .with_details(json!({
            "name": name,
            "group": resource.group,
            "kind": resource.kind,
            "causes": causes_json,
        }))
    }

    /// 410 for a resourceVersion older than the kept history.
    pub(crate) fn expired(message: impl Into<String>) -> Self {
        Self::new(StatusCode::GONE, "Expired", message)
    }

    pub(crate) fn method_not_allowed(method: &http::Method) -> Self {
        Self::new(
            StatusCode::METHOD_NOT_ALLOWED,
            "MethodNotAllowed",
            format!("the server does not allow this method on the requested resource ({method})"),
        )
        .with_details(json!({}))
    }

    pub(crate) fn unsupported_media_type(content_type: &str) -> Self {
        Self::new(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "UnsupportedMediaType",
            format!("the body of the request was in an unknown format - accepted media types include: application/json, application/yaml ({content_type} given)"),
        )
    }

    /// 403, e.g. for new content in a terminating namespace.
    pub(crate) fn forbidden(message: impl Into<String>) -> Self {
        Self::new(StatusCode::FORBIDDEN, "Forbidden", message)
    }

    pub(crate) fn internal(message: impl Into<String>) -> Self {
        Self::new(StatusCode::INTERNAL_SERVER_ERROR, "InternalError", message)
    }

    /// The `Status` object, as a response body or a watch ERROR event's object.
    pub(crate) fn status_body(&self) -> Value {
        let mut status = json!({
            "kind": "Status",
            "apiVersion": "v1",
            "metadata": {},
            "status": "Failure",
            "message": self.message,
            "reason": self.reason,
            "code": self.code.as_u16(),
        });
        if let Some(details) = &self.details {
            status["details"] = details.clone();
        }
        status
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = self.status_body().to_string();
        (
            self.code,
            [(http::header::CONTENT_TYPE, "application/json")],
            body,
        )
            .into_response()
    }
}

/// `configmaps` or `brokergroups.duomq.io`, as Kubernetes names a resource in messages.
fn qualified(group: &str, plural: &str) -> String {
    if group.is_empty() {
        plural.to_string()
    } else {
        format!("{plural}.{group}")
    }
}

fn details(group: &str, plural: &str, name: &str) -> Value {
    let mut d = json!({"name": name, "kind": plural});
    if !group.is_empty() {
        d["group"] = json!(group);
    }
    d
}

pub(crate) type ApiResult<T> = Result<T, ApiError>;
