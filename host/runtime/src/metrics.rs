//! Filter-defined metrics (`proxy_define_metric` and friends), process-wide and exposed by name.
//!
//! Semantics follow Envoy: a counter's `record` adds and its `increment` must be positive; a gauge's
//! `record` sets and `increment` adds (negative allowed); a histogram's `record` records a sample.
//! Defining the same name twice gives the same metric, so every worker's VM clone feeds one value.

use std::collections::HashMap;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};

use crate::abi::types::MetricType;

/// Upper bounds of the histogram buckets (Envoy's default supported buckets, in the unit of the
/// recorded values).
pub const HISTOGRAM_BUCKETS: [f64; 19] = [
    0.5, 1.0, 5.0, 10.0, 25.0, 50.0, 100.0, 250.0, 500.0, 1000.0, 2500.0, 5000.0, 10000.0, 30000.0, 60000.0, 300000.0,
    600000.0, 1800000.0, 3600000.0,
];

/// A histogram's state.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct HistogramSnapshot {
    /// Samples recorded.
    pub count: u64,
    /// Sum of the samples.
    pub sum: f64,
    /// Cumulative counts per bound of [`HISTOGRAM_BUCKETS`].
    pub buckets: Vec<u64>,
}

/// One metric's current value.
#[derive(Clone, Debug, PartialEq)]
pub enum MetricValue {
    /// A counter's total.
    Counter(u64),
    /// A gauge's value.
    Gauge(i64),
    /// A histogram's samples.
    Histogram(HistogramSnapshot),
}

/// A metric as stored: its name and value cell.
#[derive(Debug)]
pub struct Metric {
    name: String,
    cell: MetricCell,
}

#[derive(Debug)]
enum MetricCell {
    Counter(AtomicU64),
    Gauge(AtomicI64),
    Histogram(Mutex<HistogramSnapshot>),
}

/// Why a metric call was refused (the guest sees `BAD_ARGUMENT`).
#[derive(Debug, PartialEq, Eq)]
pub enum MetricError {
    /// A counter was incremented by zero or less.
    NonPositiveCounterDelta,
    /// The operation does not apply to this metric type.
    WrongType,
    /// The name is already defined with another type.
    TypeConflict,
}

impl Metric {
    /// The name the filter gave it.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The metric's type.
    pub fn metric_type(&self) -> MetricType {
        match self.cell {
            MetricCell::Counter(_) => MetricType::Counter,
            MetricCell::Gauge(_) => MetricType::Gauge,
            MetricCell::Histogram(_) => MetricType::Histogram,
        }
    }

    /// `proxy_increment_metric`.
    pub fn increment(&self, delta: i64) -> Result<(), MetricError> {
        match &self.cell {
            MetricCell::Counter(c) => {
                let delta = u64::try_from(delta).ok().filter(|d| *d > 0).ok_or(MetricError::NonPositiveCounterDelta)?;
                c.fetch_add(delta, Ordering::Relaxed);
            }
            MetricCell::Gauge(g) => {
                g.fetch_add(delta, Ordering::Relaxed);
            }
            MetricCell::Histogram(_) => return Err(MetricError::WrongType),
        }
        Ok(())
    }

    /// `proxy_record_metric`.
    pub fn record(&self, value: u64) {
        match &self.cell {
            MetricCell::Counter(c) => {
                c.fetch_add(value, Ordering::Relaxed);
            }
            MetricCell::Gauge(g) => g.store(i64::try_from(value).unwrap_or(i64::MAX), Ordering::Relaxed),
            MetricCell::Histogram(h) => {
                let mut h = h.lock().unwrap_or_else(|p| p.into_inner());
                #[allow(clippy::cast_precision_loss, reason = "histogram samples are approximate by nature")]
                let sample = value as f64;
                h.count += 1;
                h.sum += sample;
                for (bucket, bound) in h.buckets.iter_mut().zip(HISTOGRAM_BUCKETS) {
                    if sample <= bound {
                        *bucket += 1;
                    }
                }
            }
        }
    }

    /// `proxy_get_metric`: counters and gauges only.
    pub fn get(&self) -> Result<u64, MetricError> {
        match &self.cell {
            MetricCell::Counter(c) => Ok(c.load(Ordering::Relaxed)),
            // The ABI returns a u64; a negative gauge comes back as its two's complement, as in Envoy.
            MetricCell::Gauge(g) => Ok(g.load(Ordering::Relaxed).cast_unsigned()),
            MetricCell::Histogram(_) => Err(MetricError::WrongType),
        }
    }

    /// The current value.
    pub fn value(&self) -> MetricValue {
        match &self.cell {
            MetricCell::Counter(c) => MetricValue::Counter(c.load(Ordering::Relaxed)),
            MetricCell::Gauge(g) => MetricValue::Gauge(g.load(Ordering::Relaxed)),
            MetricCell::Histogram(h) => MetricValue::Histogram(h.lock().unwrap_or_else(|p| p.into_inner()).clone()),
        }
    }
}

/// All filter-defined metrics of the process.
#[derive(Default)]
pub struct MetricRegistry {
    by_name: Mutex<HashMap<String, u32>>,
    by_id: RwLock<Vec<Arc<Metric>>>,
}

impl MetricRegistry {
    /// `proxy_define_metric`: returns the id of `name`, creating it on first use.
    pub fn define(&self, metric_type: MetricType, name: &str) -> Result<u32, MetricError> {
        let mut by_name = self.by_name.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(&id) = by_name.get(name) {
            let existing = self.get(id).ok_or(MetricError::WrongType)?;
            return if existing.metric_type() == metric_type { Ok(id) } else { Err(MetricError::TypeConflict) };
        }
        let cell = match metric_type {
            MetricType::Counter => MetricCell::Counter(AtomicU64::new(0)),
            MetricType::Gauge => MetricCell::Gauge(AtomicI64::new(0)),
            MetricType::Histogram => MetricCell::Histogram(Mutex::new(HistogramSnapshot {
                buckets: vec![0; HISTOGRAM_BUCKETS.len()],
                ..HistogramSnapshot::default()
            })),
        };
        let mut by_id = self.by_id.write().unwrap_or_else(|p| p.into_inner());
        let id = u32::try_from(by_id.len()).map_err(|_| MetricError::WrongType)?;
        by_id.push(Arc::new(Metric { name: name.to_owned(), cell }));
        by_name.insert(name.to_owned(), id);
        Ok(id)
    }

    /// The metric with `id`.
    pub fn get(&self, id: u32) -> Option<Arc<Metric>> {
        self.by_id.read().unwrap_or_else(|p| p.into_inner()).get(id as usize).cloned()
    }

    /// The metric named `name`.
    pub fn by_name(&self, name: &str) -> Option<Arc<Metric>> {
        let id = *self.by_name.lock().unwrap_or_else(|p| p.into_inner()).get(name)?;
        self.get(id)
    }

    /// Every metric, in definition order.
    pub fn all(&self) -> Vec<Arc<Metric>> {
        self.by_id.read().unwrap_or_else(|p| p.into_inner()).clone()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn metric_kinds_behave_like_envoy() {
        let registry = MetricRegistry::default();
        let c = registry.define(MetricType::Counter, "requests").expect("define");
        assert_eq!(registry.define(MetricType::Counter, "requests"), Ok(c));
        assert_eq!(registry.define(MetricType::Gauge, "requests"), Err(MetricError::TypeConflict));
        let counter = registry.get(c).expect("exists");
        counter.increment(2).expect("positive");
        assert_eq!(counter.increment(0), Err(MetricError::NonPositiveCounterDelta));
        counter.record(3);
        assert_eq!(counter.get(), Ok(5));

        let gauge = registry.get(registry.define(MetricType::Gauge, "depth").expect("define")).expect("exists");
        gauge.record(10);
        gauge.increment(-4).expect("gauges go down");
        assert_eq!(gauge.value(), MetricValue::Gauge(6));

        let hist = registry.get(registry.define(MetricType::Histogram, "size").expect("define")).expect("exists");
        hist.record(7);
        hist.record(700);
        let MetricValue::Histogram(h) = hist.value() else { panic!("histogram") };
        assert_eq!((h.count, h.sum), (2, 707.0));
        assert_eq!(h.buckets[3], 1, "7 <= 10");
        assert_eq!(hist.get(), Err(MetricError::WrongType));
    }
}
