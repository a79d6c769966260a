//! Prometheus metrics: request count and latency by route, method and status; requests in
//! flight; build info. Services register their own metrics on the same registry.

use std::sync::{Arc, Mutex};

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

#[derive(Clone)]
pub struct Metrics {
    registry: Arc<Mutex<Registry>>,
    pub requests: Family<Labels, Counter>,
    pub latency: Family<Labels, Histogram, fn() -> Histogram>,
    pub in_flight: Gauge,
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
        registry.register("build_info", "The running build: service, version and git commit", build_info);
        Metrics { registry: Arc::new(Mutex::new(registry)), requests, latency, in_flight }
    }

    /// Add a service-specific metric (call before serving).
    pub fn register(&self, name: &str, help: &str, metric: impl Metric) {
        if let Ok(mut registry) = self.registry.lock() {
            registry.register(name, help, metric);
        }
    }

    pub fn observe_request(&self, route: &str, method: &str, status: u16, seconds: f64) {
        let labels: Labels = vec![
            ("route".into(), route.into()),
            ("method".into(), method.into()),
            ("status".into(), status.to_string()),
        ];
        self.requests.get_or_create(&labels).inc();
        self.latency.get_or_create(&labels).observe(seconds);
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
