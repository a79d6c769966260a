//! What a run measured: HdrHistograms per core × endpoint × outcome, merged exactly.
//!
//! Memory is fixed by the number of endpoints, not by the number of requests: a histogram covers
//! 1 ns to 1 h at 3 significant figures in a fixed array, and histograms add without loss, so
//! per-core, per-second and per-run results combine exactly (and a report can be merged later).

use base64::Engine as _;
use hdrhistogram::Histogram;
use hdrhistogram::serialization::{Deserializer, Serializer, V2DeflateSerializer};

/// Longest latency a histogram holds; longer ones are clamped (and the request timeout is lower).
pub const HIGHEST_NS: u64 = 3_600_000_000_000;

pub fn histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, HIGHEST_NS, 3).expect("static histogram bounds are valid")
}

/// Coarser histogram for the once-a-second time series (only p50/p99 for progress lines).
pub fn interval_histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, HIGHEST_NS, 2).expect("static histogram bounds are valid")
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// Status in the endpoint's `expect_status`.
    Expected = 0,
    /// A response, but with another status.
    Unexpected = 1,
    /// No response: connect failure, timeout, reset.
    Failed = 2,
}

pub const OUTCOMES: [Outcome; 3] = [Outcome::Expected, Outcome::Unexpected, Outcome::Failed];

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FailureKind {
    Connect = 0,
    Timeout = 1,
    Io = 2,
}

pub const FAILURE_NAMES: [&str; 3] = ["connect", "timeout", "io"];

#[derive(Debug, Clone, Default)]
pub struct EndpointStats {
    /// Latency from the intended send time (open model) or the actual send (closed), per outcome.
    pub latency: [Option<Histogram<u64>>; 3],
    /// Time from the actual send to the last byte of the response, per outcome.
    pub service: [Option<Histogram<u64>>; 3],
    /// Counts per status code; a handful of codes per endpoint, so a linear scan is fastest.
    pub status: Vec<(u16, u64)>,
    pub failures: [u64; 3],
    pub bytes_in: u64,
}

impl EndpointStats {
    pub fn record(&mut self, outcome: Outcome, latency_ns: u64, service_ns: u64) {
        let i = outcome as usize;
        self.latency[i].get_or_insert_with(histogram).saturating_record(latency_ns.max(1));
        self.service[i].get_or_insert_with(histogram).saturating_record(service_ns.max(1));
    }

    pub fn count_status(&mut self, status: u16, bytes: u64) {
        self.bytes_in += bytes;
        match self.status.iter_mut().find(|(s, _)| *s == status) {
            Some((_, n)) => *n += 1,
            None => self.status.push((status, 1)),
        }
    }

    pub fn count(&self) -> u64 {
        self.latency.iter().flatten().map(Histogram::len).sum()
    }

    pub fn count_of(&self, outcome: Outcome) -> u64 {
        self.latency[outcome as usize].as_ref().map_or(0, Histogram::len)
    }

    /// Latency over the chosen outcomes, merged.
    pub fn latency_of(&self, outcomes: &[Outcome]) -> Histogram<u64> {
        merged(outcomes.iter().filter_map(|o| self.latency[*o as usize].as_ref()))
    }

    pub fn service_of(&self, outcomes: &[Outcome]) -> Histogram<u64> {
        merged(outcomes.iter().filter_map(|o| self.service[*o as usize].as_ref()))
    }

    pub fn merge(&mut self, other: &EndpointStats) {
        for (mine, theirs) in
            self.latency.iter_mut().chain(self.service.iter_mut()).zip(other.latency.iter().chain(other.service.iter()))
        {
            if let Some(theirs) = theirs {
                add(mine.get_or_insert_with(histogram), theirs);
            }
        }
        for (status, n) in &other.status {
            match self.status.iter_mut().find(|(s, _)| s == status) {
                Some((_, mine)) => *mine += n,
                None => self.status.push((*status, *n)),
            }
        }
        for (mine, theirs) in self.failures.iter_mut().zip(other.failures) {
            *mine += theirs;
        }
        self.bytes_in += other.bytes_in;
    }
}

/// Everything one core measured. Cores never share it while running.
#[derive(Debug, Clone)]
pub struct CoreStats {
    pub endpoints: Vec<EndpointStats>,
    /// Actual send minus intended send (open model).
    pub schedule_lag: Histogram<u64>,
    /// Requests sent during warm-up (not in the histograms).
    pub warmup_requests: u64,
    /// Requests sent after warm-up.
    pub sent: u64,
    /// Planned requests never sent (queued at the connection cap when the run ended).
    pub dropped: u64,
    /// Times a due request found every connection busy and the connection cap reached.
    pub cap_waits: u64,
    pub max_in_flight: u64,
    pub connections_opened: u64,
}

impl CoreStats {
    pub fn new(endpoints: usize) -> CoreStats {
        CoreStats {
            endpoints: vec![EndpointStats::default(); endpoints],
            schedule_lag: histogram(),
            warmup_requests: 0,
            sent: 0,
            dropped: 0,
            cap_waits: 0,
            max_in_flight: 0,
            connections_opened: 0,
        }
    }

    pub fn merge(&mut self, other: &CoreStats) {
        for (mine, theirs) in self.endpoints.iter_mut().zip(&other.endpoints) {
            mine.merge(theirs);
        }
        add(&mut self.schedule_lag, &other.schedule_lag);
        self.warmup_requests += other.warmup_requests;
        self.sent += other.sent;
        self.dropped += other.dropped;
        self.cap_waits += other.cap_waits;
        self.max_in_flight += other.max_in_flight;
        self.connections_opened += other.connections_opened;
    }
}

/// One core's second of traffic, sent to the aggregator once a second (never per request).
#[derive(Debug)]
pub struct IntervalStats {
    pub second: u64,
    pub completed: u64,
    pub failed: u64,
    pub in_flight: u64,
    pub latency: Histogram<u64>,
}

impl IntervalStats {
    pub fn new(second: u64) -> IntervalStats {
        IntervalStats { second, completed: 0, failed: 0, in_flight: 0, latency: interval_histogram() }
    }
}

pub fn add(into: &mut Histogram<u64>, from: &Histogram<u64>) {
    // Both sides share the same bounds (made here), so adding cannot fail.
    into.add(from).expect("histograms share bounds");
}

pub fn merged<'a>(parts: impl IntoIterator<Item = &'a Histogram<u64>>) -> Histogram<u64> {
    let mut all = histogram();
    for part in parts {
        add(&mut all, part);
    }
    all
}

/// Base64 of HdrHistogram's V2 + DEFLATE encoding: what every HdrHistogram library reads.
pub fn encode(h: &Histogram<u64>) -> String {
    let mut bytes = Vec::new();
    V2DeflateSerializer::new().serialize(h, &mut bytes).expect("serialising into memory cannot fail");
    base64::engine::general_purpose::STANDARD.encode(bytes)
}

pub fn decode(text: &str) -> Result<Histogram<u64>, String> {
    let bytes =
        base64::engine::general_purpose::STANDARD.decode(text).map_err(|e| format!("histogram is not base64: {e}"))?;
    let h: Histogram<u64> = Deserializer::new()
        .deserialize(&mut bytes.as_slice())
        .map_err(|e| format!("histogram does not decode: {e:?}"))?;
    // Re-home into our bounds so it can be merged with ours.
    let mut ours = histogram();
    ours.add(&h).map_err(|e| format!("histogram out of range: {e:?}"))?;
    Ok(ours)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn xorshift(state: &mut u64) -> u64 {
        *state ^= *state << 13;
        *state ^= *state >> 7;
        *state ^= *state << 17;
        *state
    }

    #[test]
    fn merging_parts_equals_recording_the_whole() {
        let mut whole = histogram();
        let mut parts = vec![histogram(), histogram(), histogram()];
        let mut state = 0x1234_5678_9abc_def0;
        for i in 0..200_000u64 {
            let v = 1 + xorshift(&mut state) % 5_000_000_000;
            whole.record(v).expect("in range");
            parts[(i % 3) as usize].record(v).expect("in range");
        }
        let merged = merged(&parts);
        assert_eq!(merged, whole);
        for q in [0.5, 0.9, 0.99, 0.999, 1.0] {
            assert_eq!(merged.value_at_quantile(q), whole.value_at_quantile(q));
        }
        // And through the report encoding.
        let back = decode(&encode(&merged)).expect("round trip");
        assert_eq!(back, whole);
    }

    #[test]
    fn endpoint_stats_merge_counts_statuses_and_outcomes() {
        let mut a = EndpointStats::default();
        let mut b = EndpointStats::default();
        a.record(Outcome::Expected, 1_000, 900);
        a.count_status(200, 10);
        b.record(Outcome::Unexpected, 2_000, 1_900);
        b.count_status(500, 5);
        b.record(Outcome::Expected, 3_000, 2_900);
        b.count_status(200, 10);
        b.failures[FailureKind::Timeout as usize] += 1;
        b.record(Outcome::Failed, 9_000, 9_000);
        a.merge(&b);
        assert_eq!(a.count(), 4);
        assert_eq!(a.count_of(Outcome::Expected), 2);
        assert_eq!(a.status, vec![(200, 2), (500, 1)]);
        assert_eq!(a.failures, [0, 1, 0]);
        assert_eq!(a.bytes_in, 25);
        let all = a.latency_of(&OUTCOMES);
        assert_eq!(all.len(), 4);
        assert!(all.equivalent(all.max(), 9_000));
    }

    #[test]
    fn a_corrupt_histogram_is_an_error_not_a_panic() {
        assert!(decode("not base64!").is_err());
        assert!(decode("AAAA").is_err());
    }
}
