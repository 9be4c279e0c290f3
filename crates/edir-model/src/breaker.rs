//! A circuit breaker per replica: open after repeated failures, one half-open probe after a
//! cool-down, closed again on its success.

use tokio::time::{Duration, Instant};

/// Consecutive replica faults that open the breaker.
pub const FAILURE_THRESHOLD: u32 = 5;
/// How long an open breaker refuses before it lets one probe through.
pub const OPEN_FOR: Duration = Duration::from_secs(5);

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    Closed { failures: u32 },
    Open { until: Instant },
    HalfOpen { probing: bool },
}

/// The breaker.
#[derive(Debug)]
pub struct Breaker {
    state: State,
}

impl Default for Breaker {
    fn default() -> Self {
        Self {
            state: State::Closed { failures: 0 },
        }
    }
}

impl Breaker {
    /// Whether a request may go to this replica now (a half-open breaker lets one through).
    pub fn allow(&mut self) -> bool {
        match self.state {
            State::Closed { .. } => true,
            State::Open { until } if Instant::now() >= until => {
                self.state = State::HalfOpen { probing: true };
                true
            }
            State::Open { .. } | State::HalfOpen { probing: true } => false,
            State::HalfOpen { probing: false } => {
                self.state = State::HalfOpen { probing: true };
                true
            }
        }
    }

    /// Whether it would allow a request (without taking the probe).
    #[must_use]
    pub fn is_available(&self) -> bool {
        match self.state {
            State::Closed { .. } | State::HalfOpen { probing: false } => true,
            State::Open { until } => Instant::now() >= until,
            State::HalfOpen { probing: true } => false,
        }
    }

    /// Whether it is open (refusing).
    #[must_use]
    pub fn is_open(&self) -> bool {
        matches!(self.state, State::Open { .. })
    }

    /// A request succeeded.
    pub fn on_success(&mut self) {
        self.state = State::Closed { failures: 0 };
    }

    /// A request failed in a way that blames the replica.
    pub fn on_failure(&mut self) {
        self.state = match self.state {
            State::Closed { failures } if failures + 1 < FAILURE_THRESHOLD => State::Closed {
                failures: failures + 1,
            },
            _ => State::Open {
                until: Instant::now() + OPEN_FOR,
            },
        };
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn opens_probes_and_closes() {
        let mut breaker = Breaker::default();
        for _ in 0..FAILURE_THRESHOLD {
            assert!(breaker.allow());
            breaker.on_failure();
        }
        assert!(breaker.is_open());
        assert!(!breaker.allow());
        tokio::time::advance(OPEN_FOR).await;
        assert!(breaker.allow(), "one half-open probe");
        assert!(!breaker.allow(), "only one");
        breaker.on_failure();
        assert!(!breaker.allow(), "a failed probe opens it again");
        tokio::time::advance(OPEN_FOR).await;
        assert!(breaker.allow());
        breaker.on_success();
        assert!(breaker.allow() && breaker.allow(), "closed again");
    }
}
