//! A circuit breaker per upstream: after `threshold` consecutive failures it opens and the
//! gateway answers 503 at once; after `cooldown` one probe request is let through (half-open);
//! its success closes the breaker, its failure opens it again.

use std::sync::Mutex;
use std::time::{Duration, Instant};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum State {
    Closed {
        failures: u32,
    },
    Open {
        until: Instant,
    },
    /// One probe is in flight since `since`. If it never reports back (the client went away),
    /// another probe is allowed after a cool-down, so the breaker cannot stay shut forever.
    HalfOpen {
        since: Instant,
    },
}

pub struct Breaker {
    state: Mutex<State>,
    threshold: u32,
    cooldown: Duration,
}

/// What `allow` decided.
#[derive(Debug, PartialEq, Eq)]
pub enum Admission {
    Pass,
    /// Rejected; the breaker may let a probe through after this long.
    Reject(Duration),
}

impl Breaker {
    pub fn new(threshold: u32, cooldown: Duration) -> Breaker {
        Breaker { state: Mutex::new(State::Closed { failures: 0 }), threshold, cooldown }
    }

    pub fn state(&self) -> State {
        *self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub fn allow(&self, now: Instant) -> Admission {
        let mut state = self.state.lock().unwrap_or_else(|p| p.into_inner());
        match *state {
            State::Closed { .. } => Admission::Pass,
            State::Open { until } if now >= until => {
                *state = State::HalfOpen { since: now };
                Admission::Pass
            }
            State::Open { until } => Admission::Reject(until - now),
            State::HalfOpen { since } if now >= since + self.cooldown => {
                *state = State::HalfOpen { since: now };
                Admission::Pass
            }
            State::HalfOpen { since } => Admission::Reject(since + self.cooldown - now),
        }
    }

    pub fn success(&self) {
        *self.state.lock().unwrap_or_else(|p| p.into_inner()) = State::Closed { failures: 0 };
    }

    pub fn failure(&self, now: Instant) {
        let mut state = self.state.lock().unwrap_or_else(|p| p.into_inner());
        *state = match *state {
            State::Closed { failures } if failures + 1 < self.threshold => State::Closed { failures: failures + 1 },
            State::Closed { .. } | State::HalfOpen { .. } => State::Open { until: now + self.cooldown },
            open @ State::Open { .. } => open,
        };
    }

    /// For the `gateway_breaker_state` gauge: 0 closed, 1 open, 2 half-open.
    pub fn gauge_value(&self) -> i64 {
        match self.state() {
            State::Closed { .. } => 0,
            State::Open { .. } => 1,
            State::HalfOpen { .. } => 2,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn opens_after_consecutive_failures_then_probes_once_after_cooldown() {
        let b = Breaker::new(3, Duration::from_secs(5));
        let t0 = Instant::now();
        b.failure(t0);
        b.failure(t0);
        assert_eq!(b.allow(t0), Admission::Pass, "two failures: still closed");
        b.failure(t0);
        assert!(matches!(b.allow(t0 + Duration::from_secs(1)), Admission::Reject(d) if d == Duration::from_secs(4)));

        let later = t0 + Duration::from_secs(5);
        assert_eq!(b.allow(later), Admission::Pass, "the probe");
        assert!(matches!(b.allow(later), Admission::Reject(_)), "only one probe at a time");
        let abandoned = later + Duration::from_secs(5);
        assert_eq!(b.allow(abandoned), Admission::Pass, "a probe that never reported back is replaced");
        b.failure(abandoned);
        assert!(matches!(b.state(), State::Open { .. }), "a failed probe reopens");

        let again = abandoned + Duration::from_secs(5);
        assert_eq!(b.allow(again), Admission::Pass);
        b.success();
        assert_eq!(b.state(), State::Closed { failures: 0 });
    }

    #[test]
    fn a_success_resets_the_failure_count() {
        let b = Breaker::new(2, Duration::from_secs(1));
        let t = Instant::now();
        b.failure(t);
        b.success();
        b.failure(t);
        assert_eq!(b.allow(t), Admission::Pass);
    }
}
