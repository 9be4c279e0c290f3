//! Adaptive concurrency per endpoint: AIMD between a floor and the configured maximum.
//!
//! Additive increase (about +1 per window of successes), multiplicative decrease on overload
//! (429, 503, timeouts) at most once per cool-down so one burst does not collapse the limit,
//! and, because vLLM queues instead of refusing, a hold-or-lower signal from the replicas'
//! `/metrics` when requests pile up in their waiting queue.

use std::sync::{Arc, Mutex};

use tokio::sync::Notify;
use tokio::time::{Duration, Instant};

/// Factor of a multiplicative decrease.
const DECREASE: f64 = 0.7;
/// Factor applied when the server's queue grows.
const QUEUE_DECREASE: f64 = 0.9;
/// At most one decrease per this long.
const COOL_DOWN: Duration = Duration::from_millis(250);

#[derive(Debug)]
struct State {
    limit: f64,
    in_flight: usize,
    last_decrease: Option<Instant>,
    /// The servers report a growing queue: do not increase.
    queue_pressure: bool,
    /// Until the first sign of overload the limit grows by one per success while at least
    /// half of it is in use (doubling per round trip, like TCP's slow start), so a fast server
    /// is used fully within seconds instead of after tens of thousands of calls.
    slow_start: bool,
}

/// The limit.
#[derive(Debug)]
pub struct AdaptiveLimit {
    state: Mutex<State>,
    notify: Notify,
    min: usize,
    max: usize,
}

impl AdaptiveLimit {
    /// A limit in `[min, max]` starting at `initial`.
    #[must_use]
    pub fn new(min: usize, max: usize, initial: usize) -> Arc<Self> {
        let max = max.max(1);
        let min = min.clamp(1, max);
        #[expect(clippy::cast_precision_loss, reason = "small counts")]
        let limit = initial.clamp(min, max) as f64;
        Arc::new(Self {
            state: Mutex::new(State {
                limit,
                in_flight: 0,
                last_decrease: None,
                queue_pressure: false,
                slow_start: true,
            }),
            notify: Notify::new(),
            min,
            max,
        })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// The current limit (whole requests).
    #[must_use]
    pub fn limit(&self) -> usize {
        #[expect(
            clippy::cast_possible_truncation,
            clippy::cast_sign_loss,
            reason = "limit is in [min, max]"
        )]
        let limit = self.lock().limit.floor() as usize;
        limit.clamp(self.min, self.max)
    }

    /// Requests holding a permit.
    #[must_use]
    pub fn in_flight(&self) -> usize {
        self.lock().in_flight
    }

    /// Waits for room under the limit.
    ///
    /// # Cancel safety
    /// Cancel safe: a dropped wait takes no permit.
    pub async fn acquire(self: &Arc<Self>) -> LimitPermit {
        loop {
            let notified = self.notify.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            {
                let limit = self.limit();
                let mut state = self.lock();
                if state.in_flight < limit {
                    state.in_flight += 1;
                    return LimitPermit {
                        limit: Arc::clone(self),
                    };
                }
            }
            notified.await;
        }
    }

    /// A request succeeded.
    pub fn on_success(&self) {
        let mut state = self.lock();
        #[expect(clippy::cast_precision_loss, reason = "small counts")]
        let max = self.max as f64;
        if !state.queue_pressure && state.limit < max {
            #[expect(clippy::cast_precision_loss, reason = "small counts")]
            let full = state.in_flight as f64 * 2.0 >= state.limit.floor();
            let step = if state.slow_start && full {
                1.0
            } else {
                1.0 / state.limit.max(1.0)
            };
            state.limit = (state.limit + step).min(max);
            drop(state);
            self.notify.notify_one();
        }
    }

    /// The server said it is overloaded (429, 503, a timeout).
    pub fn on_overload(&self) {
        self.decrease(DECREASE);
    }

    fn decrease(&self, factor: f64) {
        let now = Instant::now();
        let mut state = self.lock();
        if state
            .last_decrease
            .is_some_and(|t| now.duration_since(t) < COOL_DOWN)
        {
            return;
        }
        state.last_decrease = Some(now);
        state.slow_start = false;
        #[expect(clippy::cast_precision_loss, reason = "small counts")]
        let min = self.min as f64;
        state.limit = (state.limit * factor).max(min);
    }

    /// Feedback from the replicas' `/metrics`: requests waiting and running in their queues.
    /// A queue longer than a tenth of what runs (and at least 2) holds the limit and lowers it
    /// a little; an empty queue lets it grow again.
    pub fn on_queue(&self, waiting: f64, running: f64) {
        let pressure = waiting > (running * 0.1).max(2.0);
        self.lock().queue_pressure = pressure;
        if pressure {
            self.decrease(QUEUE_DECREASE);
        }
    }
}

/// Room for one request; released on drop.
#[derive(Debug)]
pub struct LimitPermit {
    limit: Arc<AdaptiveLimit>,
}

impl Drop for LimitPermit {
    fn drop(&mut self) {
        self.limit.lock().in_flight -= 1;
        self.limit.notify.notify_one();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn additive_increase_multiplicative_decrease() {
        let limit = AdaptiveLimit::new(2, 64, 8);
        for _ in 0..9 {
            limit.on_success();
        }
        assert_eq!(limit.limit(), 9, "about +1 per window of successes");
        limit.on_overload();
        assert_eq!(limit.limit(), 6);
        limit.on_overload();
        assert_eq!(limit.limit(), 6, "one decrease per cool-down");
        tokio::time::advance(COOL_DOWN).await;
        for _ in 0..10 {
            limit.on_overload();
            tokio::time::advance(COOL_DOWN).await;
        }
        assert_eq!(limit.limit(), 2, "never below the floor");
    }

    #[tokio::test(start_paused = true)]
    async fn slow_start_doubles_a_full_window_until_the_first_overload() {
        let limit = AdaptiveLimit::new(1, 256, 8);
        // Eight requests in flight, each success while the window is full adds one.
        let mut permits = Vec::new();
        for _ in 0..8 {
            permits.push(limit.acquire().await);
        }
        for _ in 0..8 {
            limit.on_success();
        }
        assert_eq!(
            limit.limit(),
            16,
            "one round trip of a full window doubles it"
        );
        drop(permits);
        limit.on_success();
        assert_eq!(
            limit.limit(),
            16,
            "an idle window does not grow in slow start"
        );
        limit.on_overload();
        assert_eq!(limit.limit(), 11);
        let mut permits = Vec::new();
        for _ in 0..11 {
            permits.push(limit.acquire().await);
        }
        for _ in 0..11 {
            limit.on_success();
        }
        assert_eq!(
            limit.limit(),
            12,
            "after an overload: additive increase only"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn queue_pressure_holds_the_limit() {
        let limit = AdaptiveLimit::new(1, 100, 20);
        limit.on_queue(10.0, 20.0);
        assert_eq!(limit.limit(), 18);
        for _ in 0..50 {
            limit.on_success();
        }
        assert_eq!(
            limit.limit(),
            18,
            "no increase while the server's queue grows"
        );
        limit.on_queue(0.0, 18.0);
        for _ in 0..50 {
            limit.on_success();
        }
        assert!(limit.limit() > 18);
    }

    #[tokio::test]
    async fn permits_block_at_the_limit() {
        let limit = AdaptiveLimit::new(1, 2, 2);
        let a = limit.acquire().await;
        let _b = limit.acquire().await;
        let waiter = tokio::spawn({
            let limit = Arc::clone(&limit);
            async move { limit.acquire().await }
        });
        tokio::task::yield_now().await;
        assert!(!waiter.is_finished());
        drop(a);
        let _c = tokio::time::timeout(Duration::from_secs(1), waiter)
            .await
            .unwrap()
            .unwrap();
        assert_eq!(limit.in_flight(), 2);
    }
}
