//! Accounting per endpoint and per replica: requests, failures by class, retries, tokens,
//! images, and latency percentiles (from a log-scale histogram, so memory stays fixed).

use std::collections::BTreeMap;
use std::sync::Mutex;
use std::time::Duration;

use serde::Serialize;

/// Histogram buckets: bucket `i` holds latencies in `[2^(i-1), 2^i)` ms (bucket 0: < 1 ms).
const BUCKETS: usize = 24;

#[derive(Debug, Default)]
struct Inner {
    requests: u64,
    successes: u64,
    failures: BTreeMap<String, u64>,
    retries: u64,
    prompt_tokens: u64,
    completion_tokens: u64,
    images_in: u64,
    images_out: u64,
    latency: [u64; BUCKETS],
}

/// Thread-safe counters.
#[derive(Debug, Default)]
pub struct Stats {
    inner: Mutex<Inner>,
}

/// A copy of the counters.
#[derive(Debug, Clone, Default, Serialize, PartialEq)]
pub struct StatsSnapshot {
    /// Attempts sent.
    pub requests: u64,
    /// Attempts that succeeded.
    pub successes: u64,
    /// Failed attempts by class.
    pub failures: BTreeMap<String, u64>,
    /// Retries.
    pub retries: u64,
    /// Prompt tokens.
    pub prompt_tokens: u64,
    /// Completion tokens.
    pub completion_tokens: u64,
    /// Images sent.
    pub images_in: u64,
    /// Images received.
    pub images_out: u64,
    /// Median latency (ms, bucket upper bound).
    pub p50_ms: f64,
    /// 90th percentile latency (ms).
    pub p90_ms: f64,
    /// 99th percentile latency (ms).
    pub p99_ms: f64,
}

impl Stats {
    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Records an attempt's outcome.
    pub fn record(&self, latency: Duration, failure: Option<&str>) {
        let mut inner = self.lock();
        inner.requests += 1;
        match failure {
            Some(class) => *inner.failures.entry(class.to_string()).or_default() += 1,
            None => inner.successes += 1,
        }
        let ms = u64::try_from(latency.as_millis()).unwrap_or(u64::MAX);
        let bucket = usize::try_from(64 - ms.leading_zeros())
            .unwrap_or(BUCKETS - 1)
            .min(BUCKETS - 1);
        inner.latency[bucket] += 1;
    }

    /// Records a retry.
    pub fn retry(&self) {
        self.lock().retries += 1;
    }

    /// Records usage.
    pub fn usage(
        &self,
        prompt_tokens: u64,
        completion_tokens: u64,
        images_in: u64,
        images_out: u64,
    ) {
        let mut inner = self.lock();
        inner.prompt_tokens += prompt_tokens;
        inner.completion_tokens += completion_tokens;
        inner.images_in += images_in;
        inner.images_out += images_out;
    }

    /// A copy of the counters with percentiles.
    #[must_use]
    pub fn snapshot(&self) -> StatsSnapshot {
        let inner = self.lock();
        let total: u64 = inner.latency.iter().sum();
        let percentile = |q: f64| {
            if total == 0 {
                return 0.0;
            }
            #[expect(
                clippy::cast_precision_loss,
                clippy::cast_possible_truncation,
                clippy::cast_sign_loss,
                reason = "a rank"
            )]
            let rank = ((total as f64) * q).ceil().max(1.0) as u64;
            let mut seen = 0;
            for (i, count) in inner.latency.iter().enumerate() {
                seen += count;
                if seen >= rank {
                    return if i == 0 {
                        1.0
                    } else {
                        f64::from(1u32 << i.min(31))
                    };
                }
            }
            f64::from(1u32 << (BUCKETS - 1))
        };
        StatsSnapshot {
            requests: inner.requests,
            successes: inner.successes,
            failures: inner.failures.clone(),
            retries: inner.retries,
            prompt_tokens: inner.prompt_tokens,
            completion_tokens: inner.completion_tokens,
            images_in: inner.images_in,
            images_out: inner.images_out,
            p50_ms: percentile(0.5),
            p90_ms: percentile(0.9),
            p99_ms: percentile(0.99),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles_and_classes() {
        let stats = Stats::default();
        for ms in [1, 2, 3, 100, 100, 100, 100, 100, 100, 5000] {
            stats.record(Duration::from_millis(ms), None);
        }
        stats.record(Duration::from_millis(10), Some("http_503"));
        let s = stats.snapshot();
        assert_eq!((s.requests, s.successes), (11, 10));
        assert_eq!(s.failures["http_503"], 1);
        assert!((s.p50_ms - 128.0).abs() < f64::EPSILON);
        assert!((s.p99_ms - 8192.0).abs() < f64::EPSILON);
    }
}
