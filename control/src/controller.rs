//! The reconcile loop: source events go into the store; the Services they affect are
//! recomputed by the model; the difference is applied to the datapath. A periodic sync checks
//! the datapath against the whole table and repairs drift.

use std::collections::{BTreeMap, BTreeSet};

use crate::incremental::IncrementalTable;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use tokio::sync::{mpsc, oneshot};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::datapath::Datapath;
use crate::diff::TableDiff;
use crate::metrics::Metrics;
use crate::model::NodeContext;
use crate::source::SourceEvent;
use crate::store::{Affected, ObjectKey, Store};

/// Configuration of the reconcile loop.
#[derive(Clone, Debug)]
pub struct ControllerConfig {
    pub node: NodeContext,
    /// How often the datapath is checked against the whole table (kube-proxy's sync period).
    pub sync_period: Duration,
}

/// When the datapath was last synced, for `/healthz`.
#[derive(Debug)]
pub struct Health {
    last_sync_ms: AtomicU64,
    sync_period: Duration,
}

impl Health {
    pub fn new(sync_period: Duration) -> Health {
        Health {
            last_sync_ms: AtomicU64::new(0),
            sync_period,
        }
    }

    fn now_ms() -> u64 {
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
    }

    pub fn mark_synced(&self) {
        self.last_sync_ms.store(Self::now_ms(), Ordering::Relaxed);
    }

    /// The last sync, if any.
    pub fn last_sync(&self) -> Option<SystemTime> {
        match self.last_sync_ms.load(Ordering::Relaxed) {
            0 => None,
            ms => Some(UNIX_EPOCH + Duration::from_millis(ms)),
        }
    }

    /// Healthy when the datapath was synced within twice the sync period, as kube-proxy's
    /// `/healthz` judges it.
    pub fn is_healthy(&self) -> bool {
        self.last_sync()
            .and_then(|t| {
                SystemTime::now()
                    .duration_since(t)
                    .ok()
                    .or(Some(Duration::ZERO))
            })
            .is_some_and(|age| age < self.sync_period * 2)
    }
}

/// A request to check the datapath against the wanted state now, not at the next period
/// (`switchyard repair`, SIGHUP).
#[derive(Debug)]
pub struct CheckNow {
    /// Where the outcome goes; `None` when nobody waits for it (a signal).
    pub reply: Option<oneshot::Sender<CheckOutcome>>,
}

/// What a [`CheckNow`] found.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum CheckOutcome {
    /// The first complete view has not arrived: there is nothing to check against yet.
    NotSynced,
    /// The datapath was checked; each difference found and repaired, in words.
    Checked { repaired: Vec<String> },
}

/// The controller's state: the store, the applied table and the datapath.
pub struct Controller<D: Datapath> {
    config: ControllerConfig,
    store: Store,
    table: IncrementalTable,
    warned: BTreeMap<ObjectKey, BTreeSet<String>>,
    datapath: D,
    metrics: Arc<Metrics>,
    health: Arc<Health>,
    synced: bool,
    /// Whether the first complete view has been programmed (and the datapath checked against
    /// it, which removes what an earlier instance left that is no longer wanted).
    programmed: bool,
    pending: Affected,
    pending_since: Option<Instant>,
    /// The `endpoints.kubernetes.io/last-change-trigger-time` of each EndpointSlice changed
    /// since the last sync (after the first view): when the change behind it happened in the
    /// cluster, as kube-proxy measures its network programming latency from.
    pending_triggers: Vec<SystemTime>,
    /// EndpointSlices written since the last sync, with the Service each names: one whose
    /// Service does not exist once the sync runs is reported.
    fresh_slices: Vec<(ObjectKey, ObjectKey)>,
    /// The EndpointSlices reported for a missing Service (once each, until they are deleted
    /// or their Service appears). Apart from `warned`, which is keyed by Service.
    orphans: BTreeSet<ObjectKey>,
    /// Told once the first complete view is programmed (see [`Controller::notify_programmed`]).
    first_programmed: Option<tokio::sync::oneshot::Sender<()>>,
    /// When every initial list was in (`SourceEvent::Synced`).
    synced_at: Option<Instant>,
    /// Kinds being listed again, and since when the first of them is: changes wait for them
    /// (for at most [`MAX_RELIST_HOLD`]).
    relisting: BTreeSet<crate::store::Kind>,
    relisting_since: Option<Instant>,
}

/// The longest a relist holds the programming of other changes back.
const MAX_RELIST_HOLD: Duration = Duration::from_secs(10);

/// Sleeps until `deadline`, or forever without one.
async fn sleep_until_some(deadline: Option<Instant>) {
    match deadline {
        Some(deadline) => tokio::time::sleep_until(deadline).await,
        None => std::future::pending().await,
    }
}

static PROCESS_STARTED: std::sync::OnceLock<Instant> = std::sync::OnceLock::new();

/// Notes when the process started (`main` calls it first), for the first-view log line.
pub fn mark_process_start() {
    PROCESS_STARTED.get_or_init(Instant::now);
}

fn process_started() -> Instant {
    *PROCESS_STARTED.get_or_init(Instant::now)
}

impl<D: Datapath> Controller<D> {
    pub fn new(
        config: ControllerConfig,
        datapath: D,
        metrics: Arc<Metrics>,
        health: Arc<Health>,
    ) -> Self {
        Controller {
            config,
            store: Store::new(),
            table: IncrementalTable::new(),
            warned: BTreeMap::new(),
            datapath,
            metrics,
            health,
            synced: false,
            programmed: false,
            pending: Affected::default(),
            pending_since: None,
            pending_triggers: Vec::new(),
            fresh_slices: Vec::new(),
            orphans: BTreeSet::new(),
            first_programmed: None,
            synced_at: None,
            relisting: BTreeSet::new(),
            relisting_since: None,
        }
    }

    /// Sends on `programmed` once the first complete view of the cluster is in the datapath
    /// (every listener bound, every VIP held): a successor takes over from then on.
    pub fn notify_programmed(&mut self, programmed: tokio::sync::oneshot::Sender<()>) {
        self.first_programmed = Some(programmed);
    }

    /// Programs the datapath until `cancel` (or the end of `events`), then returns it still
    /// serving, for the caller to shut down ([`Datapath::shutdown`]) or hand over. `checks`
    /// asks for a check of the datapath between the periodic ones.
    pub async fn run(
        mut self,
        mut events: mpsc::Receiver<SourceEvent>,
        mut checks: mpsc::Receiver<CheckNow>,
        cancel: CancellationToken,
    ) -> D {
        let mut tick = tokio::time::interval(self.config.sync_period);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        tick.tick().await;
        loop {
            tokio::select! {
                () = cancel.cancelled() => break,
                event = events.recv() => {
                    let Some(event) = event else { break };
                    self.handle(event);
                    // Take everything already queued, so a burst is one sync.
                    while let Ok(event) = events.try_recv() {
                        self.handle(event);
                    }
                    self.sync_if_ready().await;
                }
                () = sleep_until_some(self.hold_deadline()) => {
                    tracing::warn!(
                        kinds = ?self.relisting,
                        "a relist is taking more than {MAX_RELIST_HOLD:?}: programming what is in"
                    );
                    self.relisting.clear();
                    self.sync_if_ready().await;
                }
                _ = tick.tick() => {
                    if self.synced {
                        self.full_sync().await;
                    }
                }
                Some(check) = checks.recv() => {
                    let outcome = if self.synced {
                        let repaired = self.full_sync().await;
                        // The next periodic check is a whole period from this one.
                        tick.reset();
                        CheckOutcome::Checked { repaired }
                    } else {
                        CheckOutcome::NotSynced
                    };
                    if let Some(reply) = check.reply {
                        // The asker may have given up; the check is done either way.
                        let _ = reply.send(outcome);
                    }
                }
            }
        }
        self.datapath
    }

    fn handle(&mut self, event: SourceEvent) {
        match event {
            SourceEvent::Changes {
                upserts,
                deletes,
                observed,
            } => {
                for object in upserts {
                    if let crate::store::Object::EndpointSlice(slice) = &object
                        && let Some(service) = slice
                            .metadata
                            .labels
                            .as_ref()
                            .and_then(|l| l.get(crate::model::LABEL_SERVICE_NAME))
                    {
                        let key = ObjectKey::of(&slice.metadata);
                        let service = ObjectKey::new(key.namespace.clone(), service.clone());
                        self.fresh_slices.push((key, service));
                        if self.programmed
                            && let Some(age) = crate::source::trigger_age(slice, SystemTime::now())
                        {
                            self.pending_triggers.push(SystemTime::now() - age);
                        }
                    }
                    let (affected, counts) = self.store.upsert(object);
                    self.pending.merge(affected);
                    self.metrics.service_changes.inc_by(counts.services);
                    self.metrics.endpoint_changes.inc_by(counts.endpoints);
                }
                for (kind, key) in deletes {
                    if kind == crate::store::Kind::EndpointSlice {
                        self.orphans.remove(&key);
                    }
                    let (affected, counts) = self.store.delete(kind, &key);
                    self.pending.merge(affected);
                    self.metrics.service_changes.inc_by(counts.services);
                    self.metrics.endpoint_changes.inc_by(counts.endpoints);
                }
                self.pending_since = Some(self.pending_since.map_or(observed, |t| t.min(observed)));
            }
            SourceEvent::Relisting(kind) => {
                if self.relisting.is_empty() {
                    self.relisting_since = Some(Instant::now());
                }
                self.relisting.insert(kind);
                tracing::info!(%kind, "relisting: changes are held until the list is complete");
            }
            SourceEvent::Relisted(kind) => {
                self.relisting.remove(&kind);
            }
            SourceEvent::Synced => {
                if !self.synced {
                    // The first view is programmed in one pass, complete.
                    self.synced = true;
                    self.synced_at = Some(Instant::now());
                    self.pending.all = true;
                    tracing::info!(
                        services = self.store.services_len(),
                        "initial state received"
                    );
                }
            }
        }
    }

    /// Applies what is pending, unless the first view is not complete yet or a relist is in
    /// progress (see [`SourceEvent::Relisting`]).
    async fn sync_if_ready(&mut self) {
        if !self.synced || self.pending.is_empty() || !self.relisting.is_empty() {
            return;
        }
        self.sync_changes().await;
        if !self.programmed {
            let programmed_at = Instant::now();
            // The datapath may hold what a previous instance programmed (pinned eBPF maps):
            // what the first view no longer has goes now, not at the first periodic check.
            self.programmed = true;
            self.full_sync().await;
            self.log_first_view(programmed_at);
            if let Some(programmed) = self.first_programmed.take() {
                let _ = programmed.send(());
            }
        }
    }

    /// When a relist in progress stops holding the programming back.
    fn hold_deadline(&self) -> Option<Instant> {
        self.relisting_since
            .filter(|_| !self.relisting.is_empty())
            .map(|since| since + MAX_RELIST_HOLD)
    }

    /// The line that dates the first programmed view: how much it held, how long after the
    /// initial lists were all in and after the process started it was in the datapath
    /// (`programmed_at`), and how long the check against the datapath that follows took.
    fn log_first_view(&self, programmed_at: Instant) {
        let table = self.table.table();
        let backends: usize = table.entries().map(|e| e.backends.len()).sum();
        let after_lists = self
            .synced_at
            .map(|t| programmed_at.saturating_duration_since(t))
            .unwrap_or_default();
        tracing::info!(
            services = self.table.services(),
            frontends = table.len(),
            backends,
            after_lists = ?after_lists,
            since_start = ?programmed_at.saturating_duration_since(process_started()),
            check_took = ?programmed_at.elapsed(),
            "first complete view programmed"
        );
    }

    /// Recomputes the Services the pending changes affect and applies the difference.
    async fn sync_changes(&mut self) {
        let started = Instant::now();
        let pending = std::mem::take(&mut self.pending);
        let (diff, warnings) = self.table.update(&self.store, &self.config.node, &pending);
        for (key, warnings) in &warnings {
            self.report(key, warnings);
        }
        self.report_orphan_slices();
        self.apply(&diff).await;
        let took = started.elapsed();
        self.metrics.observe_sync(took);
        // One observation per changed EndpointSlice, from when its change happened in the
        // cluster (kube-proxy's meaning); changes without that time (Services, slices written
        // by hand or from manifests) count once, from when the oldest of them was seen.
        let since = self.pending_since.take();
        let triggers = std::mem::take(&mut self.pending_triggers);
        if !triggers.is_empty() {
            let now = SystemTime::now();
            for trigger in triggers {
                let latency = now.duration_since(trigger).unwrap_or_default();
                self.metrics
                    .network_programming
                    .observe(latency.as_secs_f64());
            }
        } else if let Some(since) = since
            && !diff.is_empty()
        {
            self.metrics
                .network_programming
                .observe(since.elapsed().as_secs_f64());
        }
        self.health.mark_synced();
        if !diff.is_empty() {
            tracing::debug!(
                services = warnings.len(),
                added = diff.added.len(),
                changed = diff.changed.len(),
                removed = diff.removed.len(),
                ?took,
                "datapath programmed"
            );
        }
    }

    async fn apply(&mut self, diff: &TableDiff) {
        if diff.is_empty() {
            return;
        }
        let applied = self.datapath.apply(diff).await;
        // One line per failed frontend, up to a few; a full map fails every further write, so
        // the rest are counted in one line.
        const LOGGED: usize = 10;
        for (frontend, error) in applied.failed.iter().take(LOGGED) {
            tracing::error!(%frontend, %error, "cannot program frontend; retrying at the next sync");
        }
        if applied.failed.len() > LOGGED {
            tracing::error!(
                more = applied.failed.len() - LOGGED,
                "more frontends could not be programmed; retrying at the next sync"
            );
        }
        self.metrics
            .datapath_errors
            .inc_by(applied.failed.len() as u64);
        let mut full: BTreeMap<&str, u64> = BTreeMap::new();
        for map in &applied.full_maps {
            *full.entry(map).or_default() += 1;
        }
        for (map, writes) in full {
            tracing::error!(
                map,
                refused_writes = writes,
                "eBPF map is full: raise its size (--bpf-max-*; run `switchyard cleanup` to resize pinned maps)"
            );
            self.metrics
                .map_full
                .with_label_values(&[map])
                .inc_by(writes);
        }
        self.metrics
            .services
            .set(i64::try_from(self.table.services()).unwrap_or(i64::MAX));
        self.metrics
            .frontends
            .set(i64::try_from(self.table.table().len()).unwrap_or(i64::MAX));
    }

    /// The periodic sync: apply anything pending, then check the datapath against the table.
    /// Returns the repairs made.
    async fn full_sync(&mut self) -> Vec<String> {
        if !self.pending.is_empty() {
            self.sync_changes().await;
        }
        let started = Instant::now();
        let drift = self.datapath.verify(self.table.table()).await;
        for repair in &drift.repaired {
            tracing::warn!(datapath = self.datapath.name(), "repaired drift: {repair}");
            self.metrics.repairs.inc();
        }
        self.metrics.observe_sync(started.elapsed());
        self.health.mark_synced();
        drift.repaired
    }

    /// Reports the EndpointSlices written since the last sync that name a Service the store
    /// does not hold (their endpoints wait for it).
    fn report_orphan_slices(&mut self) {
        for (slice, service) in std::mem::take(&mut self.fresh_slices) {
            if self.store.service(&service).is_some() || !self.store.has_slice(&slice) {
                self.orphans.remove(&slice);
                continue;
            }
            if self.orphans.insert(slice.clone()) {
                tracing::warn!(
                    "skipped: endpointslice {slice}: its Service {service} does not exist; unused until it does"
                );
                self.metrics
                    .unsupported
                    .with_label_values(&["EndpointSlice"])
                    .inc();
            }
        }
    }

    /// Logs each warning once: when it first appears for the Service, not at every recompute.
    fn report(&mut self, key: &ObjectKey, warnings: &[crate::model::Warning]) {
        let now: BTreeSet<String> = warnings.iter().map(ToString::to_string).collect();
        let before = self.warned.remove(key).unwrap_or_default();
        for warning in warnings {
            let text = warning.to_string();
            if before.contains(&text) {
                continue;
            }
            tracing::warn!("skipped: {text}");
            if let Some(limit) = warning.limit {
                self.metrics.limit_reached.with_label_values(&[limit]).inc();
            } else if warning.invalid {
                self.metrics.invalid_object(warning.kind);
            } else {
                self.metrics
                    .unsupported
                    .with_label_values(&[warning.kind])
                    .inc();
            }
        }
        if !now.is_empty() {
            self.warned.insert(key.clone(), now);
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use parking_lot::Mutex;
    use serde_json::json;

    use super::*;
    use crate::datapath::{Applied, Drift};
    use crate::diff::TableDiff;
    use crate::model::ServiceTable;
    use crate::store::{Kind, Object};

    /// A datapath that records the diffs it is given (the controller's logic is under test
    /// here; the real datapaths are tested through the kernel in `tests/`).
    #[derive(Clone, Default)]
    struct Recorder {
        diffs: Arc<Mutex<Vec<TableDiff>>>,
        verified: Arc<Mutex<usize>>,
        /// What the next check reports as repaired (then cleared).
        drift: Arc<Mutex<Vec<String>>>,
    }

    impl Datapath for Recorder {
        fn name(&self) -> &'static str {
            "recorder"
        }
        async fn apply(&mut self, diff: &TableDiff) -> Applied {
            self.diffs.lock().push(diff.clone());
            Applied {
                programmed: diff.len(),
                ..Applied::default()
            }
        }
        async fn verify(&mut self, _want: &ServiceTable) -> Drift {
            *self.verified.lock() += 1;
            Drift {
                repaired: std::mem::take(&mut *self.drift.lock()),
            }
        }
        async fn shutdown(&mut self, _grace: Duration, _handed_over: bool) {}
    }

    struct NoStatus;

    impl crate::datapath::StatusSource for NoStatus {
        fn frontends(&self) -> Vec<crate::datapath::FrontendView> {
            Vec::new()
        }
    }

    fn service(name: &str, ip: &str) -> Object {
        Object::Service(
            serde_json::from_value(json!({
                "metadata": {"name": name, "namespace": "default"},
                "spec": {"clusterIP": ip, "ports": [{"port": 80}]},
            }))
            .expect("test Service"),
        )
    }

    fn changes(upserts: Vec<Object>) -> SourceEvent {
        SourceEvent::Changes {
            upserts,
            deletes: Vec::new(),
            observed: Instant::now(),
        }
    }

    async fn settle() {
        for _ in 0..50 {
            tokio::task::yield_now().await;
        }
    }

    fn controller(
        recorder: &Recorder,
        metrics: &Arc<Metrics>,
        health: &Arc<Health>,
    ) -> Controller<Recorder> {
        Controller::new(
            ControllerConfig {
                node: NodeContext::named("n"),
                sync_period: Duration::from_secs(30),
            },
            recorder.clone(),
            Arc::clone(metrics),
            Arc::clone(health),
        )
    }

    #[tokio::test(start_paused = true)]
    async fn nothing_is_programmed_before_the_first_complete_view() {
        let recorder = Recorder::default();
        let metrics = Arc::new(Metrics::new(Arc::new(NoStatus)));
        let health = Arc::new(Health::new(Duration::from_secs(30)));
        let controller = controller(&recorder, &metrics, &health);
        let (tx, rx) = mpsc::channel(16);
        let (_checks, checks) = mpsc::channel(1);
        let cancel = CancellationToken::new();
        let task = tokio::spawn(controller.run(rx, checks, cancel.clone()));

        tx.send(changes(vec![service("a", "10.96.0.1")]))
            .await
            .unwrap();
        tx.send(changes(vec![service("b", "10.96.0.2")]))
            .await
            .unwrap();
        settle().await;
        assert!(
            recorder.diffs.lock().is_empty(),
            "no partial view is programmed"
        );
        assert!(!health.is_healthy(), "not healthy before the first sync");

        tx.send(SourceEvent::Synced).await.unwrap();
        settle().await;
        {
            let diffs = recorder.diffs.lock();
            assert_eq!(diffs.len(), 1, "the first view is programmed in one pass");
            assert_eq!(diffs[0].added.len(), 2);
        }
        assert!(health.is_healthy());
        // ...and checked against the datapath at once (a previous instance may have left
        // frontends that are no longer wanted).
        assert_eq!(*recorder.verified.lock(), 1);

        // A change to one Service is a diff of its frontend alone.
        tx.send(changes(vec![service("a", "10.96.0.3")]))
            .await
            .unwrap();
        settle().await;
        {
            let diffs = recorder.diffs.lock();
            assert_eq!(diffs.len(), 2);
            assert_eq!(
                (
                    diffs[1].added.len(),
                    diffs[1].changed.len(),
                    diffs[1].removed.len()
                ),
                (1, 0, 1)
            );
        }

        // The periodic sync verifies the datapath.
        tokio::time::advance(Duration::from_secs(31)).await;
        settle().await;
        assert_eq!(*recorder.verified.lock(), 2);

        cancel.cancel();
        task.await.unwrap();
    }

    async fn check(checks: &mpsc::Sender<CheckNow>) -> CheckOutcome {
        let (reply, outcome) = oneshot::channel();
        checks
            .send(CheckNow { reply: Some(reply) })
            .await
            .expect("controller running");
        outcome.await.expect("controller answers")
    }

    #[tokio::test(start_paused = true)]
    async fn a_check_asked_for_runs_at_once_and_reports_its_repairs() {
        let recorder = Recorder::default();
        let metrics = Arc::new(Metrics::new(Arc::new(NoStatus)));
        let health = Arc::new(Health::new(Duration::from_secs(30)));
        let controller = controller(&recorder, &metrics, &health);
        let (tx, rx) = mpsc::channel(16);
        let (checks, checks_rx) = mpsc::channel(1);
        let cancel = CancellationToken::new();
        let task = tokio::spawn(controller.run(rx, checks_rx, cancel.clone()));

        // Before the first complete view there is nothing to check against.
        assert_eq!(check(&checks).await, CheckOutcome::NotSynced);
        assert_eq!(*recorder.verified.lock(), 0);

        tx.send(changes(vec![service("a", "10.96.0.1")]))
            .await
            .unwrap();
        tx.send(SourceEvent::Synced).await.unwrap();
        settle().await;
        let verified = *recorder.verified.lock();

        // A check finds what the datapath reports, counts it, and returns it.
        recorder
            .drift
            .lock()
            .push("frontend 10.96.0.1:80/TCP reprogrammed in the kernel".to_owned());
        assert_eq!(
            check(&checks).await,
            CheckOutcome::Checked {
                repaired: vec!["frontend 10.96.0.1:80/TCP reprogrammed in the kernel".to_owned()]
            }
        );
        assert_eq!(*recorder.verified.lock(), verified + 1);
        assert_eq!(metrics.repairs.get(), 1);
        // A clean datapath: checked, nothing repaired, nothing more counted.
        assert_eq!(
            check(&checks).await,
            CheckOutcome::Checked {
                repaired: Vec::new()
            }
        );
        assert_eq!(metrics.repairs.get(), 1);

        // A check without a reply (a signal) runs as well.
        checks.send(CheckNow { reply: None }).await.unwrap();
        settle().await;
        assert_eq!(*recorder.verified.lock(), verified + 3);

        cancel.cancel();
        task.await.unwrap();
    }

    /// After the first view, a kind being listed again holds every change back until its list
    /// is complete (so no mix of a new list of one kind and an old one of another is
    /// programmed), or for at most `MAX_RELIST_HOLD`.
    #[tokio::test(start_paused = true)]
    async fn a_relist_holds_changes_until_it_is_complete() {
        let recorder = Recorder::default();
        let metrics = Arc::new(Metrics::new(Arc::new(NoStatus)));
        let health = Arc::new(Health::new(Duration::from_secs(3600)));
        let controller = controller(&recorder, &metrics, &health);
        let (tx, rx) = mpsc::channel(16);
        let (_checks, checks) = mpsc::channel(1);
        let cancel = CancellationToken::new();
        let task = tokio::spawn(controller.run(rx, checks, cancel.clone()));
        let applied = || {
            recorder
                .diffs
                .lock()
                .iter()
                .map(TableDiff::len)
                .sum::<usize>()
        };
        tx.send(changes(vec![service("a", "10.96.0.1")]))
            .await
            .unwrap();
        tx.send(SourceEvent::Synced).await.unwrap();
        settle().await;
        assert_eq!(applied(), 1, "the first view");

        tx.send(SourceEvent::Relisting(Kind::EndpointSlice))
            .await
            .unwrap();
        tx.send(changes(vec![service("b", "10.96.0.2")]))
            .await
            .unwrap();
        settle().await;
        assert_eq!(applied(), 1, "held while slices are relisted");
        tx.send(SourceEvent::Relisted(Kind::EndpointSlice))
            .await
            .unwrap();
        settle().await;
        assert_eq!(applied(), 2, "programmed once the list is in");

        tx.send(SourceEvent::Relisting(Kind::Service))
            .await
            .unwrap();
        tx.send(changes(vec![service("c", "10.96.0.3")]))
            .await
            .unwrap();
        settle().await;
        tokio::time::sleep(MAX_RELIST_HOLD - Duration::from_secs(1)).await;
        settle().await;
        assert_eq!(applied(), 2, "still held");
        tokio::time::sleep(Duration::from_secs(2)).await;
        settle().await;
        assert_eq!(
            applied(),
            3,
            "a relist that never ends holds for a bounded time"
        );
        cancel.cancel();
        task.await.unwrap();
    }

    /// A slice of Service "a" whose controller dates its change `ago`.
    fn dated_slice(name: &str, ago: Duration) -> Object {
        let trigger = humantime::format_rfc3339_nanos(SystemTime::now() - ago).to_string();
        Object::EndpointSlice(
            serde_json::from_value(json!({
                "metadata": {"name": name, "namespace": "default",
                             "labels": {"kubernetes.io/service-name": "a"},
                             "annotations": {crate::source::ANNOTATION_TRIGGER_TIME: trigger}},
                "addressType": "IPv4",
                "ports": [{"port": 8080}],
                "endpoints": [{"addresses": ["10.244.0.11"]}],
            }))
            .expect("test EndpointSlice"),
        )
    }

    /// Network programming latency as kube-proxy measures it: one observation per changed
    /// EndpointSlice, from its trigger time; the initial list (old changes) is not observed.
    #[tokio::test(start_paused = true)]
    async fn programming_latency_is_observed_per_slice_from_its_trigger_time() {
        let recorder = Recorder::default();
        let metrics = Arc::new(Metrics::new(Arc::new(NoStatus)));
        let health = Arc::new(Health::new(Duration::from_secs(3600)));
        let controller = controller(&recorder, &metrics, &health);
        let (tx, rx) = mpsc::channel(16);
        let (_checks, checks) = mpsc::channel(1);
        let cancel = CancellationToken::new();
        let task = tokio::spawn(controller.run(rx, checks, cancel.clone()));
        let histogram = &metrics.network_programming;
        tx.send(changes(vec![
            service("a", "10.96.0.1"),
            dated_slice("a-1", Duration::from_secs(3600)),
        ]))
        .await
        .unwrap();
        tx.send(SourceEvent::Synced).await.unwrap();
        settle().await;
        let initial = histogram.get_sample_count();
        assert!(
            histogram.get_sample_sum() < 3600.0,
            "the initial list's hour-old change is not a latency"
        );
        tx.send(changes(vec![
            dated_slice("a-1", Duration::from_secs(2)),
            dated_slice("a-2", Duration::from_secs(3)),
        ]))
        .await
        .unwrap();
        settle().await;
        assert_eq!(histogram.get_sample_count(), initial + 2, "one per slice");
        let sum = histogram.get_sample_sum();
        assert!(
            (5.0..6.0).contains(&sum),
            "2 s + 3 s, measured from the trigger times: {sum}"
        );
        cancel.cancel();
        task.await.unwrap();
    }

    fn slice_for(service: &str) -> Object {
        Object::EndpointSlice(
            serde_json::from_value(json!({
                "metadata": {"name": "orphan", "namespace": "default",
                             "labels": {"kubernetes.io/service-name": service}},
                "addressType": "IPv4",
                "endpoints": [{"addresses": ["10.244.0.11"]}],
            }))
            .expect("test EndpointSlice"),
        )
    }

    /// A slice naming a missing Service is reported once however often it is written, not
    /// while its Service exists, and again once its Service has gone.
    #[tokio::test(start_paused = true)]
    async fn a_slice_for_a_missing_service_is_reported_once() {
        let recorder = Recorder::default();
        let metrics = Arc::new(Metrics::new(Arc::new(NoStatus)));
        let health = Arc::new(Health::new(Duration::from_secs(30)));
        let controller = controller(&recorder, &metrics, &health);
        let (tx, rx) = mpsc::channel(16);
        let (_checks, checks) = mpsc::channel(1);
        let cancel = CancellationToken::new();
        let task = tokio::spawn(controller.run(rx, checks, cancel.clone()));
        let reported = || {
            metrics
                .unsupported
                .with_label_values(&["EndpointSlice"])
                .get()
        };
        tx.send(changes(vec![slice_for("web")])).await.unwrap();
        tx.send(SourceEvent::Synced).await.unwrap();
        settle().await;
        assert_eq!(reported(), 1);
        tx.send(changes(vec![slice_for("web")])).await.unwrap();
        settle().await;
        assert_eq!(reported(), 1, "written again: not reported again");
        tx.send(changes(vec![service("web", "10.96.0.1"), slice_for("web")]))
            .await
            .unwrap();
        settle().await;
        assert_eq!(reported(), 1, "its Service exists");
        tx.send(SourceEvent::Changes {
            upserts: Vec::new(),
            deletes: vec![(Kind::Service, ObjectKey::new("default", "web"))],
            observed: Instant::now(),
        })
        .await
        .unwrap();
        tx.send(changes(vec![slice_for("web")])).await.unwrap();
        settle().await;
        assert_eq!(reported(), 2, "its Service went: reported anew");
        cancel.cancel();
        task.await.unwrap();
    }

    #[test]
    fn health_follows_the_sync_period() {
        let health = Health::new(Duration::from_secs(30));
        assert!(!health.is_healthy(), "never synced");
        health.mark_synced();
        assert!(health.is_healthy());
        // A sync older than twice the period is unhealthy.
        let old = Health::now_ms() - 61_000;
        health.last_sync_ms.store(old, Ordering::Relaxed);
        assert!(!health.is_healthy());
    }
}
