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

/// Why a source could not start.
#[derive(Debug, thiserror::Error)]
pub enum SourceError {
    #[error("manifest folder {0} is not a directory")]
    NotADirectory(PathBuf),
    #[error("cannot watch manifest folder {0}: {1}")]
    Watch(PathBuf, #[source] notify::Error),
}
