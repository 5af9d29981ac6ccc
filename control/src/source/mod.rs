//! Sources of Kubernetes objects: an API server's watches ([`cluster`]) or a folder of manifests
//! ([`manifests`]). Each sends [`SourceEvent`]s to the controller: a batch of
//! changes, and once its initial list is delivered, [`SourceEvent::Synced`].

pub mod cluster;
pub mod manifests;

use std::path::PathBuf;

use tokio::time::Instant;

use crate::store::{Kind, Object, ObjectKey};

/// What a source tells the controller.
#[derive(Debug)]
pub enum SourceEvent {
    /// Objects added or replaced, and objects deleted, in one batch.
    Changes {
        upserts: Vec<Object>,
        deletes: Vec<(Kind, ObjectKey)>,
        /// When the source saw the change, for `kubeproxy_network_programming_duration_seconds`.
        observed: Instant,
    },
    /// The source has delivered its initial state.
    Synced,
    /// After the initial state, a kind is being listed again (its watch failed or expired):
    /// its changes arrive once the list is complete, and other kinds' changes should wait for
    /// it too, so that no view made of a new list of one kind and an old one of another is
    /// programmed.
    Relisting(Kind),
    /// That list is complete (its changes, if any, were sent just before).
    Relisted(Kind),
}

/// The annotation an EndpointSlice controller dates a slice's last change with.
pub const ANNOTATION_TRIGGER_TIME: &str = "endpoints.kubernetes.io/last-change-trigger-time";

/// How long ago (at `now`) the change behind this slice happened in the cluster, if its
/// controller says (RFC 3339) and the clocks agree (an hour or more is no measurement).
pub fn trigger_age(
    slice: &k8s_openapi::api::discovery::v1::EndpointSlice,
    now: std::time::SystemTime,
) -> Option<std::time::Duration> {
    let text = slice
        .metadata
        .annotations
        .as_ref()?
        .get(ANNOTATION_TRIGGER_TIME)?;
    let at = humantime::parse_rfc3339_weak(text.trim_end_matches('Z')).ok()?;
    now.duration_since(at)
        .ok()
        .filter(|age| *age < std::time::Duration::from_hours(1))
}

/// Why a source could not start.
#[derive(Debug, thiserror::Error)]
pub enum SourceError {
    #[error("manifest folder {0} is not a directory")]
    NotADirectory(PathBuf),
    #[error("cannot watch manifest folder {0}: {1}")]
    Watch(PathBuf, #[source] notify::Error),
}
