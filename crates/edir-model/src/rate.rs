//! Optional requests-per-minute and tokens-per-minute limits (hosted APIs): token buckets that
//! refill continuously, each holding at most one minute of budget.

use tokio::sync::Mutex;
use tokio::time::{Duration, Instant};

#[derive(Debug)]
struct Bucket {
    per_minute: f64,
    available: f64,
    refreshed: Instant,
}

impl Bucket {
    fn new(per_minute: u32) -> Self {
        let per_minute = f64::from(per_minute.max(1));
        Self {
            per_minute,
            available: per_minute,
            refreshed: Instant::now(),
        }
    }

    /// How long until `cost` is available; takes it when it is.
    fn take(&mut self, cost: f64) -> Option<Duration> {
        let now = Instant::now();
        let refill = now.duration_since(self.refreshed).as_secs_f64() / 60.0 * self.per_minute;
        self.available = (self.available + refill).min(self.per_minute);
        self.refreshed = now;
        let cost = cost.min(self.per_minute);
        if self.available >= cost {
            self.available -= cost;
            None
        } else {
            Some(Duration::from_secs_f64(
                (cost - self.available) / self.per_minute * 60.0,
            ))
        }
    }
}

/// Request and token budgets.
#[derive(Debug)]
pub struct RateLimit {
    requests: Option<Mutex<Bucket>>,
    tokens: Option<Mutex<Bucket>>,
}

impl RateLimit {
    /// `None` when neither limit is set.
    #[must_use]
    pub fn new(requests_per_minute: Option<u32>, tokens_per_minute: Option<u32>) -> Option<Self> {
        if requests_per_minute.is_none() && tokens_per_minute.is_none() {
            return None;
        }
        Some(Self {
            requests: requests_per_minute.map(|r| Mutex::new(Bucket::new(r))),
            tokens: tokens_per_minute.map(|t| Mutex::new(Bucket::new(t))),
        })
    }

    /// Waits until one request of `tokens` estimated tokens fits both budgets.
    pub async fn acquire(&self, tokens: u64) {
        #[expect(clippy::cast_precision_loss, reason = "token estimates")]
        for (bucket, cost) in [(&self.requests, 1.0), (&self.tokens, tokens as f64)] {
            let Some(bucket) = bucket else { continue };
            loop {
                let wait = bucket.lock().await.take(cost);
                match wait {
                    None => break,
                    Some(wait) => tokio::time::sleep(wait).await,
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn requests_per_minute_spaces_requests() {
        let limit = RateLimit::new(Some(60), None).unwrap();
        let started = Instant::now();
        for _ in 0..70 {
            limit.acquire(0).await;
        }
        // 60 at once (a full bucket), then one per second.
        let elapsed = started.elapsed();
        assert!(
            elapsed >= Duration::from_secs(10) && elapsed < Duration::from_secs(11),
            "{elapsed:?}"
        );
    }
}
