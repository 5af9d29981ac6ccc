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
