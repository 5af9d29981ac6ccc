//! Choosing a backend for one request.
//!
//! Every algorithm draws from the snapshot's eligible backends (ready ones, or the
//! terminating ones when none is ready), skips the ones this request already tried, and
//! prefers the ones that are neither ejected by outlier detection nor failing their health
//! checks; when every untried backend is ejected or unhealthy it uses them anyway, as
//! Envoy's panic threshold does, because a request that might fail beats one that surely does.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};

use hyper::HeaderMap;
use tokio::time::Instant;

use super::spec::{HashKey, RequestBalancer};
use crate::balance::{Backend, BackendSet};

/// Random draws tried before falling back to a scan of the set.
const DRAWS: usize = 3;

/// Chooses a backend of `set` for a request with `headers`, never one in `tried`.
pub(crate) fn pick<'a>(
    set: &'a BackendSet,
    balancer: &RequestBalancer,
    next: &AtomicUsize,
    headers: &HeaderMap,
    tried: &[SocketAddr],
    now: Instant,
) -> Option<&'a Backend> {
    let strict = |b: &Backend| !tried.contains(&b.addr) && b.l7.usable(now);
    let loose = |b: &Backend| !tried.contains(&b.addr);
    choose(set, balancer, next, headers, &strict, now)
        .or_else(|| choose(set, balancer, next, headers, &loose, now))
}

fn choose<'a>(
    set: &'a BackendSet,
    balancer: &RequestBalancer,
    next: &AtomicUsize,
    headers: &HeaderMap,
    ok: &dyn Fn(&Backend) -> bool,
    now: Instant,
) -> Option<&'a Backend> {
    let count = set.eligible_len();
    if count == 0 {
        return None;
    }
    match balancer {
        RequestBalancer::Random => random(set, ok),
        RequestBalancer::RoundRobin => {
            let start = next.fetch_add(1, Ordering::Relaxed);
            (0..count)
                .map(|i| set.eligible_at(start.wrapping_add(i) % count))
                .find(|b| ok(b))
        }
        RequestBalancer::LeastRequest => {
            crate::balance::least_loaded(set.eligible().filter(|b| ok(b)), |b| b.l7.in_flight())
        }
        RequestBalancer::PeakEwma => {
            if count == 1 {
                let only = set.eligible_at(0);
                return ok(only).then_some(only);
            }
            // Two distinct draws; the cheaper usable one wins.
            let i = fastrand::usize(..count);
            let j = (i + 1 + fastrand::usize(..count - 1)) % count;
            let (a, b) = (set.eligible_at(i), set.eligible_at(j));
            match (ok(a), ok(b)) {
                (true, true) => Some(cheaper(a, b, now)),
                (true, false) => Some(a),
                (false, true) => Some(b),
                // Rare (retries, ejections): the cheapest of the ones left.
                (false, false) => set
                    .eligible()
                    .filter(|b| ok(b))
                    .min_by(|x, y| x.l7.cost(now).total_cmp(&y.l7.cost(now))),
            }
        }
        RequestBalancer::ConsistentHash(key) => match hash_of(headers, key) {
            None => random(set, ok),
            Some(hash) => {
                let table = set.hash_table();
                if table.is_empty() {
                    return None;
                }
                // The key's entry, then the following ones: a key whose backend is tried or
                // ejected moves to the same next backend every time.
                let start = (hash % table.len() as u64) as usize;
                (0..table.len())
                    .map(|k| set.eligible_at(table[(start + k) % table.len()] as usize))
                    .find(|b| ok(b))
            }
        },
    }
}

/// Costs closer than this fraction are a tie, broken at random: the estimates of equally
/// fast backends differ by noise, and a strict order would send sequential traffic to
/// whichever happened to look fastest first.
const TIE: f64 = 0.1;

fn cheaper<'a>(a: &'a Backend, b: &'a Backend, now: Instant) -> &'a Backend {
    // A backend not measured lately is measured again (see `endpoint::STALE`).
    match (a.l7.is_stale(now), b.l7.is_stale(now)) {
        (true, false) => return a,
        (false, true) => return b,
        _ => {}
    }
    let (ca, cb) = (a.l7.cost(now), b.l7.cost(now));
    if (ca - cb).abs() <= TIE * ca.max(cb) {
        if fastrand::bool() { a } else { b }
    } else if ca < cb {
        a
    } else {
        b
    }
}

fn random<'a>(set: &'a BackendSet, ok: &dyn Fn(&Backend) -> bool) -> Option<&'a Backend> {
    let n = set.eligible_len();
    for _ in 0..DRAWS {
        let b = set.eligible_at(fastrand::usize(..n));
        if ok(b) {
            return Some(b);
        }
    }
    let count = set.eligible().filter(|b| ok(b)).count();
    if count == 0 {
        return None;
    }
    set.eligible()
        .filter(|b| ok(b))
        .nth(fastrand::usize(..count))
}

/// The hash of the request's key, if it carries one.
pub(crate) fn hash_of(headers: &HeaderMap, key: &HashKey) -> Option<u64> {
    match key {
        HashKey::Header(name) => headers
            .get(name.as_str())
            .map(|v| crate::maglev::hash(v.as_bytes())),
        HashKey::Cookie(name) => headers
            .get_all(hyper::header::COOKIE)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(';'))
            .find_map(|pair| {
                let (k, v) = pair.trim().split_once('=')?;
                (k == name).then(|| crate::maglev::hash(v.as_bytes()))
            }),
    }
}

#[cfg(test)]
mod tests {
    use std::net::SocketAddr;
    use std::time::Duration;

    use super::*;
    use crate::l7::endpoint::STALE;
    use crate::l7::spec::L7Spec;
    use crate::spec::{BackendSpec, ServiceSpec};

    fn set(n: u8) -> BackendSet {
        let spec = ServiceSpec {
            backends: (1..=n)
                .map(|i| BackendSpec::ready(SocketAddr::from(([10, 0, 0, i], 80))))
                .collect(),
            l7: Some(L7Spec::default()),
            ..ServiceSpec::default()
        };
        BackendSet::build(spec, &BackendSet::empty())
    }

    #[tokio::test(start_paused = true)]
    async fn a_backend_measured_slow_once_is_measured_again() {
        let set = set(3);
        let slow = set.eligible_at(2).addr;
        let now = Instant::now();
        for (i, b) in set.eligible().enumerate() {
            let rtt = if i == 2 { 100 } else { 1 };
            b.l7.observe(Duration::from_millis(rtt), now);
        }
        let next = AtomicUsize::new(0);
        let headers = HeaderMap::new();
        let pick_one = |now| {
            pick(&set, &RequestBalancer::PeakEwma, &next, &headers, &[], now)
                .unwrap()
                .addr
        };
        // Its peak keeps it out...
        for _ in 0..50 {
            assert_ne!(pick_one(now), slow);
        }
        // ...until it has not been measured for a while, while the others have.
        tokio::time::advance(STALE).await;
        let later = Instant::now();
        for b in set.eligible().take(2) {
            b.l7.observe(Duration::from_millis(1), later);
        }
        assert!(
            (0..20).any(|_| pick_one(later) == slow),
            "never measured again"
        );
    }

    #[test]
    fn hash_keys_from_headers_and_cookies() {
        let mut headers = HeaderMap::new();
        headers.insert("x-user", "alice".parse().unwrap());
        headers.append("cookie", "a=1; session=s1".parse().unwrap());
        let header = hash_of(&headers, &HashKey::Header("x-user".into()));
        assert_eq!(header, Some(crate::maglev::hash(b"alice")));
        let cookie = hash_of(&headers, &HashKey::Cookie("session".into()));
        assert_eq!(cookie, Some(crate::maglev::hash(b"s1")));
        assert_eq!(hash_of(&headers, &HashKey::Cookie("missing".into())), None);
        assert_eq!(
            hash_of(&HeaderMap::new(), &HashKey::Header("x-user".into())),
            None
        );
    }
}
