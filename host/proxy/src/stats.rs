//! The proxy's own counters (lock-free, process-wide) and their Prometheus rendering together
//! with the runtime's failure counters and the filter-defined metrics.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use wasmtrace_runtime::Runtime;

use crate::plugins::PluginSlot;
use wasmtrace_runtime::metrics::{HISTOGRAM_BUCKETS, MetricValue};

/// Counters of one listener.
#[derive(Default)]
pub struct ListenerStats {
    /// Requests received.
    pub requests: AtomicU64,
    /// Responses sent, by class: 1xx, 2xx, 3xx, 4xx, 5xx.
    pub responses: [AtomicU64; 5],
    /// Downstream connections open now (all workers).
    pub connections_active: AtomicU64,
    /// Downstream connections accepted.
    pub connections_total: AtomicU64,
    /// Connections closed at accept because the listener was at its connection cap.
    pub connections_overflow: AtomicU64,
    /// Connections closed by a limit, by [`crate::connection::Expiry`]: idle, request headers,
    /// stream idle, max duration.
    pub connection_timeouts: [AtomicU64; 4],
    /// Requests refused for what the client sent, by [`DownstreamError`].
    pub downstream_errors: [AtomicU64; 5],
    /// Upgraded streams (WebSocket and others) tunnelled so far (Envoy's
    /// `downstream_cx_upgrades_total`).
    pub upgrades_total: AtomicU64,
    /// Upgraded streams open now (`downstream_cx_upgrades_active`).
    pub upgrades_active: AtomicU64,
}

/// Why a request was refused before it reached the filters or the upstream.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DownstreamError {
    /// `Host`/`:authority` is not an RFC 3986 host[:port].
    InvalidAuthority,
    /// The request body's framing is broken (a bad chunk size, a short body).
    Framing,
    /// More header bytes or headers than `max_request_headers_kb`/`max_headers_count` allow.
    HeadersTooLarge,
    /// A method the listener does not proxy (`CONNECT`).
    MethodNotAllowed,
    /// An upgrade neither the connection manager nor the route allows (Envoy's
    /// `downstream_rq_ws_on_non_ws_route`).
    UpgradeFailed,
}

impl DownstreamError {
    const ALL: [Self; 5] =
        [Self::InvalidAuthority, Self::Framing, Self::HeadersTooLarge, Self::MethodNotAllowed, Self::UpgradeFailed];

    /// The stats label.
    pub fn label(self) -> &'static str {
        match self {
            Self::InvalidAuthority => "invalid_authority",
            Self::Framing => "framing",
            Self::HeadersTooLarge => "headers_too_large",
            Self::MethodNotAllowed => "method_not_allowed",
            Self::UpgradeFailed => "upgrade_failed",
        }
    }
}

impl ListenerStats {
    /// Counts a request refused for what the client sent.
    pub fn downstream_error(&self, error: DownstreamError) {
        self.downstream_errors[error as usize].fetch_add(1, Ordering::Relaxed);
    }

    /// Counts a connection closed by a limit.
    pub fn connection_timeout(&self, expiry: crate::connection::Expiry) {
        self.connection_timeouts[expiry as usize].fetch_add(1, Ordering::Relaxed);
    }

    /// Counts a response status.
    pub fn response(&self, status: u16) {
        let class = usize::from(status / 100).clamp(1, 5) - 1;
        self.responses[class].fetch_add(1, Ordering::Relaxed);
    }
}

/// Counters of one cluster.
#[derive(Default)]
pub struct ClusterStats {
    /// Requests sent (including callouts).
    pub requests: AtomicU64,
    /// Connections that could not be made.
    pub connect_failures: AtomicU64,
    /// Requests without response headers in time.
    pub timeouts: AtomicU64,
    /// Connections reset before a response.
    pub resets: AtomicU64,
}

impl ClusterStats {
    /// Counts a failure by its kind label.
    pub fn failure(&self, kind: &str) {
        let counter = match kind {
            "connect_failure" => &self.connect_failures,
            "timeout" => &self.timeouts,
            _ => &self.resets,
        };
        counter.fetch_add(1, Ordering::Relaxed);
    }
}

/// Every counter of the proxy, by listener `stat_prefix` and cluster name.
#[derive(Default)]
pub struct ProxyStats {
    /// Per listener (keyed by `stat_prefix`).
    pub listeners: BTreeMap<String, Arc<ListenerStats>>,
    /// Per cluster.
    pub clusters: BTreeMap<String, Arc<ClusterStats>>,
}

/// A Prometheus metric name from a filter-chosen name: invalid characters become `_`.
fn metric_name(name: &str) -> String {
    let mut out: String =
        name.chars().map(|c| if c.is_ascii_alphanumeric() || c == '_' || c == ':' { c } else { '_' }).collect();
    if out.chars().next().is_none_or(|c| c.is_ascii_digit()) {
        out.insert(0, '_');
    }
    out
}

fn label(value: &str) -> String {
    value.replace('\\', "\\\\").replace('"', "\\\"").replace('\n', "\\n")
}

impl ProxyStats {
    /// The Prometheus text exposition of everything.
    pub fn render_prometheus(&self, runtime: &Runtime, slots: &[Arc<PluginSlot>]) -> String {
        let services = runtime.services();
        let mut out = String::new();
        let get = |c: &AtomicU64| c.load(Ordering::Relaxed);
        out.push_str("# TYPE wasmtrace_http_requests_total counter\n");
        for (prefix, s) in &self.listeners {
            let _ =
                writeln!(out, "wasmtrace_http_requests_total{{listener=\"{}\"}} {}", label(prefix), get(&s.requests));
        }
        out.push_str("# TYPE wasmtrace_http_responses_total counter\n");
        for (prefix, s) in &self.listeners {
            for (i, count) in s.responses.iter().enumerate() {
                let _ = writeln!(
                    out,
                    "wasmtrace_http_responses_total{{listener=\"{}\",code_class=\"{}xx\"}} {}",
                    label(prefix),
                    i + 1,
                    get(count)
                );
            }
        }
        render_connections(&mut out, &self.listeners);
        out.push_str("# TYPE wasmtrace_upstream_requests_total counter\n");
        for (name, s) in &self.clusters {
            let _ =
                writeln!(out, "wasmtrace_upstream_requests_total{{cluster=\"{}\"}} {}", label(name), get(&s.requests));
        }
        out.push_str("# TYPE wasmtrace_upstream_errors_total counter\n");
        for (name, s) in &self.clusters {
            for (kind, counter) in
                [("connect_failure", &s.connect_failures), ("timeout", &s.timeouts), ("reset", &s.resets)]
            {
                let _ = writeln!(
                    out,
                    "wasmtrace_upstream_errors_total{{cluster=\"{}\",kind=\"{kind}\"}} {}",
                    label(name),
                    get(counter)
                );
            }
        }
        let failures = services.all_failure_stats();
        out.push_str("# TYPE wasmtrace_wasm_callback_failures_total counter\n");
        for (plugin, stats) in &failures {
            for (callback, count) in &stats.callback_failures {
                let _ = writeln!(
                    out,
                    "wasmtrace_wasm_callback_failures_total{{plugin=\"{}\",callback=\"{callback}\"}} {count}",
                    label(plugin)
                );
            }
        }
        out.push_str("# TYPE wasmtrace_wasm_vm_restarts_total counter\n");
        for (plugin, stats) in &failures {
            let _ =
                writeln!(out, "wasmtrace_wasm_vm_restarts_total{{plugin=\"{}\"}} {}", label(plugin), stats.vm_restarts);
        }
        out.push_str("# TYPE wasmtrace_wasm_filter_state_dropped_total counter\n");
        for (plugin, stats) in &failures {
            let _ = writeln!(
                out,
                "wasmtrace_wasm_filter_state_dropped_total{{plugin=\"{}\"}} {}",
                label(plugin),
                stats.filter_state_dropped
            );
        }
        render_plugin_generations(&mut out, slots);
        // How modules were loaded: a restart with a warm disk cache shows no compilation.
        let loads = runtime.module_load_stats();
        for (name, help, value) in [
            ("wasmtrace_module_compilations_total", "modules compiled from WebAssembly", loads.compiled),
            ("wasmtrace_module_cache_loads_total", "modules loaded from the disk cache", loads.from_disk_cache),
            (
                "wasmtrace_module_cache_rejected_total",
                "disk cache entries refused and recompiled",
                loads.disk_cache_rejected,
            ),
        ] {
            let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} counter\n{name} {value}");
        }
        for metric in services.metrics.all() {
            let name = metric_name(metric.name());
            match metric.value() {
                MetricValue::Counter(v) => {
                    let _ = writeln!(out, "# TYPE {name} counter\n{name} {v}");
                }
                MetricValue::Gauge(v) => {
                    let _ = writeln!(out, "# TYPE {name} gauge\n{name} {v}");
                }
                MetricValue::Histogram(h) => {
                    let _ = writeln!(out, "# TYPE {name} histogram");
                    for (bound, count) in HISTOGRAM_BUCKETS.iter().zip(&h.buckets) {
                        let _ = writeln!(out, "{name}_bucket{{le=\"{bound}\"}} {count}");
                    }
                    let _ = writeln!(
                        out,
                        "{name}_bucket{{le=\"+Inf\"}} {}\n{name}_sum {}\n{name}_count {}",
                        h.count, h.sum, h.count
                    );
                }
            }
        }
        out
    }
}

/// A listener counter's name, Prometheus type and where it lives.
type ListenerSample = (&'static str, &'static str, fn(&ListenerStats) -> &AtomicU64);
/// A listener counter family by kind: its name, the kind labels and the counters in that order.
type ListenerKinds<'a> = (&'static str, &'a [&'static str], fn(&ListenerStats) -> &[AtomicU64]);

/// Downstream connection and refusal counters per listener.
fn render_connections(out: &mut String, listeners: &BTreeMap<String, Arc<ListenerStats>>) {
    use crate::connection::Expiry;
    let samples: [ListenerSample; 5] = [
        ("wasmtrace_downstream_connections", "gauge", |s| &s.connections_active),
        ("wasmtrace_downstream_connections_total", "counter", |s| &s.connections_total),
        ("wasmtrace_downstream_connections_overflow_total", "counter", |s| &s.connections_overflow),
        ("wasmtrace_downstream_upgrades_total", "counter", |s| &s.upgrades_total),
        ("wasmtrace_downstream_upgrades_active", "gauge", |s| &s.upgrades_active),
    ];
    for (name, kind, counter) in samples {
        let _ = writeln!(out, "# TYPE {name} {kind}");
        for (prefix, s) in listeners {
            let _ = writeln!(out, "{name}{{listener=\"{}\"}} {}", label(prefix), counter(s).load(Ordering::Relaxed));
        }
    }
    let timeouts = Expiry::ALL.map(Expiry::label);
    let errors = DownstreamError::ALL.map(DownstreamError::label);
    let by_kind: [ListenerKinds<'_>; 2] = [
        ("wasmtrace_downstream_connection_timeouts_total", &timeouts, |s| &s.connection_timeouts),
        ("wasmtrace_downstream_errors_total", &errors, |s| &s.downstream_errors),
    ];
    for (name, kinds, counters) in by_kind {
        let _ = writeln!(out, "# TYPE {name} counter");
        for (prefix, s) in listeners {
            for (kind, counter) in kinds.iter().zip(counters(s)) {
                let _ = writeln!(
                    out,
                    "{name}{{listener=\"{}\",kind=\"{kind}\"}} {}",
                    label(prefix),
                    counter.load(Ordering::Relaxed)
                );
            }
        }
    }
}

/// Hot-swap metrics: generation, swaps, refusals, drains and VMs per plugin.
fn render_plugin_generations(out: &mut String, slots: &[Arc<PluginSlot>]) {
    let labels = |slot: &PluginSlot| format!("listener=\"{}\",plugin=\"{}\"", label(&slot.listener), label(&slot.name));
    let get = |c: &AtomicU64| c.load(Ordering::Relaxed);
    out.push_str("# TYPE wasmtrace_plugin_generation gauge\n");
    for slot in slots {
        let _ = writeln!(out, "wasmtrace_plugin_generation{{{}}} {}", labels(slot), get(&slot.published));
    }
    out.push_str("# TYPE wasmtrace_plugin_swaps_total counter\n");
    for slot in slots {
        let _ = writeln!(out, "wasmtrace_plugin_swaps_total{{{}}} {}", labels(slot), get(&slot.counters.swaps));
    }
    out.push_str("# TYPE wasmtrace_plugin_swap_refusals_total counter\n");
    for slot in slots {
        let _ =
            writeln!(out, "wasmtrace_plugin_swap_refusals_total{{{}}} {}", labels(slot), get(&slot.counters.refusals));
    }
    out.push_str("# TYPE wasmtrace_plugin_drain_seconds summary\n");
    for slot in slots {
        let l = labels(slot);
        let seconds = get(&slot.counters.drain_micros) as f64 / 1e6;
        let _ = writeln!(out, "wasmtrace_plugin_drain_seconds_sum{{{l}}} {seconds}");
        let _ = writeln!(out, "wasmtrace_plugin_drain_seconds_count{{{l}}} {}", get(&slot.counters.drains));
    }
    out.push_str("# TYPE wasmtrace_plugin_vms gauge\n");
    for slot in slots {
        let generations = slot.generations();
        let draining: usize = generations.replaced.iter().map(|g| g.vms_alive.load(Ordering::Relaxed)).sum();
        let active = generations.active.vms_alive.load(Ordering::Relaxed);
        let l = labels(slot);
        let _ = writeln!(out, "wasmtrace_plugin_vms{{{l},state=\"active\"}} {active}");
        let _ = writeln!(out, "wasmtrace_plugin_vms{{{l},state=\"draining\"}} {draining}");
    }
}
