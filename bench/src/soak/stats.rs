//! The soak's arithmetic: a log-linear latency histogram (what the client and the engine count
//! into), quantiles of a Prometheus histogram read from `/metrics` (as `histogram_quantile`
//! computes them), nearest-rank percentiles, and the least-squares slope of memory over time.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// Sub-buckets per power of two: values are kept to within 1/32 (about 3%).
const SUB_BITS: u32 = 5;
const SUB: u64 = 1 << SUB_BITS;

/// Counts of durations in microseconds, in buckets of at most 1/32 of their value (exact below
/// 64 µs). Sparse, so that it serializes small.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct LogHistogram {
    /// Bucket index → count (serialized as `[index, count]` pairs: a map with number keys does
    /// not survive serde's internally tagged enums, which the client's events are).
    #[serde(with = "pairs")]
    pub buckets: BTreeMap<u32, u64>,
    /// Values counted.
    pub count: u64,
    /// The largest value, µs.
    pub max_us: u64,
}

mod pairs {
    use std::collections::BTreeMap;

    use serde::{Deserialize as _, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(map: &BTreeMap<u32, u64>, s: S) -> Result<S::Ok, S::Error> {
        s.collect_seq(map.iter())
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<BTreeMap<u32, u64>, D::Error> {
        Ok(Vec::<(u32, u64)>::deserialize(d)?.into_iter().collect())
    }
}

fn bucket_of(us: u64) -> u32 {
    if us < 2 * SUB {
        return us as u32;
    }
    let exp = us.ilog2(); // at least SUB_BITS + 1
    let sub = (us >> (exp - SUB_BITS)) & (SUB - 1);
    (2 * SUB) as u32 + (exp - SUB_BITS - 1) * SUB as u32 + sub as u32
}

/// The largest value of bucket `index`, µs.
fn bucket_upper(index: u32) -> u64 {
    let index = u64::from(index);
    if index < 2 * SUB {
        return index;
    }
    let rest = index - 2 * SUB;
    let exp = rest / SUB + u64::from(SUB_BITS) + 1;
    let sub = rest % SUB;
    let low = (1u64 << exp) + (sub << (exp - u64::from(SUB_BITS)));
    low + (1u64 << (exp - u64::from(SUB_BITS))) - 1
}

impl LogHistogram {
    /// Counts one value, µs.
    pub fn record(&mut self, us: u64) {
        *self.buckets.entry(bucket_of(us)).or_default() += 1;
        self.count += 1;
        self.max_us = self.max_us.max(us);
    }

    /// Adds every count of `other`.
    pub fn merge(&mut self, other: &Self) {
        for (bucket, n) in &other.buckets {
            *self.buckets.entry(*bucket).or_default() += n;
        }
        self.count += other.count;
        self.max_us = self.max_us.max(other.max_us);
    }

    /// The `q` quantile (nearest rank), as its bucket's upper bound in milliseconds (never above
    /// the largest value seen); `None` when empty.
    pub fn quantile_ms(&self, q: f64) -> Option<f64> {
        if self.count == 0 {
            return None;
        }
        let rank = ((q * self.count as f64).ceil() as u64).clamp(1, self.count);
        let mut seen = 0;
        for (bucket, n) in &self.buckets {
            seen += n;
            if seen >= rank {
                return Some(bucket_upper(*bucket).min(self.max_us) as f64 / 1e3);
            }
        }
        Some(self.max_us as f64 / 1e3)
    }

    /// Values above `ms` milliseconds (at the buckets' resolution).
    pub fn count_above_ms(&self, ms: f64) -> u64 {
        let limit = (ms * 1e3) as u64;
        self.buckets
            .iter()
            .filter(|(bucket, _)| bucket_upper(**bucket) > limit)
            .map(|(_, n)| n)
            .sum()
    }
}

/// A Prometheus histogram as `/metrics` shows it: cumulative counts per upper bound.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct PromHistogram {
    /// `(le, cumulative count)`, ascending, `+Inf` last (as `f64::INFINITY`, serialized as
    /// `null` by serde_json, so kept as the largest finite bound's successor instead: see
    /// [`PromHistogram::from_samples`]).
    pub buckets: Vec<(f64, f64)>,
    /// `_count`.
    pub count: f64,
    /// `_sum`, seconds.
    pub sum: f64,
}

impl PromHistogram {
    /// Reads histogram `name` from parsed `/metrics` samples (summed over label sets).
    /// The `+Inf` bucket is kept as bound `f64::MAX`, which JSON can hold.
    pub fn from_samples(samples: &[switchyard_tests::metrics::Sample], name: &str) -> Self {
        let mut buckets: BTreeMap<u64, (f64, f64)> = BTreeMap::new();
        let bucket_name = format!("{name}_bucket");
        for s in samples.iter().filter(|s| s.name == bucket_name) {
            if let Some(le) = s.label("le").and_then(|le| le.parse::<f64>().ok()) {
                let le = if le.is_finite() { le } else { f64::MAX };
                let entry = buckets.entry(le.to_bits()).or_insert((le, 0.0));
                entry.1 += s.value;
            }
        }
        let mut buckets: Vec<(f64, f64)> = buckets.into_values().collect();
        buckets.sort_by(|a, b| a.0.total_cmp(&b.0));
        Self {
            buckets,
            count: switchyard_tests::metrics::sum(samples, &format!("{name}_count"), &[]),
            sum: switchyard_tests::metrics::sum(samples, &format!("{name}_sum"), &[]),
        }
    }

    /// What was observed between `earlier` and `self` (counts never go down, but a restarted
    /// daemon would start again from zero: then `self` alone).
    #[must_use]
    pub fn since(&self, earlier: &Self) -> Self {
        if earlier.count > self.count {
            return self.clone();
        }
        let before = |le: f64| {
            earlier
                .buckets
                .iter()
                .find(|(l, _)| l.total_cmp(&le).is_eq())
                .map_or(0.0, |(_, c)| *c)
        };
        Self {
            buckets: self
                .buckets
                .iter()
                .map(|(le, c)| (*le, (c - before(*le)).max(0.0)))
                .collect(),
            count: self.count - earlier.count,
            sum: self.sum - earlier.sum,
        }
    }

    /// The upper bound of the bucket holding the `q` quantile, seconds (the largest finite bound
    /// when it falls in `+Inf`).
    pub fn quantile_upper(&self, q: f64) -> Option<f64> {
        let (index, _) = self.rank_bucket(q)?;
        Some(self.finite_bound(index))
    }

    /// The `q` quantile, seconds, interpolated linearly inside its bucket as Prometheus'
    /// `histogram_quantile` does (the first bucket starts at 0; in `+Inf` it is the largest
    /// finite bound).
    pub fn quantile(&self, q: f64) -> Option<f64> {
        let (index, rank) = self.rank_bucket(q)?;
        let (upper, cumulative) = self.buckets[index];
        if upper >= f64::MAX {
            return Some(self.finite_bound(index));
        }
        let (lower, below) = if index == 0 {
            (0.0, 0.0)
        } else {
            self.buckets[index - 1]
        };
        let in_bucket = cumulative - below;
        if in_bucket <= 0.0 {
            return Some(upper);
        }
        Some(lower + (upper - lower) * (rank - below) / in_bucket)
    }

    /// The mean, seconds.
    pub fn mean(&self) -> Option<f64> {
        (self.count > 0.0).then(|| self.sum / self.count)
    }

    fn rank_bucket(&self, q: f64) -> Option<(usize, f64)> {
        let total = self.buckets.last().map_or(self.count, |(_, c)| *c);
        if total <= 0.0 {
            return None;
        }
        let rank = q * total;
        let index = self.buckets.iter().position(|(_, c)| *c >= rank)?;
        Some((index, rank))
    }

    fn finite_bound(&self, index: usize) -> f64 {
        let (le, _) = self.buckets[index];
        if le < f64::MAX {
            return le;
        }
        self.buckets[..index]
            .iter()
            .rev()
            .map(|(le, _)| *le)
            .find(|le| *le < f64::MAX)
            .unwrap_or(0.0)
    }
}

/// The `q` quantile of `values` (nearest rank); `None` when empty.
pub fn nearest_rank(values: &[f64], q: f64) -> Option<f64> {
    if values.is_empty() {
        return None;
    }
    let mut sorted = values.to_vec();
    sorted.sort_by(f64::total_cmp);
    let n = sorted.len();
    let k = ((q * n as f64).ceil() as usize).clamp(1, n);
    Some(sorted[k - 1])
}

/// The least-squares slope of `y` over `x`; `None` with fewer than two distinct `x`.
pub fn slope(points: &[(f64, f64)]) -> Option<f64> {
    if points.len() < 2 {
        return None;
    }
    let n = points.len() as f64;
    let mean_x = points.iter().map(|p| p.0).sum::<f64>() / n;
    let mean_y = points.iter().map(|p| p.1).sum::<f64>() / n;
    let sxx: f64 = points.iter().map(|p| (p.0 - mean_x).powi(2)).sum();
    if sxx <= f64::EPSILON {
        return None;
    }
    let sxy: f64 = points.iter().map(|p| (p.0 - mean_x) * (p.1 - mean_y)).sum();
    Some(sxy / sxx)
}

/// The mean of the `y` of the points whose `x` is in `[from, to]`.
pub fn mean_between(points: &[(f64, f64)], from: f64, to: f64) -> Option<f64> {
    let inside: Vec<f64> = points
        .iter()
        .filter(|p| p.0 >= from && p.0 <= to)
        .map(|p| p.1)
        .collect();
    (!inside.is_empty()).then(|| inside.iter().sum::<f64>() / inside.len() as f64)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn log_buckets_hold_their_values_within_a_thirty_second() {
        for us in [0, 1, 63, 64, 65, 100, 1_000, 1_234_567, 60_000_000] {
            let bucket = bucket_of(us);
            let upper = bucket_upper(bucket);
            assert!(upper >= us, "{us} µs in bucket {bucket} with upper {upper}");
            assert!(
                (upper - us) as f64 <= us as f64 / 32.0 + 1.0,
                "{us} µs: upper {upper} too far"
            );
            if bucket > 0 {
                assert!(
                    bucket_upper(bucket - 1) < us,
                    "{us} µs belongs to a lower bucket"
                );
            }
        }
        // Buckets are in order of value.
        let mut last = 0;
        for us in (0..200_000).step_by(7) {
            let bucket = bucket_of(us);
            assert!(bucket >= last);
            last = bucket;
        }
    }

    #[test]
    fn histogram_quantiles_are_nearest_rank() {
        #[derive(Serialize, Deserialize)]
        #[serde(tag = "ev")]
        enum Event {
            Summary(LogHistogram),
        }
        let mut h = LogHistogram::default();
        assert_eq!(h.quantile_ms(0.5), None);
        for us in 1..=100 {
            h.record(us * 10);
        }
        let p50 = h.quantile_ms(0.5).unwrap();
        assert!((0.49..=0.52).contains(&p50), "{p50}");
        let p99 = h.quantile_ms(0.99).unwrap();
        assert!((0.98..=1.0).contains(&p99), "{p99}");
        assert!((h.quantile_ms(1.0).unwrap() - 1.0).abs() < 1e-9);
        assert_eq!(h.count_above_ms(0.5), 51);
        let mut other = LogHistogram::default();
        other.record(5_000_000);
        h.merge(&other);
        assert_eq!(h.count, 101);
        assert!((h.quantile_ms(1.0).unwrap() - 5000.0).abs() < 1e-9);
        // It travels inside an internally tagged enum, as the client's summary does.
        let json = serde_json::to_string(&Event::Summary(h.clone())).unwrap();
        let Event::Summary(back) = serde_json::from_str(&json).unwrap();
        assert_eq!(back, h);
    }

    fn prom(text: &str) -> PromHistogram {
        PromHistogram::from_samples(&switchyard_tests::metrics::parse(text), "h")
    }

    #[test]
    fn prometheus_quantiles_interpolate_inside_the_bucket() {
        let h = prom(
            "h_bucket{le=\"0.001\"} 0\nh_bucket{le=\"0.002\"} 10\nh_bucket{le=\"0.004\"} 90\n\
             h_bucket{le=\"0.008\"} 100\nh_bucket{le=\"+Inf\"} 100\nh_sum 0.3\nh_count 100\n",
        );
        assert_eq!(h.buckets.len(), 5);
        // Rank 50 is the 40th of 80 in (0.002, 0.004].
        let p50 = h.quantile(0.5).unwrap();
        assert!((p50 - 0.003).abs() < 1e-12, "{p50}");
        assert_eq!(h.quantile_upper(0.5), Some(0.004));
        // Rank 99 is the 9th of 10 in (0.004, 0.008].
        let p99 = h.quantile(0.99).unwrap();
        assert!((p99 - 0.0076).abs() < 1e-12, "{p99}");
        assert!((h.mean().unwrap() - 0.003).abs() < 1e-12);
    }

    #[test]
    fn prometheus_deltas_and_the_inf_bucket() {
        let before = prom("h_bucket{le=\"1\"} 5\nh_bucket{le=\"+Inf\"} 5\nh_sum 2\nh_count 5\n");
        let after = prom("h_bucket{le=\"1\"} 5\nh_bucket{le=\"+Inf\"} 9\nh_sum 30\nh_count 9\n");
        let delta = after.since(&before);
        assert!((delta.count - 4.0).abs() < 1e-12);
        assert!((delta.sum - 28.0).abs() < 1e-12);
        // Everything new is beyond the last finite bound: reported as that bound.
        assert_eq!(delta.quantile(0.5), Some(1.0));
        assert_eq!(delta.quantile_upper(0.99), Some(1.0));
        // A daemon that restarted counts from zero again.
        assert_eq!(before.since(&after), before);
        assert_eq!(PromHistogram::default().quantile(0.5), None);
        // The JSON form keeps +Inf as a number.
        let json = serde_json::to_string(&after).unwrap();
        let back: PromHistogram = serde_json::from_str(&json).unwrap();
        assert_eq!(back, after);
    }

    #[test]
    fn ranks_slopes_and_means() {
        assert_eq!(nearest_rank(&[], 0.5), None);
        assert_eq!(nearest_rank(&[3.0, 1.0, 2.0], 0.5), Some(2.0));
        assert_eq!(nearest_rank(&[3.0, 1.0, 2.0], 0.99), Some(3.0));
        let line: Vec<(f64, f64)> = (0..10)
            .map(|x| (f64::from(x), 2.0 * f64::from(x) + 7.0))
            .collect();
        assert!((slope(&line).unwrap() - 2.0).abs() < 1e-12);
        let flat_noise = [(0.0, 1.0), (1.0, -1.0), (2.0, 1.0), (3.0, -1.0), (4.0, 0.0)];
        assert!(slope(&flat_noise).unwrap().abs() < 0.3);
        assert_eq!(slope(&[(1.0, 1.0), (1.0, 2.0)]), None);
        assert_eq!(slope(&[(1.0, 1.0)]), None);
        assert_eq!(mean_between(&line, 2.0, 4.0), Some(13.0));
        assert_eq!(mean_between(&line, 20.0, 40.0), None);
    }
}
