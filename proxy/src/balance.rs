//! Choosing a backend: the immutable backend-set snapshot a frontend serves,
//! the balancing algorithms, and `ClientIP` session affinity.
//!
//! The snapshot is published through `arc-swap`, so the per-connection path
//! takes no lock to read it. The only lock is the affinity map, and only for
//! frontends that have affinity turned on.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use arc_swap::ArcSwap;
use parking_lot::Mutex;
use tokio::time::Instant;

use crate::l7::endpoint::Endpoint;
use crate::l7::spec::L7Spec;
use crate::spec::{Algorithm, ServiceSpec};
use crate::stats::BackendStats;

/// How often expired affinity entries are dropped. Expiry itself is checked on
/// every lookup, so this only bounds memory.
pub(crate) const AFFINITY_SWEEP: Duration = Duration::from_secs(10);

/// One backend in a snapshot.
#[derive(Debug)]
pub(crate) struct Backend {
    pub(crate) addr: SocketAddr,
    pub(crate) terminating: bool,
    pub(crate) stats: Arc<BackendStats>,
    /// Per-request state, used by L7 frontends only.
    pub(crate) l7: Arc<Endpoint>,
}

/// An immutable view of what a frontend serves. A new one is built for every
/// update; connections that already picked a backend keep their own `Arc` to
/// its stats and never look back.
#[derive(Debug)]
pub(crate) struct BackendSet {
    pub(crate) name: String,
    pub(crate) algorithm: Algorithm,
    pub(crate) affinity: Option<Duration>,
    /// Per-request serving; `None` for an L4 frontend.
    pub(crate) l7: Option<Arc<L7Spec>>,
    pub(crate) backends: Vec<Backend>,
    /// Indices into `backends` that new connections may use: the ready ones,
    /// or all of them when every backend is terminating.
    eligible: Vec<usize>,
    index: HashMap<SocketAddr, usize>,
    any_ready: bool,
    /// Bumped on every update, so a UDP flow can tell cheaply whether it must
    /// check that its backend is still in the set.
    pub(crate) generation: u64,
    /// The Maglev table over the eligible backends, for consistent-hash L7 frontends;
    /// built on first use.
    hash_table: OnceLock<Vec<u32>>,
}

impl BackendSet {
    pub(crate) fn empty() -> Self {
        Self {
            name: String::new(),
            algorithm: Algorithm::default(),
            affinity: None,
            l7: None,
            backends: Vec::new(),
            eligible: Vec::new(),
            index: HashMap::new(),
            any_ready: false,
            generation: 0,
            hash_table: OnceLock::new(),
        }
    }

    /// Builds the snapshot for `spec`, carrying over the counters of the
    /// backends that `previous` already had.
    pub(crate) fn build(spec: ServiceSpec, previous: &BackendSet) -> Self {
        let mut backends: Vec<Backend> = Vec::with_capacity(spec.backends.len());
        let mut index = HashMap::with_capacity(spec.backends.len());
        for b in spec.backends {
            if let Some(&i) = index.get(&b.addr) {
                // A duplicate is ready if any of its copies is.
                let existing: &mut Backend = &mut backends[i];
                existing.terminating &= b.terminating;
                continue;
            }
            let old = previous.backend(b.addr);
            let stats = old.map_or_else(Arc::default, |old| Arc::clone(&old.stats));
            let l7 = old.map_or_else(Arc::default, |old| Arc::clone(&old.l7));
            index.insert(b.addr, backends.len());
            backends.push(Backend {
                addr: b.addr,
                terminating: b.terminating,
                stats,
                l7,
            });
        }
        let any_ready = backends.iter().any(|b| !b.terminating);
        let eligible = backends
            .iter()
            .enumerate()
            .filter(|(_, b)| !any_ready || !b.terminating)
            .map(|(i, _)| i)
            .collect();
        Self {
            name: spec.name,
            algorithm: spec.algorithm,
            affinity: spec.affinity,
            l7: spec.l7.map(Arc::new),
            backends,
            eligible,
            index,
            any_ready,
            generation: previous.generation.wrapping_add(1),
            hash_table: OnceLock::new(),
        }
    }

    /// How many backends new connections or requests may use.
    pub(crate) fn eligible_len(&self) -> usize {
        self.eligible.len()
    }

    /// The `i`-th eligible backend; `i` must be below [`Self::eligible_len`].
    pub(crate) fn eligible_at(&self, i: usize) -> &Backend {
        &self.backends[self.eligible[i]]
    }

    pub(crate) fn eligible(&self) -> impl Iterator<Item = &Backend> {
        self.eligible.iter().map(|&i| &self.backends[i])
    }

    /// The Maglev table over the eligible backends (entries are indices for
    /// [`Self::eligible_at`]), keyed by their addresses so that every node and every
    /// restart builds the same one.
    pub(crate) fn hash_table(&self) -> &[u32] {
        self.hash_table.get_or_init(|| {
            let names: Vec<String> = self.eligible().map(|b| b.addr.to_string()).collect();
            crate::maglev::table(&names, crate::maglev::table_size(names.len(), 251) as usize)
        })
    }

    /// The set still has a backend at `addr`, ready or terminating.
    pub(crate) fn contains(&self, addr: SocketAddr) -> bool {
        self.index.contains_key(&addr)
    }

    fn backend(&self, addr: SocketAddr) -> Option<&Backend> {
        self.index.get(&addr).map(|&i| &self.backends[i])
    }

    /// The backend at `addr`, if new connections may still go to it.
    pub(crate) fn eligible_backend(&self, addr: SocketAddr) -> Option<&Backend> {
        self.backend(addr)
            .filter(|b| !self.any_ready || !b.terminating)
    }

    fn candidates<'a>(&'a self, tried: &[SocketAddr]) -> impl Iterator<Item = &'a Backend> {
        self.eligible
            .iter()
            .map(|&i| &self.backends[i])
            .filter(|b| !tried.contains(&b.addr))
    }
}

/// The backend with the least `load`; ties broken uniformly at random.
pub(crate) fn least_loaded<'a>(
    backends: impl Iterator<Item = &'a Backend>,
    load: impl Fn(&Backend) -> u64,
) -> Option<&'a Backend> {
    let mut best: Option<(u64, &Backend)> = None;
    let mut ties = 0usize;
    for backend in backends {
        let l = load(backend);
        match best {
            Some((least, _)) if l > least => {}
            Some((least, _)) if l == least => {
                // Reservoir sampling: each tied backend ends up chosen with equal
                // probability.
                ties += 1;
                if fastrand::usize(..ties) == 0 {
                    best = Some((l, backend));
                }
            }
            _ => {
                best = Some((l, backend));
                ties = 1;
            }
        }
    }
    best.map(|(_, b)| b)
}

#[derive(Debug, Clone, Copy)]
struct Sticky {
    backend: SocketAddr,
    last_used: Instant,
}

/// The live balancing state of one frontend: its current snapshot, the
/// round-robin position and the affinity table. Both survive updates.
#[derive(Debug)]
pub(crate) struct Balancer {
    set: ArcSwap<BackendSet>,
    next: AtomicUsize,
    affinity: Mutex<HashMap<IpAddr, Sticky>>,
    /// Connections of backends that have left the set, so the frontend's total never falls.
    retired_total: std::sync::atomic::AtomicU64,
}

impl Balancer {
    pub(crate) fn new() -> Self {
        Self {
            set: ArcSwap::from_pointee(BackendSet::empty()),
            next: AtomicUsize::new(0),
            affinity: Mutex::new(HashMap::new()),
            retired_total: std::sync::atomic::AtomicU64::new(0),
        }
    }

    /// Publishes the snapshot for `spec`. New connections see it at once.
    pub(crate) fn publish(&self, spec: ServiceSpec) {
        let previous = self.set.load();
        let next = BackendSet::build(spec, &previous);
        let retired: u64 = previous
            .backends
            .iter()
            .filter(|b| !next.contains(b.addr))
            .map(|b| b.stats.status(b.addr, b.terminating).connections_total)
            .sum();
        self.retired_total.fetch_add(retired, Ordering::Relaxed);
        drop(previous);
        let affinity_off = next.affinity.is_none();
        self.set.store(Arc::new(next));
        if affinity_off {
            self.affinity.lock().clear();
        }
    }

    /// Connections ever sent by this frontend, including to backends that have left.
    pub(crate) fn connections_total(&self, set: &BackendSet) -> u64 {
        let current: u64 = set
            .backends
            .iter()
            .map(|b| b.stats.status(b.addr, b.terminating).connections_total)
            .sum();
        current + self.retired_total.load(Ordering::Relaxed)
    }

    /// The current snapshot.
    pub(crate) fn snapshot(&self) -> Arc<BackendSet> {
        self.set.load_full()
    }

    /// The current snapshot, borrowed: cheaper than [`Self::snapshot`] for
    /// the per-datagram path. Never hold it across an `.await`.
    pub(crate) fn current(&self) -> arc_swap::Guard<Arc<BackendSet>> {
        self.set.load()
    }

    /// Chooses a backend of `set` for a new connection from `client`, never
    /// one in `tried`. Affinity, when on, wins over the algorithm and is
    /// recorded here, so concurrent connections of one client stick together.
    pub(crate) fn pick<'a>(
        &self,
        set: &'a BackendSet,
        client: IpAddr,
        tried: &[SocketAddr],
        now: Instant,
    ) -> Option<&'a Backend> {
        let Some(timeout) = set.affinity else {
            return self.choose(set, tried);
        };
        let mut table = self.affinity.lock();
        if let Some(sticky) = table.get_mut(&client)
            && now.saturating_duration_since(sticky.last_used) < timeout
            && !tried.contains(&sticky.backend)
            && let Some(backend) = set.eligible_backend(sticky.backend)
        {
            sticky.last_used = now;
            return Some(backend);
        }
        let backend = self.choose(set, tried)?;
        table.insert(
            client,
            Sticky {
                backend: backend.addr,
                last_used: now,
            },
        );
        Some(backend)
    }

    /// A connection of `client` to `backend` was used until `now`: restart its
    /// affinity timeout, so a long connection does not outlive its stickiness.
    pub(crate) fn touch(&self, client: IpAddr, backend: SocketAddr, now: Instant) {
        if self.set.load().affinity.is_none() {
            return;
        }
        if let Some(sticky) = self.affinity.lock().get_mut(&client)
            && sticky.backend == backend
            && sticky.last_used < now
        {
            sticky.last_used = now;
        }
    }

    /// Drops expired affinity entries.
    pub(crate) fn sweep(&self, now: Instant) {
        let timeout = self.set.load().affinity;
        let mut table = self.affinity.lock();
        match timeout {
            Some(timeout) => {
                table.retain(|_, s| now.saturating_duration_since(s.last_used) < timeout);
            }
            None => table.clear(),
        }
    }

    #[cfg(test)]
    fn affinity_entries(&self) -> usize {
        self.affinity.lock().len()
    }

    fn choose<'a>(&self, set: &'a BackendSet, tried: &[SocketAddr]) -> Option<&'a Backend> {
        let n = set.eligible.len();
        if n == 0 {
            return None;
        }
        match set.algorithm {
            Algorithm::Random => {
                if tried.is_empty() {
                    return Some(&set.backends[set.eligible[fastrand::usize(..n)]]);
                }
                let count = set.candidates(tried).count();
                if count == 0 {
                    return None;
                }
                set.candidates(tried).nth(fastrand::usize(..count))
            }
            Algorithm::RoundRobin => {
                let start = self.next.fetch_add(1, Ordering::Relaxed);
                (0..n)
                    .map(|offset| &set.backends[set.eligible[start.wrapping_add(offset) % n]])
                    .find(|b| !tried.contains(&b.addr))
            }
            Algorithm::LeastConnections => least_loaded(set.candidates(tried), |b| b.stats.load()),
        }
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashSet;

    use super::*;
    use crate::spec::{BackendSpec, EmptyAction};
    use crate::stats::ConnectingGuard;

    fn addr(last: u8) -> SocketAddr {
        SocketAddr::from(([10, 0, 0, last], 8080))
    }

    fn client(last: u8) -> IpAddr {
        IpAddr::from([192, 168, 0, last])
    }

    fn spec(algorithm: Algorithm, backends: &[u8]) -> ServiceSpec {
        ServiceSpec {
            name: "default/web:http".into(),
            backends: backends
                .iter()
                .map(|&b| BackendSpec::ready(addr(b)))
                .collect(),
            algorithm,
            affinity: None,
            on_empty: EmptyAction::Reject,
            l7: None,
        }
    }

    fn balancer(spec: ServiceSpec) -> Balancer {
        let balancer = Balancer::new();
        balancer.publish(spec);
        balancer
    }

    fn pick(b: &Balancer, from: u8, tried: &[SocketAddr]) -> Option<SocketAddr> {
        let set = b.snapshot();
        b.pick(&set, client(from), tried, Instant::now())
            .map(|backend| backend.addr)
    }

    #[test]
    fn empty_set_picks_nothing() {
        for algorithm in [
            Algorithm::Random,
            Algorithm::RoundRobin,
            Algorithm::LeastConnections,
        ] {
            let b = balancer(spec(algorithm, &[]));
            assert_eq!(pick(&b, 1, &[]), None, "{algorithm}");
        }
    }

    #[test]
    fn no_untried_backend_left_picks_nothing() {
        for algorithm in [
            Algorithm::Random,
            Algorithm::RoundRobin,
            Algorithm::LeastConnections,
        ] {
            let b = balancer(spec(algorithm, &[1, 2]));
            assert_eq!(pick(&b, 1, &[addr(1), addr(2)]), None, "{algorithm}");
            assert_eq!(pick(&b, 1, &[addr(2)]), Some(addr(1)), "{algorithm}");
        }
    }

    #[test]
    fn random_reaches_every_backend() {
        let b = balancer(spec(Algorithm::Random, &[1, 2, 3]));
        let seen: HashSet<_> = (0..1000).filter_map(|_| pick(&b, 1, &[])).collect();
        assert_eq!(seen, HashSet::from([addr(1), addr(2), addr(3)]));
    }

    #[test]
    fn random_with_tried_reaches_every_other_backend() {
        let b = balancer(spec(Algorithm::Random, &[1, 2, 3]));
        let seen: HashSet<_> = (0..1000).filter_map(|_| pick(&b, 1, &[addr(2)])).collect();
        assert_eq!(seen, HashSet::from([addr(1), addr(3)]));
    }

    #[test]
    fn round_robin_cycles_in_order() {
        let b = balancer(spec(Algorithm::RoundRobin, &[1, 2, 3]));
        let picks: Vec<_> = (0..6).filter_map(|_| pick(&b, 1, &[])).collect();
        assert_eq!(
            picks,
            [addr(1), addr(2), addr(3), addr(1), addr(2), addr(3)]
        );
    }

    #[test]
    fn round_robin_skips_tried_backends() {
        let b = balancer(spec(Algorithm::RoundRobin, &[1, 2, 3]));
        // Position 0 is backend 1, already tried: the next one is used.
        assert_eq!(pick(&b, 1, &[addr(1)]), Some(addr(2)));
    }

    #[test]
    fn least_connections_picks_the_least_loaded() {
        let b = balancer(spec(Algorithm::LeastConnections, &[1, 2, 3]));
        let set = b.snapshot();
        let _busy1 = ConnectingGuard::new(Arc::clone(&set.backends[0].stats)).established();
        let _busy2 = ConnectingGuard::new(Arc::clone(&set.backends[0].stats));
        let _busy3 = ConnectingGuard::new(Arc::clone(&set.backends[2].stats)).established();
        for _ in 0..100 {
            assert_eq!(pick(&b, 1, &[]), Some(addr(2)));
        }
        // The least loaded backend already failed: the next least is used.
        assert_eq!(pick(&b, 1, &[addr(2)]), Some(addr(3)));
    }

    #[test]
    fn least_connections_breaks_ties_randomly() {
        let b = balancer(spec(Algorithm::LeastConnections, &[1, 2, 3]));
        let set = b.snapshot();
        let _busy = ConnectingGuard::new(Arc::clone(&set.backends[1].stats)).established();
        let seen: HashSet<_> = (0..1000).filter_map(|_| pick(&b, 1, &[])).collect();
        assert_eq!(seen, HashSet::from([addr(1), addr(3)]));
    }

    #[test]
    fn algorithm_change_applies_to_next_pick() {
        let b = balancer(spec(Algorithm::LeastConnections, &[1, 2]));
        let set = b.snapshot();
        let _busy = ConnectingGuard::new(Arc::clone(&set.backends[0].stats)).established();
        assert_eq!(pick(&b, 1, &[]), Some(addr(2)));
        b.publish(spec(Algorithm::RoundRobin, &[1, 2]));
        let picks: HashSet<_> = (0..2).filter_map(|_| pick(&b, 1, &[])).collect();
        assert_eq!(picks, HashSet::from([addr(1), addr(2)]));
    }

    #[test]
    fn terminating_backends_are_used_only_when_none_is_ready() {
        let mut s = spec(Algorithm::RoundRobin, &[1, 2, 3]);
        s.backends[0].terminating = true;
        let b = balancer(s.clone());
        let seen: HashSet<_> = (0..10).filter_map(|_| pick(&b, 1, &[])).collect();
        assert_eq!(seen, HashSet::from([addr(2), addr(3)]));

        for backend in &mut s.backends {
            backend.terminating = true;
        }
        b.publish(s);
        let seen: HashSet<_> = (0..10).filter_map(|_| pick(&b, 1, &[])).collect();
        assert_eq!(seen, HashSet::from([addr(1), addr(2), addr(3)]));
    }

    #[test]
    fn duplicate_backends_collapse_and_ready_wins() {
        let mut s = spec(Algorithm::RoundRobin, &[1, 1, 2]);
        s.backends[0].terminating = true;
        let b = balancer(s);
        let set = b.snapshot();
        let addrs: Vec<_> = set
            .backends
            .iter()
            .map(|b| (b.addr, b.terminating))
            .collect();
        assert_eq!(addrs, [(addr(1), false), (addr(2), false)]);
    }

    #[test]
    fn stats_survive_update_for_remaining_backends() {
        let b = balancer(spec(Algorithm::Random, &[1, 2]));
        let before = b.snapshot();
        before.backends[0].stats.add_sent(10);
        before.backends[1].stats.add_sent(20);

        b.publish(spec(Algorithm::RoundRobin, &[2, 3]));
        let after = b.snapshot();
        assert_eq!(after.generation, before.generation + 1);
        assert!(Arc::ptr_eq(
            &after.backends[0].stats,
            &before.backends[1].stats
        ));
        assert_eq!(
            after.backends[0].stats.status(addr(2), false).bytes_sent,
            20
        );
        assert_eq!(after.backends[1].stats.status(addr(3), false).bytes_sent, 0);
        // Backend 1 is gone: new connections cannot reach it...
        assert!(after.eligible_backend(addr(1)).is_none());
        // ...while its open connections keep their own counters.
        assert_eq!(
            before.backends[0].stats.status(addr(1), false).bytes_sent,
            10
        );
    }

    #[tokio::test(start_paused = true)]
    async fn affinity_sticks_then_expires() {
        let mut s = spec(Algorithm::RoundRobin, &[1, 2, 3]);
        s.affinity = Some(Duration::from_secs(10));
        let b = balancer(s);

        let first = pick(&b, 1, &[]);
        assert_eq!(first, Some(addr(1)));
        for _ in 0..5 {
            tokio::time::advance(Duration::from_secs(9)).await;
            // Each use restarts the timeout, so 9 s steps never expire it.
            assert_eq!(pick(&b, 1, &[]), first);
        }
        // Another client follows round robin meanwhile.
        assert_eq!(pick(&b, 2, &[]), Some(addr(2)));

        tokio::time::advance(Duration::from_secs(10)).await;
        assert_eq!(pick(&b, 1, &[]), Some(addr(3)), "expired entry is replaced");
    }

    #[tokio::test(start_paused = true)]
    async fn affinity_touch_restarts_timeout() {
        let mut s = spec(Algorithm::RoundRobin, &[1, 2]);
        s.affinity = Some(Duration::from_secs(10));
        let b = balancer(s);
        assert_eq!(pick(&b, 1, &[]), Some(addr(1)));
        tokio::time::advance(Duration::from_secs(8)).await;
        b.touch(client(1), addr(1), Instant::now());
        tokio::time::advance(Duration::from_secs(8)).await;
        assert_eq!(pick(&b, 1, &[]), Some(addr(1)));
    }

    #[tokio::test(start_paused = true)]
    async fn affinity_survives_update_and_moves_when_backend_leaves() {
        let mut s = spec(Algorithm::RoundRobin, &[1, 2, 3]);
        s.affinity = Some(Duration::from_mins(1));
        let b = balancer(s.clone());
        assert_eq!(pick(&b, 1, &[]), Some(addr(1)));
        assert_eq!(pick(&b, 2, &[]), Some(addr(2)));

        // Backend 1 leaves; client 2's backend stays.
        s.backends.remove(0);
        b.publish(s);
        assert_eq!(pick(&b, 2, &[]), Some(addr(2)), "survives the update");
        let moved = pick(&b, 1, &[]);
        assert!(moved == Some(addr(2)) || moved == Some(addr(3)));
        assert_eq!(pick(&b, 1, &[]), moved, "sticks to the new backend");
    }

    #[tokio::test(start_paused = true)]
    async fn affinity_skips_a_tried_backend_and_records_the_new_one() {
        let mut s = spec(Algorithm::RoundRobin, &[1, 2]);
        s.affinity = Some(Duration::from_mins(1));
        let b = balancer(s);
        assert_eq!(pick(&b, 1, &[]), Some(addr(1)));
        assert_eq!(pick(&b, 1, &[addr(1)]), Some(addr(2)));
        assert_eq!(pick(&b, 1, &[]), Some(addr(2)));
    }

    #[tokio::test(start_paused = true)]
    async fn sweep_drops_only_expired_entries() {
        let mut s = spec(Algorithm::Random, &[1, 2]);
        s.affinity = Some(Duration::from_secs(10));
        let b = balancer(s.clone());
        pick(&b, 1, &[]);
        tokio::time::advance(Duration::from_secs(6)).await;
        pick(&b, 2, &[]);
        tokio::time::advance(Duration::from_secs(6)).await;
        b.sweep(Instant::now());
        assert_eq!(b.affinity_entries(), 1);

        s.affinity = None;
        b.publish(s);
        assert_eq!(b.affinity_entries(), 0, "turning affinity off forgets it");
    }
}
