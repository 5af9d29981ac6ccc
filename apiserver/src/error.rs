//! Errors: [`ApiServerError`] for starting and running the server, [`ApiError`] for one request
//! (rendered as a Kubernetes `Status`).

use std::path::PathBuf;

use serde_json::{Value, json};

/// Why the API server could not start or keep running.
#[derive(Debug, thiserror::Error)]
pub enum ApiServerError {
    #[error("creating data directory {path}: {source}")]
    DataDir {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("opening database {path}: {source}")]
    Database { path: PathBuf, source: redb::Error },
    #[error("reading stored object {key}: {source}")]
    StoredObject {
        key: String,
        source: serde_json::Error,
    },
    #[error("{path}: {source}")]
    File {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("making certificates: {0}")]
    Certificate(#[from] rcgen::Error),
    #[error("TLS setup: {0}")]
    Tls(#[from] rustls::Error),
    #[error("service-cluster-ip-range {range:?}: {reason}")]
    ServiceRange { range: String, reason: &'static str },
    #[error("binding {addr}: {source}")]
    Bind {
        addr: std::net::SocketAddr,
        source: std::io::Error,
    },
}

/// A field cause in an Invalid error.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Cause {
    pub reason: &'static str,
    pub field: String,
    pub message: String,
}

impl Cause {
    pub fn invalid(field: impl Into<String>, message: impl Into<String>) -> Self {
        Self {
            reason: "FieldValueInvalid",
            field: field.into(),
            message: message.into(),
        }
    }
    pub fn required(field: impl Into<String>) -> Self {
        Self {
            reason: "FieldValueRequired",
            field: field.into(),
            message: "Required value".to_owned(),
        }
    }
    pub fn duplicate(field: impl Into<String>, message: impl Into<String>) -> Self {
        Self {
            reason: "FieldValueDuplicate",
            field: field.into(),
            message: message.into(),
        }
    }
    pub fn not_supported(field: impl Into<String>, message: impl Into<String>) -> Self {
        Self {
            reason: "FieldValueNotSupported",
            field: field.into(),
            message: message.into(),
        }
    }
}

/// A failed request, as the real API server reports it.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{code} {reason}: {message}", message = .info.message)]
pub struct ApiError {
    pub code: u16,
    pub reason: &'static str,
    // Boxed: errors travel through every Result, and the common path should stay small.
    info: Box<Info>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
struct Info {
    message: String,
    /// (group, kind, name) for details.
    details: Option<(String, String, String)>,
    causes: Vec<Cause>,
}

impl ApiError {
    fn new(code: u16, reason: &'static str, message: impl Into<String>) -> Self {
        Self {
            code,
            reason,
            info: Box::new(Info {
                message: message.into(),
                details: None,
                causes: Vec::new(),
            }),
        }
    }

    fn with_details(mut self, group: &str, plural: &str, name: &str) -> Self {
        self.info.details = Some((group.to_owned(), plural.to_owned(), name.to_owned()));
        self
    }

    /// The human-readable message (as in the `Status` body).
    pub fn message(&self) -> &str {
        &self.info.message
    }

    pub fn bad_request(message: impl Into<String>) -> Self {
        Self::new(400, "BadRequest", message)
    }
    pub fn unauthorized() -> Self {
        Self::new(401, "Unauthorized", "Unauthorized")
    }
    pub fn not_found_path() -> Self {
        Self::new(
            404,
            "NotFound",
            "the server could not find the requested resource",
        )
    }
    pub fn method_not_allowed() -> Self {
        Self::new(
            405,
            "MethodNotAllowed",
            "the server does not allow this method on the requested resource",
        )
    }
    pub fn unsupported_media_type(content_type: &str) -> Self {
        Self::new(
            415,
            "UnsupportedMediaType",
            format!(
                "the body of the request was in an unknown format - accepted media types include: application/json, application/merge-patch+json, application/strategic-merge-patch+json, application/json-patch+json (got {content_type:?})"
            ),
        )
    }
    pub fn not_found(group: &str, plural: &str, name: &str) -> Self {
        Self::new(
            404,
            "NotFound",
            format!("{} \"{name}\" not found", qualified(group, plural)),
        )
        .with_details(group, plural, name)
    }
    pub fn already_exists(group: &str, plural: &str, name: &str) -> Self {
        Self::new(
            409,
            "AlreadyExists",
            format!("{} \"{name}\" already exists", qualified(group, plural)),
        )
        .with_details(group, plural, name)
    }
    pub fn conflict(group: &str, plural: &str, name: &str) -> Self {
        Self::new(
            409,
            "Conflict",
            format!(
                "Operation cannot be fulfilled on {} \"{name}\": the object has been modified; please apply your changes to the latest version and try again",
                qualified(group, plural)
            ),
        )
        .with_details(group, plural, name)
    }
    pub fn forbidden(group: &str, plural: &str, name: &str, why: &str) -> Self {
        Self::new(
            403,
            "Forbidden",
            format!(
                "{} \"{name}\" is forbidden: {why}",
                qualified(group, plural)
            ),
        )
        .with_details(group, plural, name)
    }
    /// 422 Invalid with field causes; `kind` is the object's Kind (`Service`).
    pub fn invalid(group: &str, kind: &str, name: &str, causes: Vec<Cause>) -> Self {
        let list: Vec<String> = causes
            .iter()
            .map(|c| format!("{}: {}", c.field, c.message))
            .collect();
        let message = if list.len() == 1 {
            list[0].clone()
        } else {
            format!("[{}]", list.join(", "))
        };
        let mut e = Self::new(
            422,
            "Invalid",
            format!("{kind} \"{name}\" is invalid: {message}"),
        );
        e.info.details = Some((group.to_owned(), kind.to_owned(), name.to_owned()));
        e.info.causes = causes;
        e
    }
    pub fn expired(message: impl Into<String>) -> Self {
        Self::new(410, "Expired", message)
    }
    pub fn internal(message: impl Into<String>) -> Self {
        Self::new(500, "InternalError", message)
    }

    /// The `Status` object for this error.
    pub fn status(&self) -> Value {
        let mut status = json!({
            "kind": "Status",
            "apiVersion": "v1",
            "metadata": {},
            "status": "Failure",
            "message": self.info.message,
            "reason": self.reason,
            "code": self.code,
        });
        if let Some((group, kind, name)) = &self.info.details {
            let mut details = json!({ "name": name, "kind": kind });
            if !group.is_empty() {
                details["group"] = json!(group);
            }
            if !self.info.causes.is_empty() {
                details["causes"] = self
                    .info
                    .causes
                    .iter()
                    .map(|c| json!({"reason": c.reason, "message": c.message, "field": c.field}))
                    .collect();
            }
            status["details"] = details;
        }
        status
    }
}

fn qualified(group: &str, plural: &str) -> String {
    if group.is_empty() {
        plural.to_owned()
    } else {
        format!("{plural}.{group}")
    }
}

impl From<redb::Error> for ApiError {
    fn from(e: redb::Error) -> Self {
        ApiError::internal(format!("storage: {e}"))
    }
}

impl ApiError {
    pub fn with_message(mut self, message: String) -> Self {
        self.info.message = message;
        self
    }
}
