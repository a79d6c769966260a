//! Prometheus metrics: request count and latency by route, method and status; requests in
//! flight; build info. Services register their own metrics on the same registry.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, RwLock};

use prometheus_client::encoding::text::encode;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::{Metric, Registry};

use crate::ServiceInfo;

/// Label pairs, e.g. `[("route", "/v1/jobs"), ("status", "201")]`.
pub type Labels = Vec<(String, String)>;

/// Latency buckets from 1 ms to 10 s: the range an HTTP service or a job cares about.
pub fn latency_histogram() -> Histogram {
    Histogram::new([0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0])
}

/// A (route, method, status) that owns its strings and compares with borrowed ones.
#[derive(Clone, Debug)]
struct LabelKey(String, String, u16);

impl LabelKey {
    fn new(route: &str, method: &str, status: u16) -> LabelKey {
        LabelKey(route.to_string(), method.to_string(), status)
    }
}

impl PartialEq<(&str, &str, u16)> for LabelKey {
    fn eq(&self, other: &(&str, &str, u16)) -> bool {
        self.0 == other.0 && self.1 == other.1 && self.2 == other.2
    }
}

fn request_key(route: &str, method: &str, status: u16) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in route.bytes().chain([0]).chain(method.bytes()).chain([0]).chain(status.to_le_bytes()) {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    h
}

type RequestHandles = (Counter, Histogram);
type HandleCache = HashMap<u64, Vec<(LabelKey, RequestHandles)>>;

#[derive(Clone)]
pub struct Metrics {
    registry: Arc<Mutex<Registry>>,
    /// Resolved counter and histogram per (route, method, status): the hot path then does no
    /// allocation and no label hashing beyond one u64.
    handles: Arc<RwLock<HandleCache>>,
    pub requests: Family<Labels, Counter>,
    pub latency: Family<Labels, Histogram, fn() -> Histogram>,
    pub in_flight: Gauge,
    dependencies: Family<Labels, Gauge>,
}

impl Metrics {
    pub fn new(info: &ServiceInfo) -> Metrics {
        let mut registry = Registry::default();
        let requests = Family::<Labels, Counter>::default();
        let latency = Family::<Labels, Histogram, fn() -> Histogram>::new_with_constructor(latency_histogram);
        let in_flight = Gauge::default();
        let build_info = Family::<Labels, Gauge>::default();
        build_info
            .get_or_create(&vec![
                ("service".into(), info.name.into()),
                ("version".into(), info.version.into()),
                ("git_sha".into(), crate::GIT_SHA.into()),
            ])
            .set(1);
        registry.register("http_requests", "HTTP requests handled, by route, method and status", requests.clone());
        registry.register(
            "http_request_duration_seconds",
            "HTTP request latency, by route, method and status",
            latency.clone(),
        );
        registry.register("http_requests_in_flight", "HTTP requests being handled now", in_flight.clone());
        let dependencies = Family::<Labels, Gauge>::default();
        registry.register(
            "dependency_up",
            "1 when the dependency answered its check at the last scrape, by dependency",
            dependencies.clone(),
        );
        registry.register("build_info", "The running build: service, version and git commit", build_info);
        // When this process started: a change is a restart (`deploy verify` counts them).
        let started = Gauge::<f64, std::sync::atomic::AtomicU64>::default();
        started
            .set(std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0.0, |d| d.as_secs_f64()));
        registry.register("process_start_time_seconds", "Start time of the process since the Unix epoch", started);
        Metrics {
            registry: Arc::new(Mutex::new(registry)),
            handles: Arc::default(),
            requests,
            latency,
            in_flight,
            dependencies,
        }
    }

    /// Whether a dependency (`postgres`, `redis`, ...) answered its last check.
    pub fn set_dependency(&self, name: &str, up: bool) {
        self.dependencies.get_or_create(&vec![("dependency".into(), name.to_string())]).set(i64::from(up));
    }

    /// Add a service-specific metric (call before serving).
    pub fn register(&self, name: &str, help: &str, metric: impl Metric) {
        if let Ok(mut registry) = self.registry.lock() {
            registry.register(name, help, metric);
        }
    }

    pub fn observe_request(&self, route: &str, method: &str, status: u16, seconds: f64) {
        let key = request_key(route, method, status);
        let cached = self.handles.read().ok().and_then(|h| {
            h.get(&key).and_then(|v| v.iter().find(|e| e.0 == (route, method, status)).map(|e| e.1.clone()))
        });
        let (count, latency) = match cached {
            Some(handles) => handles,
            None => {
                // First request for this (route, method, status): resolve the label set once.
                let labels: Labels = vec![
                    ("route".into(), route.into()),
                    ("method".into(), method.into()),
                    ("status".into(), status.to_string()),
                ];
                let handles =
                    (self.requests.get_or_create(&labels).clone(), self.latency.get_or_create(&labels).clone());
                if let Ok(mut h) = self.handles.write() {
                    h.entry(key).or_default().push((LabelKey::new(route, method, status), handles.clone()));
                }
                handles
            }
        };
        count.inc();
        latency.observe(seconds);
    }

    /// The OpenMetrics text Prometheus scrapes.
    pub fn render(&self) -> String {
        let mut out = String::new();
        if let Ok(registry) = self.registry.lock() {
            let _ = encode(&mut out, &registry);
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_are_counted_and_timed_by_route_and_status() {
        let info = ServiceInfo { name: "demo", version: "1.2.3", port: 1, health_path: "/healthz" };
        let m = Metrics::new(&info);
        m.observe_request("/v1/jobs", "POST", 201, 0.003);
        m.observe_request("/v1/jobs", "POST", 201, 0.004);
        let text = m.render();
        assert!(text.contains(r#"http_requests_total{route="/v1/jobs",method="POST",status="201"} 2"#), "{text}");
        assert!(text.contains("process_start_time_seconds 1"), "the start time is exposed: {text}");
        assert!(
            text.contains(
                r#"http_request_duration_seconds_bucket{le="0.005",route="/v1/jobs",method="POST",status="201"} 2"#
            ),
            "{text}"
        );
        assert!(text.contains(r#"build_info{service="demo",version="1.2.3",git_sha="#), "{text}");
        assert!(text.contains("http_requests_in_flight 0"), "{text}");
    }
}
