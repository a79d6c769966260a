//! The open-model schedule: when request k is meant to be sent, and which endpoint it hits.
//!
//! The rate is piecewise linear over the stages (each stage ramps from the previous stage's rate
//! to its own), so the cumulative count N(t) is piecewise quadratic and request k is due at the
//! t where N(t) = k. Every core computes its own tickets from this pure function: no shared
//! scheduler, no channels, and the same plan whatever the core count.

use std::time::Duration;

#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Stage {
    pub duration: Duration,
    /// Rate (requests per second) at the end of the stage.
    pub rps: f64,
}

#[derive(Debug, Clone)]
struct Segment {
    start: f64,
    length: f64,
    rate_start: f64,
    rate_end: f64,
    /// Requests planned before this segment starts.
    count_before: f64,
}

#[derive(Debug, Clone)]
pub struct RatePlan {
    segments: Vec<Segment>,
    total_seconds: f64,
    total_count: f64,
}

impl RatePlan {
    pub fn new(start_rps: f64, stages: &[Stage]) -> RatePlan {
        let mut segments = Vec::with_capacity(stages.len());
        let (mut start, mut rate, mut count) = (0.0, start_rps, 0.0);
        for stage in stages {
            let length = stage.duration.as_secs_f64();
            segments.push(Segment { start, length, rate_start: rate, rate_end: stage.rps, count_before: count });
            count += length * (rate + stage.rps) / 2.0;
            start += length;
            rate = stage.rps;
        }
        RatePlan { segments, total_seconds: start, total_count: count }
    }

    pub fn duration(&self) -> Duration {
        Duration::from_secs_f64(self.total_seconds)
    }

    /// Requests the whole plan sends.
    pub fn total_requests(&self) -> u64 {
        // Request k is sent at N(t) = k for k = 0, 1, ...; those with t < end are in the plan.
        // The small epsilon keeps float noise (200.0000001) from adding a phantom request.
        (self.total_count - 1e-9).ceil().max(0.0) as u64
    }

    /// Planned requests in `[0, t)`.
    pub fn count_before(&self, t: Duration) -> f64 {
        let t = t.as_secs_f64();
        if t >= self.total_seconds {
            return self.total_count;
        }
        for s in &self.segments {
            if t < s.start + s.length {
                let x = t - s.start;
                let slope = if s.length > 0.0 { (s.rate_end - s.rate_start) / s.length } else { 0.0 };
                return s.count_before + s.rate_start * x + slope * x * x / 2.0;
            }
        }
        self.total_count
    }

    /// Offset from the start of the run at which request `k` is due; `None` past the end.
    pub fn time_of(&self, k: u64) -> Option<Duration> {
        if k >= self.total_requests() {
            return None;
        }
        // Segments are few: a linear scan beats a binary search's branches here.
        let k = k as f64;
        let s = self.segments.iter().rev().find(|s| s.count_before <= k && s.length > 0.0)?;
        let c = k - s.count_before;
        let a = (s.rate_end - s.rate_start) / (2.0 * s.length);
        let b = s.rate_start;
        // a x² + b x = c, solved in the form that stays stable for ramps down (a < 0) and for
        // ramps starting at zero (b = 0).
        let root = (b * b + 4.0 * a * c).max(0.0).sqrt();
        let x = if b + root > 0.0 { 2.0 * c / (b + root) } else { 0.0 };
        Some(Duration::from_secs_f64(s.start + x.min(s.length)))
    }
}

/// Weighted endpoint choice, reproducible from (seed, request number) alone, so the mix of a
/// run does not depend on how many cores sent it or in which order requests completed.
#[derive(Debug, Clone)]
pub struct EndpointPicker {
    cumulative: Vec<u64>,
}

impl EndpointPicker {
    pub fn new(weights: &[u32]) -> EndpointPicker {
        let mut total = 0u64;
        let cumulative = weights
            .iter()
            .map(|w| {
                total += u64::from(*w);
                total
            })
            .collect();
        EndpointPicker { cumulative }
    }

    pub fn pick(&self, seed: u64, k: u64) -> usize {
        let total = *self.cumulative.last().unwrap_or(&1);
        if self.cumulative.len() <= 1 {
            return 0;
        }
        let roll = splitmix64(seed ^ k.wrapping_mul(0x9E37_79B9_7F4A_7C15)) % total;
        self.cumulative.partition_point(|c| *c <= roll)
    }
}

fn splitmix64(mut x: u64) -> u64 {
    x = x.wrapping_add(0x9E37_79B9_7F4A_7C15);
    x = (x ^ (x >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    x ^ (x >> 31)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn secs(s: f64) -> Duration {
        Duration::from_secs_f64(s)
    }

    #[test]
    fn a_constant_stage_spaces_requests_evenly() {
        let plan = RatePlan::new(100.0, &[Stage { duration: secs(2.0), rps: 100.0 }]);
        assert_eq!(plan.total_requests(), 200);
        assert_eq!(plan.time_of(0), Some(secs(0.0)));
        assert_eq!(plan.time_of(150), Some(secs(1.5)));
        assert_eq!(plan.time_of(199), Some(secs(1.99)));
        assert_eq!(plan.time_of(200), None);
    }

    #[test]
    fn a_ramp_sends_the_area_under_the_rate() {
        // 0 → 100 rps over 10 s: 500 requests, the k-th at t = sqrt(k / 5).
        let plan = RatePlan::new(0.0, &[Stage { duration: secs(10.0), rps: 100.0 }]);
        assert_eq!(plan.total_requests(), 500);
        let t = plan.time_of(125).expect("in plan").as_secs_f64();
        assert!((t - 5.0).abs() < 1e-6, "{t}");
        // Ramp down mirrors it: 100 → 0, half the requests in the first 2.93 s.
        let down = RatePlan::new(100.0, &[Stage { duration: secs(10.0), rps: 0.0 }]);
        let t = down.time_of(250).expect("in plan").as_secs_f64();
        assert!((t - (10.0 - 50f64.sqrt())).abs() < 1e-6, "{t}");
    }

    #[test]
    fn stages_chain_and_counts_match_times() {
        let plan = RatePlan::new(
            50.0,
            &[
                Stage { duration: secs(2.0), rps: 50.0 },
                Stage { duration: secs(2.0), rps: 150.0 },
                Stage { duration: secs(1.0), rps: 0.0 },
            ],
        );
        // 100 + 200 + 75
        assert_eq!(plan.total_requests(), 375);
        let mut last = Duration::ZERO;
        for k in 0..375 {
            let t = plan.time_of(k).expect("in plan");
            assert!(t >= last, "request {k} goes back in time");
            let n = plan.count_before(t);
            assert!((n - k as f64).abs() < 1e-6, "N(time_of({k})) = {n}");
            last = t;
        }
        assert_eq!(plan.time_of(375), None);
        assert!((plan.count_before(secs(3.0)) - 175.0).abs() < 1e-9);
        assert!((plan.count_before(secs(4.0)) - 300.0).abs() < 1e-9);
    }

    #[test]
    fn endpoint_choice_follows_weights_and_the_seed() {
        let picker = EndpointPicker::new(&[1, 3]);
        let mut counts = [0u32; 2];
        for k in 0..100_000 {
            counts[picker.pick(7, k)] += 1;
        }
        let share = f64::from(counts[1]) / 100_000.0;
        assert!((share - 0.75).abs() < 0.01, "share {share}");
        let again: Vec<usize> = (0..100).map(|k| picker.pick(7, k)).collect();
        let same: Vec<usize> = (0..100).map(|k| picker.pick(7, k)).collect();
        let other: Vec<usize> = (0..100).map(|k| picker.pick(8, k)).collect();
        assert_eq!(again, same);
        assert_ne!(again, other);
    }
}
