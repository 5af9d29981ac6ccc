//! The L7 state of one backend: its load (requests in flight, peak-EWMA latency), its
//! outlier and health state, its request counters and latency histogram, and its pool of
//! upstream connections. It is carried over by address from one backend-set snapshot to the
//! next, so a change of the endpoint set leaves the backends that remain as they were.

use std::sync::Arc;
use std::sync::OnceLock;
use std::sync::atomic::{AtomicBool, AtomicI32, AtomicU32, AtomicU64, Ordering};
use std::time::Duration;

use parking_lot::Mutex;
use tokio::time::Instant;

use super::pool::Pool;
use super::spec::{HealthCheck, OutlierPolicy};

/// Latency assumed for a backend before its first response, as linkerd2-proxy does: high
/// enough that a new backend is not flooded before it has shown what it can do.
const DEFAULT_RTT: Duration = Duration::from_millis(30);
/// Decay time of the peak-EWMA estimate.
const EWMA_DECAY: Duration = Duration::from_secs(10);
/// A backend without a response for this long is tried again whatever its estimate says:
/// with requests one at a time (none in flight), an estimate raised by one slow answer would
/// otherwise never be corrected, as only the backends chosen are measured.
pub(crate) const STALE: Duration = Duration::from_secs(1);
/// Ejections beyond this many in a row no longer lengthen the ejection.
const MAX_EJECTION_MULTIPLIER: u32 = 10;

/// Upper bounds of the latency histogram's buckets, in seconds.
pub const LATENCY_BUCKETS: [f64; 14] = [
    0.000_5, 0.001, 0.002_5, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
];

/// Nanoseconds since a process-wide origin: lets an `Instant` live in an atomic.
pub(crate) fn stamp(now: Instant) -> u64 {
    static ORIGIN: OnceLock<Instant> = OnceLock::new();
    let origin = *ORIGIN.get_or_init(|| Instant::now() - Duration::from_secs(1));
    u64::try_from(now.saturating_duration_since(origin).as_nanos()).unwrap_or(u64::MAX)
}

/// Counts of responses by status class, and of requests that got no response from the
/// backend (connect failures, resets, timeouts).
#[derive(Debug, Default)]
pub(crate) struct Counters {
    by_class: [AtomicU64; 5],
    failed: AtomicU64,
    latency_buckets: [AtomicU64; LATENCY_BUCKETS.len()],
    latency_count: AtomicU64,
    latency_sum_ns: AtomicU64,
}

impl Counters {
    /// A response of `status` after `latency` (request headers in, response headers out).
    pub(crate) fn response(&self, status: u16, latency: Duration) {
        let class = usize::from((status / 100).clamp(1, 5)) - 1;
        self.by_class[class].fetch_add(1, Ordering::Relaxed);
        let seconds = latency.as_secs_f64();
        if let Some(i) = LATENCY_BUCKETS.iter().position(|b| seconds <= *b) {
            self.latency_buckets[i].fetch_add(1, Ordering::Relaxed);
        }
        self.latency_count.fetch_add(1, Ordering::Relaxed);
        self.latency_sum_ns.fetch_add(
            u64::try_from(latency.as_nanos()).unwrap_or(u64::MAX),
            Ordering::Relaxed,
        );
    }

    pub(crate) fn failed(&self) {
        self.failed.fetch_add(1, Ordering::Relaxed);
    }

    pub(crate) fn snapshot(&self) -> RequestCounts {
        let load = |a: &AtomicU64| a.load(Ordering::Relaxed);
        RequestCounts {
            by_class: std::array::from_fn(|i| load(&self.by_class[i])),
            failed: load(&self.failed),
            latency: LatencyHistogram {
                buckets: std::array::from_fn(|i| load(&self.latency_buckets[i])),
                count: load(&self.latency_count),
                sum_nanos: load(&self.latency_sum_ns),
            },
        }
    }
}

/// Request counts of a backend or a frontend.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct RequestCounts {
    /// Responses with status 1xx, 2xx, 3xx, 4xx, 5xx.
    pub by_class: [u64; 5],
    /// Requests that got no response (connect failure, reset, timeout).
    pub failed: u64,
    /// Time from the request's headers to the response's headers.
    pub latency: LatencyHistogram,
}

/// A latency histogram over [`LATENCY_BUCKETS`] (not cumulative: `buckets[i]` counts the
/// observations in `(LATENCY_BUCKETS[i-1], LATENCY_BUCKETS[i]]`; slower ones are only in
/// `count`).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct LatencyHistogram {
    pub buckets: [u64; LATENCY_BUCKETS.len()],
    pub count: u64,
    pub sum_nanos: u64,
}

#[derive(Debug)]
struct PeakEwma {
    cost_ns: f64,
    at: Instant,
}

/// The L7 state of one backend; see the module docs.
#[derive(Debug)]
pub(crate) struct Endpoint {
    in_flight: AtomicU64,
    ewma: Mutex<PeakEwma>,
    /// [`stamp`] of the last response observed; 0 before the first.
    observed: AtomicU64,
    consecutive_failures: AtomicU32,
    /// [`stamp`] until which the backend is ejected; 0 when it is not.
    ejected_until: AtomicU64,
    /// Ejections in a row (reset when the backend succeeds after coming back).
    ejections_in_row: AtomicU32,
    ejections_total: AtomicU64,
    /// The active health check's verdict (true while checks are off).
    healthy: AtomicBool,
    /// Checks passed (positive) or failed (negative) in a row.
    health_streak: AtomicI32,
    pub(crate) counters: Counters,
    pub(crate) pool: Pool,
}

impl Default for Endpoint {
    fn default() -> Self {
        Self {
            in_flight: AtomicU64::new(0),
            ewma: Mutex::new(PeakEwma {
                cost_ns: DEFAULT_RTT.as_nanos() as f64,
                at: Instant::now(),
            }),
            observed: AtomicU64::new(0),
            consecutive_failures: AtomicU32::new(0),
            ejected_until: AtomicU64::new(0),
            ejections_in_row: AtomicU32::new(0),
            ejections_total: AtomicU64::new(0),
            healthy: AtomicBool::new(true),
            health_streak: AtomicI32::new(0),
            counters: Counters::default(),
            pool: Pool::default(),
        }
    }
}

impl Endpoint {
    pub(crate) fn in_flight(&self) -> u64 {
        self.in_flight.load(Ordering::Relaxed)
    }

    /// The request is in flight until the guard drops (when its response body ends).
    pub(crate) fn start(self: &Arc<Self>) -> InFlight {
        self.in_flight.fetch_add(1, Ordering::Relaxed);
        InFlight(Arc::clone(self))
    }

    /// The peak-EWMA latency estimate, decayed to `now`, times the requests in flight plus one.
    pub(crate) fn cost(&self, now: Instant) -> f64 {
        let mut ewma = self.ewma.lock();
        decay(&mut ewma, now);
        ewma.cost_ns * (self.in_flight() + 1) as f64
    }

    /// Records a round trip: a slower one replaces the estimate at once (peak), a faster one
    /// pulls it down with the decay.
    pub(crate) fn observe(&self, rtt: Duration, now: Instant) {
        self.observed.store(stamp(now).max(1), Ordering::Relaxed);
        let rtt = rtt.as_nanos() as f64;
        let mut ewma = self.ewma.lock();
        let elapsed = now.saturating_duration_since(ewma.at).as_nanos() as f64;
        if rtt > ewma.cost_ns {
            ewma.cost_ns = rtt;
        } else {
            let w = (-elapsed / EWMA_DECAY.as_nanos() as f64).exp();
            ewma.cost_ns = ewma.cost_ns * w + rtt * (1.0 - w);
        }
        ewma.at = ewma.at.max(now);
    }

    /// No response measured for [`STALE`] (or never).
    pub(crate) fn is_stale(&self, now: Instant) -> bool {
        let observed = self.observed.load(Ordering::Relaxed);
        observed == 0 || stamp(now).saturating_sub(observed) >= super::nanos(STALE)
    }

    fn ewma_micros(&self) -> u64 {
        (self.ewma.lock().cost_ns / 1_000.0) as u64
    }

    pub(crate) fn is_ejected(&self, now: Instant) -> bool {
        let until = self.ejected_until.load(Ordering::Relaxed);
        until != 0 && stamp(now) < until
    }

    pub(crate) fn is_healthy(&self) -> bool {
        self.healthy.load(Ordering::Relaxed)
    }

    /// Sets the health check's verdict; true when it changed.
    pub(crate) fn set_healthy(&self, healthy: bool) -> bool {
        self.health_streak.store(0, Ordering::Relaxed);
        self.healthy.swap(healthy, Ordering::Relaxed) != healthy
    }

    /// Records one health check; returns the new verdict when it changed.
    pub(crate) fn health_result(&self, passed: bool, check: &HealthCheck) -> Option<bool> {
        let streak = self.health_streak.load(Ordering::Relaxed);
        let streak = match (passed, streak) {
            (true, s) if s > 0 => s.saturating_add(1),
            (true, _) => 1,
            (false, s) if s < 0 => s.saturating_sub(1),
            (false, _) => -1,
        };
        self.health_streak.store(streak, Ordering::Relaxed);
        let healthy = self.is_healthy();
        let flip = if healthy {
            streak < 0 && streak.unsigned_abs() >= check.unhealthy_threshold.max(1)
        } else {
            streak > 0 && streak.unsigned_abs() >= check.healthy_threshold.max(1)
        };
        if !flip {
            return None;
        }
        self.healthy.store(!healthy, Ordering::Relaxed);
        self.health_streak.store(0, Ordering::Relaxed);
        Some(!healthy)
    }

    /// Whether new requests may go to the backend now.
    pub(crate) fn usable(&self, now: Instant) -> bool {
        self.is_healthy() && !self.is_ejected(now)
    }

    /// A success: the failure streak ends.
    pub(crate) fn succeeded(&self, now: Instant) {
        if self.consecutive_failures.load(Ordering::Relaxed) != 0 {
            self.consecutive_failures.store(0, Ordering::Relaxed);
        }
        if self.ejections_in_row.load(Ordering::Relaxed) != 0 && !self.is_ejected(now) {
            self.ejections_in_row.store(0, Ordering::Relaxed);
        }
    }

    /// A failure (5xx or no response). Returns whether it crossed the threshold, in which
    /// case the caller decides (knowing the other backends) whether to [`Self::eject`].
    pub(crate) fn failed(&self, policy: &OutlierPolicy) -> bool {
        if policy.consecutive_failures == 0 {
            return false;
        }
        let n = self.consecutive_failures.fetch_add(1, Ordering::Relaxed) + 1;
        n >= policy.consecutive_failures
    }

    /// Ejects the backend; returns for how long.
    pub(crate) fn eject(&self, policy: &OutlierPolicy, now: Instant) -> Duration {
        let n = (self.ejections_in_row.fetch_add(1, Ordering::Relaxed) + 1)
            .min(MAX_EJECTION_MULTIPLIER);
        let length = policy.base_ejection.saturating_mul(n);
        self.ejected_until
            .store(stamp(now + length).max(1), Ordering::Relaxed);
        self.consecutive_failures.store(0, Ordering::Relaxed);
        self.ejections_total.fetch_add(1, Ordering::Relaxed);
        length
    }

    pub(crate) fn status(&self, now: Instant) -> EndpointStatus {
        EndpointStatus {
            requests: self.counters.snapshot(),
            in_flight: self.in_flight(),
            ewma_micros: self.ewma_micros(),
            ejected: self.is_ejected(now),
            ejections_total: self.ejections_total.load(Ordering::Relaxed),
            healthy: self.is_healthy(),
            idle_connections: self.pool.idle(),
        }
    }
}

fn decay(ewma: &mut PeakEwma, now: Instant) {
    let elapsed = now.saturating_duration_since(ewma.at);
    if elapsed.is_zero() {
        return;
    }
    let w = (-(elapsed.as_nanos() as f64) / EWMA_DECAY.as_nanos() as f64).exp();
    ewma.cost_ns *= w;
    ewma.at = now;
}

/// The live L7 state of a backend, for status and metrics.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct EndpointStatus {
    pub requests: RequestCounts,
    pub in_flight: u64,
    /// The peak-EWMA latency estimate, in microseconds.
    pub ewma_micros: u64,
    /// Ejected by outlier detection right now.
    pub ejected: bool,
    pub ejections_total: u64,
    /// The active health check's verdict (true while checks are off).
    pub healthy: bool,
    /// Upstream connections waiting in the pool.
    pub idle_connections: usize,
}

/// A request in flight to a backend.
#[derive(Debug)]
pub(crate) struct InFlight(Arc<Endpoint>);

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.in_flight.fetch_sub(1, Ordering::Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn histogram_buckets_and_classes() {
        let c = Counters::default();
        c.response(200, Duration::from_micros(300));
        c.response(204, Duration::from_millis(3));
        c.response(503, Duration::from_secs(20));
        c.response(99, Duration::ZERO);
        c.failed();
        let s = c.snapshot();
        assert_eq!(s.by_class, [1, 2, 0, 0, 1]);
        assert_eq!(s.failed, 1);
        assert_eq!(s.latency.count, 4);
        assert_eq!(s.latency.buckets[0], 2, "0 and 300 µs");
        assert_eq!(s.latency.buckets[3], 1, "3 ms is in (2.5 ms, 5 ms]");
        assert_eq!(
            s.latency.buckets.iter().sum::<u64>(),
            3,
            "20 s is above every bucket"
        );
        assert_eq!(s.latency.sum_nanos, 20_003_300_000);
    }

    #[tokio::test(start_paused = true)]
    async fn peak_ewma_takes_peaks_at_once_and_decays_toward_faster_rtts() {
        let e = Endpoint::default();
        let now = Instant::now();
        e.observe(Duration::from_millis(100), now);
        assert!(
            (e.cost(now) - 100e6).abs() < 1.0,
            "a peak replaces the estimate"
        );
        let later = now + EWMA_DECAY;
        e.observe(Duration::from_millis(1), later);
        let cost = e.cost(later);
        // Decayed once by e^-1 toward 1 ms: 100·e^-1 + 1·(1 - e^-1) ms.
        let want = 100e6 * (-1f64).exp() + 1e6 * (1.0 - (-1f64).exp());
        assert!((cost - want).abs() < 1e3, "{cost} vs {want}");
        let fresh = Arc::new(Endpoint::default());
        let guard = fresh.start();
        assert_eq!(fresh.in_flight(), 1);
        assert!((fresh.cost(now) - 2.0 * DEFAULT_RTT.as_nanos() as f64).abs() < 1e3);
        drop(guard);
        assert_eq!(fresh.in_flight(), 0);
    }

    #[tokio::test(start_paused = true)]
    async fn ejection_grows_with_each_ejection_in_a_row_and_ends() {
        let policy = OutlierPolicy {
            consecutive_failures: 2,
            base_ejection: Duration::from_secs(10),
            max_ejection_percent: 50,
        };
        let e = Endpoint::default();
        let now = Instant::now();
        assert!(!e.failed(&policy));
        assert!(e.failed(&policy), "the second failure in a row crosses");
        assert_eq!(e.eject(&policy, now), Duration::from_secs(10));
        assert!(e.is_ejected(now + Duration::from_secs(9)));
        assert!(!e.is_ejected(now + Duration::from_secs(10)));
        assert!(!e.failed(&policy), "the streak restarted at the ejection");
        assert!(e.failed(&policy));
        let again = now + Duration::from_secs(11);
        assert_eq!(e.eject(&policy, again), Duration::from_secs(20));
        // A success after the ejection ended resets the multiplier.
        let after = again + Duration::from_secs(21);
        e.succeeded(after);
        assert_eq!(e.eject(&policy, after), Duration::from_secs(10));
        assert_eq!(e.status(after).ejections_total, 3);
        let off = OutlierPolicy {
            consecutive_failures: 0,
            ..policy
        };
        assert!(!e.failed(&off));
    }
}
