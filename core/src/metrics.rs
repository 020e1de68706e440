//! Metrics, rendered in the Prometheus text format.
//!
//! Label values are provider names, configured endpoint paths, event types and status
//! codes: never anything taken from a request body or a secret. Unknown request paths are
//! counted under one `endpoint="other"` so that scanners cannot blow up the label space.
//! Event types come from bodies (VerifyVASP's `callbackType` is open), so the
//! `event_type` label is bounded too ([`Metrics::event_type_label`]): a provider's declared
//! types are kept and any other is `other`; a provider that declared none keeps its first
//! [`MAX_EVENT_TYPES`] types and counts the rest as `other`.

use std::{
    collections::{HashMap, HashSet},
    sync::{Arc, Mutex},
    time::Duration,
};

/// The histogram type of the metrics a backend is handed (see
/// [`Backend::time_flushes`](crate::store::Backend::time_flushes)).
pub use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::{
    encoding::{EncodeLabelSet, text::encode},
    metrics::{counter::Counter, family::Family, gauge::Gauge, histogram::exponential_buckets},
    registry::Registry,
};

/// Labels of an HTTP request.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RequestLabels {
    /// Provider name, `admin`, `system` or `none`.
    pub provider: String,
    /// The configured path of the endpoint, or `other`.
    pub endpoint: String,
    /// Status code answered.
    pub status: u16,
}

/// Labels carrying one provider.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ProviderLabels {
    /// Provider name.
    pub provider: String,
}

/// Labels of a stored event.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct EventLabels {
    /// Provider name.
    pub provider: String,
    /// Event type.
    pub event_type: String,
}

/// Labels of a route run.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RouteLabels {
    /// Provider name.
    pub provider: String,
    /// Event type.
    pub event_type: String,
    /// `routed` or `failed`.
    pub outcome: String,
}

/// Labels of a delivery attempt.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct DeliveryLabels {
    /// Channel.
    pub channel: String,
    /// `sent`, `retry`, `rejected`, `dead`.
    pub outcome: String,
}

/// Labels carrying one channel.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ChannelLabels {
    /// Channel.
    pub channel: String,
}

/// Labels of an authentication failure.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct AuthFailureLabels {
    /// Provider name.
    pub provider: String,
    /// Why: `missing`, `unknown_key`, `bad_signature`, `stale`, `future`, `endpoint`,
    /// `not_configured`, `bad_token`.
    pub reason: String,
}

type HistogramFamily<L> = Family<L, Histogram, fn() -> Histogram>;

/// Event types of one provider that may become labels when it declared none.
pub const MAX_EVENT_TYPES: usize = 32;

/// The label an event type counts under when it is not one a provider declared.
pub const OTHER: &str = "other";

#[derive(Default)]
struct EventTypes {
    /// Types a provider declared: only these are labels.
    declared: HashMap<String, HashSet<String>>,
    /// Types seen of providers that declared none.
    seen: HashMap<String, HashSet<String>>,
}

impl EventTypes {
    fn label(&mut self, provider: &str, event_type: &str) -> String {
        if let Some(known) = self.declared.get(provider) {
            return if known.contains(event_type) {
                event_type.to_owned()
            } else {
                OTHER.to_owned()
            };
        }
        let seen = self.seen.entry(provider.to_owned()).or_default();
        if seen.contains(event_type) {
            return event_type.to_owned();
        }
        if seen.len() < MAX_EVENT_TYPES {
            seen.insert(event_type.to_owned());
            return event_type.to_owned();
        }
        OTHER.to_owned()
    }
}

/// Stored events by provider and (bounded) event type.
pub struct EventCounter {
    family: Family<EventLabels, Counter>,
    types: Arc<Mutex<EventTypes>>,
}

impl EventCounter {
    /// The counter of `labels`, its event type bounded as [`Metrics::event_type_label`]
    /// says.
    pub fn get_or_create(
        &self,
        labels: &EventLabels,
    ) -> impl std::ops::Deref<Target = Counter> + '_ {
        let bounded = EventLabels {
            provider: labels.provider.clone(),
            event_type: label_of(&self.types, &labels.provider, &labels.event_type),
        };
        self.family.get_or_create(&bounded)
    }
}

fn label_of(types: &Mutex<EventTypes>, provider: &str, event_type: &str) -> String {
    types
        .lock()
        .map(|mut t| t.label(provider, event_type))
        .unwrap_or_else(|_| OTHER.to_owned())
}

fn latency_histogram() -> Histogram {
    // 100 µs .. ~3.3 s
    Histogram::new(exponential_buckets(0.0001, 2.0, 16))
}

/// Every metric switchboard keeps.
pub struct Metrics {
    registry: Registry,
    /// HTTP requests answered.
    pub requests: Family<RequestLabels, Counter>,
    /// Time from an authenticated request's arrival at the engine to its answer being
    /// durable.
    pub ingest_seconds: HistogramFamily<ProviderLabels>,
    /// Events stored.
    pub events: EventCounter,
    event_types: Arc<Mutex<EventTypes>>,
    /// Requests answered from an earlier identical request.
    pub duplicates: Family<ProviderLabels, Counter>,
    /// Authenticated bodies that did not match the schema and were quarantined.
    pub quarantined: Family<ProviderLabels, Counter>,
    /// Same key, different body.
    pub conflicts: Family<ProviderLabels, Counter>,
    /// Requests refused for authentication.
    pub auth_failures: Family<AuthFailureLabels, Counter>,
    /// Open client connections.
    pub connections: Gauge,
    /// TLS handshakes that failed or timed out (no certificate, a foreign CA, ...).
    pub tls_failures: Counter,
    /// Route runs.
    pub routes: Family<RouteLabels, Counter>,
    /// Time from a route task taking an event to its run's outcome: the script and its
    /// lookups, and the wait for a run slot and for the earlier runs of its frame.
    pub route_seconds: Histogram,
    /// Delivery attempts by outcome.
    pub deliveries: Family<DeliveryLabels, Counter>,
    /// Time from an event's arrival to the delivery of one of its actions.
    pub delivered_seconds: HistogramFamily<ChannelLabels>,
    /// Time the store took to put commits on disk (see [`Backend::time_flushes`]): what
    /// a durable answer waits for beside the CPU.
    ///
    /// [`Backend::time_flushes`]: crate::store::Backend::time_flushes
    pub store_flush_seconds: Histogram,
}

impl Default for Metrics {
    fn default() -> Self {
        let mut registry = Registry::with_prefix("switchboard");
        let requests = Family::<RequestLabels, Counter>::default();
        registry.register("requests", "HTTP requests answered", requests.clone());
        let ingest_seconds: HistogramFamily<ProviderLabels> =
            Family::new_with_constructor(latency_histogram);
        registry.register(
            "ingest_duration_seconds",
            "Time to authenticate-to-durable answer of ingested notifications",
            ingest_seconds.clone(),
        );
        let events = Family::<EventLabels, Counter>::default();
        registry.register(
            "events_stored",
            "Events stored in the inbox",
            events.clone(),
        );
        let duplicates = Family::<ProviderLabels, Counter>::default();
        registry.register(
            "duplicates",
            "Requests answered from an earlier identical request",
            duplicates.clone(),
        );
        let quarantined = Family::<ProviderLabels, Counter>::default();
        registry.register(
            "quarantined",
            "Authenticated bodies quarantined for not matching the schema",
            quarantined.clone(),
        );
        let conflicts = Family::<ProviderLabels, Counter>::default();
        registry.register(
            "idempotency_conflicts",
            "Requests that reused a key with a different body",
            conflicts.clone(),
        );
        let auth_failures = Family::<AuthFailureLabels, Counter>::default();
        registry.register(
            "auth_failures",
            "Requests refused for authentication",
            auth_failures.clone(),
        );
        let connections = Gauge::default();
        registry.register(
            "open_connections",
            "Open client connections",
            connections.clone(),
        );
        let tls_failures = Counter::default();
        registry.register(
            "tls_handshake_failures",
            "TLS handshakes that failed or timed out",
            tls_failures.clone(),
        );
        let routes = Family::<RouteLabels, Counter>::default();
        registry.register("route_runs", "Route script runs", routes.clone());
        let route_seconds = Histogram::new(exponential_buckets(0.0001, 2.0, 16));
        registry.register(
            "route_duration_seconds",
            "Time from a route task taking an event to its run's outcome (the wait for a run slot and for the earlier runs of its frame included)",
            route_seconds.clone(),
        );
        let deliveries = Family::<DeliveryLabels, Counter>::default();
        registry.register(
            "delivery_attempts",
            "Delivery attempts by outcome",
            deliveries.clone(),
        );
        let delivered_seconds: HistogramFamily<ChannelLabels> =
            Family::new_with_constructor(|| Histogram::new(exponential_buckets(0.001, 2.0, 24)));
        registry.register(
            "delivered_after_seconds",
            "Time from an event's arrival to the delivery of one of its actions",
            delivered_seconds.clone(),
        );
        let store_flush_seconds = Histogram::new(exponential_buckets(0.0001, 2.0, 16));
        registry.register(
            "store_flush_duration_seconds",
            "Time the store took to put commits on disk: each flush of the embedded store (one for every commit that arrived meanwhile), or each COMMIT of an ingest transaction on PostgreSQL",
            store_flush_seconds.clone(),
        );
        let event_types = Arc::new(Mutex::new(EventTypes::default()));
        Metrics {
            registry,
            events: EventCounter {
                family: events,
                types: event_types.clone(),
            },
            event_types,
            routes,
            route_seconds,
            deliveries,
            delivered_seconds,
            requests,
            ingest_seconds,
            duplicates,
            quarantined,
            conflicts,
            auth_failures,
            connections,
            tls_failures,
            store_flush_seconds,
        }
    }
}

impl Metrics {
    /// A fresh, shared set of metrics.
    pub fn shared() -> Arc<Metrics> {
        Arc::new(Metrics::default())
    }

    /// Declares the event types of `provider`: only these become `event_type` labels, any
    /// other counts as `other`.
    pub fn declare_event_types(&self, provider: &str, types: impl IntoIterator<Item = String>) {
        if let Ok(mut t) = self.event_types.lock() {
            t.declared
                .entry(provider.to_owned())
                .or_default()
                .extend(types);
        }
    }

    /// The `event_type` label of an event of `provider`: the type, if declared (or, for a
    /// provider that declared none, among its first [`MAX_EVENT_TYPES`]), else `other`.
    pub fn event_type_label(&self, provider: &str, event_type: &str) -> String {
        label_of(&self.event_types, provider, event_type)
    }

    /// Counts an answered HTTP request.
    pub fn request(&self, provider: &str, endpoint: &str, status: u16) {
        self.requests
            .get_or_create(&RequestLabels {
                provider: provider.to_owned(),
                endpoint: endpoint.to_owned(),
                status,
            })
            .inc();
    }

    /// Counts an authentication failure.
    pub fn auth_failure(&self, provider: &str, reason: &str) {
        self.auth_failures
            .get_or_create(&AuthFailureLabels {
                provider: provider.to_owned(),
                reason: reason.to_owned(),
            })
            .inc();
    }

    pub(crate) fn provider(provider: &str) -> ProviderLabels {
        ProviderLabels {
            provider: provider.to_owned(),
        }
    }

    pub(crate) fn ingest_took(&self, provider: &str, took: Duration) {
        self.ingest_seconds
            .get_or_create(&Self::provider(provider))
            .observe(took.as_secs_f64());
    }

    /// Every metric in the Prometheus text exposition format, version 0.0.4.
    pub fn render(&self) -> String {
        let mut open_metrics = String::new();
        // Writing into a String cannot fail.
        let _ = encode(&mut open_metrics, &self.registry);
        to_prometheus_text(&open_metrics)
    }
}

/// Turns OpenMetrics text (what `prometheus-client` writes) into the Prometheus 0.0.4
/// text format: counters are declared under their `_total` sample name, and the
/// OpenMetrics-only `# UNIT` and `# EOF` lines are dropped.
fn to_prometheus_text(open_metrics: &str) -> String {
    let lines: Vec<&str> = open_metrics.lines().collect();
    let mut out = String::with_capacity(open_metrics.len());
    let mut i = 0;
    while i < lines.len() {
        let line = lines[i];
        if line == "# EOF" || line.starts_with("# UNIT ") {
            i += 1;
            continue;
        }
        if let (Some(help), Some(next)) = (line.strip_prefix("# HELP "), lines.get(i + 1)) {
            if let Some(name) = next
                .strip_prefix("# TYPE ")
                .and_then(|t| t.strip_suffix(" counter"))
            {
                let text = help.strip_prefix(name).unwrap_or(help);
                out.push_str(&format!(
                    "# HELP {name}_total{text}\n# TYPE {name}_total counter\n"
                ));
                i += 2;
                continue;
            }
        }
        out.push_str(line);
        out.push('\n');
        i += 1;
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_prometheus_text() {
        let m = Metrics::default();
        m.request("pomelo", "/pomelo/tokenization/otp", 204);
        m.ingest_took("pomelo", Duration::from_millis(2));
        let text = m.render();
        assert!(text.contains(
            r#"switchboard_requests_total{provider="pomelo",endpoint="/pomelo/tokenization/otp",status="204"} 1"#
        ), "{text}");
        assert!(text.contains("switchboard_ingest_duration_seconds_bucket"));
        assert!(
            text.contains("# TYPE switchboard_requests_total counter\n"),
            "{text}"
        );
        assert!(
            text.contains("# HELP switchboard_requests_total HTTP requests answered.\n"),
            "{text}"
        );
        assert!(
            text.contains("# TYPE switchboard_ingest_duration_seconds histogram\n"),
            "{text}"
        );
        assert!(!text.contains("# EOF"));
    }

    #[test]
    fn event_type_labels_are_bounded() {
        let m = Metrics::default();
        m.declare_event_types("vasp", ["tx_report".to_owned()]);
        let count = |p: &str, t: &str| {
            m.events
                .get_or_create(&EventLabels {
                    provider: p.into(),
                    event_type: t.into(),
                })
                .inc();
        };
        count("vasp", "tx_report");
        for i in 0..100 {
            count("vasp", &format!("made_up_{i}"));
            count("free", &format!("t{i}"));
        }
        let text = m.render();
        assert!(text.contains(r#"event_type="tx_report""#), "{text}");
        assert!(
            text.contains(r#"provider="vasp",event_type="other"} 100"#),
            "{text}"
        );
        assert!(!text.contains("made_up_"), "{text}");
        assert!(text.contains(r#"provider="free",event_type="t31""#));
        assert!(!text.contains(r#"provider="free",event_type="t32""#));
        assert!(
            text.contains(r#"provider="free",event_type="other"} 68"#),
            "{text}"
        );
        assert_eq!(m.event_type_label("vasp", "made_up_1"), OTHER);
    }
}
