//! What the run and its helper processes say to each other: one JSON object
//! per line, commands on the helper's stdin, events on its stdout.
//!
//! Every time in them is `CLOCK_MONOTONIC` in nanoseconds ([`monotonic_ns`]):
//! the one clock that every process on the machine reads alike, whatever
//! network namespace it runs in, so a write timed by the writer (in the
//! network namespace) and a connect timed by a probe (in a client
//! namespace) can be subtracted.

use std::net::Ipv4Addr;

use nix::time::{ClockId, clock_gettime};
use serde::{Deserialize, Serialize};

/// `CLOCK_MONOTONIC` now, in nanoseconds.
pub fn monotonic_ns() -> u64 {
    let now = clock_gettime(ClockId::CLOCK_MONOTONIC).expect("CLOCK_MONOTONIC is always readable");
    now.tv_sec() as u64 * 1_000_000_000 + now.tv_nsec() as u64
}

/// The bulk load: `services` Services `svc-<n>` (selector `app=svc-<n>`,
/// port 80 → 8080, ClusterIP allocated by the server), then
/// `pods_per_service` ready Pods for each, spread over the nodes, with fake
/// addresses counted up from `first_pod_ip`.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct BulkSpec {
    /// Services to create.
    pub services: usize,
    /// Pods per Service.
    pub pods_per_service: usize,
    /// Nodes the Pods are spread over (`node-0` ...).
    pub nodes: usize,
    /// Creates in flight at once.
    pub concurrency: usize,
    /// The first Pod's address; the others follow it.
    pub first_pod_ip: Ipv4Addr,
}

/// A command to the writer (`apiwatch writer`).
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(tag = "cmd", rename_all = "snake_case")]
pub enum WriterCommand {
    /// Create this Service (a v1 Service object).
    CreateService {
        /// The object.
        object: serde_json::Value,
    },
    /// Create this Pod (a v1 Pod object, status included).
    CreatePod {
        /// The object.
        object: serde_json::Value,
    },
    /// Delete Pod `name` with grace period 0.
    DeletePod {
        /// Its name.
        name: String,
    },
    /// Run the bulk load (answers with progress, then `bulk_done`).
    Bulk(BulkSpec),
    /// Watch the EndpointSlices of Service `service` and report every event.
    WatchSlices {
        /// The Service's name.
        service: String,
    },
}

/// How the bulk load went, as the writer timed it.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct BulkTimes {
    /// The first write was sent.
    pub started_ns: u64,
    /// The same instant, as seconds since the Unix epoch (to compare with the
    /// daemons' `kubeproxy_sync_proxy_rules_last_timestamp_seconds`).
    pub started_unix_s: f64,
    /// The last Service was acknowledged.
    pub services_done_ns: u64,
    /// The last Pod was acknowledged.
    pub pods_done_ns: u64,
    /// Services acknowledged.
    pub services_created: usize,
    /// Pods acknowledged.
    pub pods_created: usize,
    /// Writes that failed for good.
    pub errors: usize,
    /// Writes retried after a transient failure.
    pub retries: usize,
    /// The first failure, if any.
    pub first_error: Option<String>,
}

/// What the writer reports.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(tag = "ev", rename_all = "snake_case")]
pub enum WriterEvent {
    /// Connected; ready for commands.
    Ready,
    /// A single create or delete finished.
    Done {
        /// `create_service`, `create_pod` or `delete_pod`.
        op: String,
        /// The object's name.
        name: String,
        /// Just before the request was sent.
        sent_ns: u64,
        /// When the answer arrived.
        acked_ns: u64,
        /// Why it failed, if it did.
        error: Option<String>,
    },
    /// Bulk progress (every 1,000 objects).
    Progress {
        /// Services acknowledged so far.
        services: usize,
        /// Pods acknowledged so far.
        pods: usize,
        /// Failures so far.
        errors: usize,
        /// Now.
        t_ns: u64,
    },
    /// The bulk load finished.
    BulkDone(BulkTimes),
    /// An EndpointSlice event of the watched Service.
    Slice {
        /// When the writer received it.
        t_ns: u64,
        /// `added`, `modified` or `deleted`.
        kind: String,
        /// The slice's ready endpoint addresses.
        ready: Vec<String>,
    },
    /// The slice watch failed (it is restarted).
    WatchError {
        /// When.
        t_ns: u64,
        /// Why.
        error: String,
    },
    /// A command could not be read or run.
    Error {
        /// Why.
        error: String,
    },
}

/// What a probe waits for.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Awaited {
    /// The first connect that succeeds.
    Open,
    /// The first connect that fails.
    Closed,
}

/// A command to a probe (`apiwatch probe`).
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct ProbeCommand {
    /// Echoed in the answers.
    pub seq: u64,
    /// What to wait for.
    pub wait: Awaited,
}

/// What a probe reports.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(tag = "ev", rename_all = "snake_case")]
pub enum ProbeEvent {
    /// Started; ready for commands.
    Ready,
    /// Connecting now, for command `seq`.
    Waiting {
        /// The command's `seq`.
        seq: u64,
    },
    /// What command `seq` waited for happened (or the wait gave up).
    Reached {
        /// The command's `seq`.
        seq: u64,
        /// What was waited for.
        wait: Awaited,
        /// When the deciding connect completed; `None` if the wait gave up.
        t_ns: Option<u64>,
        /// Connects attempted.
        attempts: u64,
    },
}
