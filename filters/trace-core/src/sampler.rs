//! Head sampling: always on/off, a ratio by trace id, and parent-based.

use crate::{SpanContext, TraceId};

/// A sampling policy.
#[derive(Clone, Debug, PartialEq)]
pub enum Sampler {
    /// Record every trace.
    AlwaysOn,
    /// Record no trace.
    AlwaysOff,
    /// Record a fraction of traces, decided by the trace id so every hop agrees.
    Ratio(f64),
    /// Follow the parent's decision; use `root` when there is no parent or no decision.
    ParentBased(Box<Sampler>),
}

impl Sampler {
    /// Decides whether the span for `trace_id` with `parent` is recorded.
    pub fn should_sample(&self, parent: Option<&SpanContext>, trace_id: &TraceId) -> bool {
        match self {
            Self::AlwaysOn => true,
            Self::AlwaysOff => false,
            Self::Ratio(ratio) => {
                if *ratio >= 1.0 {
                    return true;
                }
                if *ratio <= 0.0 {
                    return false;
                }
                // The right-most 7 bytes are random (W3C Level 2), so compare 56 bits.
                let threshold = (ratio * (1u64 << 56) as f64) as u64;
                (trace_id.low_u64() & ((1u64 << 56) - 1)) < threshold
            }
            Self::ParentBased(root) => match parent.and_then(|p| p.sampled) {
                Some(decision) => decision,
                None => root.should_sample(None, trace_id),
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::SpanId;

    #[test]
    fn ratio_sampling_keeps_about_the_ratio_and_agrees_across_hops() {
        let sampler = Sampler::Ratio(0.25);
        let ids: Vec<TraceId> = (0..4000).map(|_| TraceId::random()).collect();
        let kept = ids.iter().filter(|id| sampler.should_sample(None, id)).count();
        assert!((800..1200).contains(&kept), "kept {kept} of 4000 at 25 %");
        for id in &ids[..50] {
            assert_eq!(sampler.should_sample(None, id), sampler.should_sample(None, id));
        }
    }

    #[test]
    fn parent_based_follows_the_parent_and_falls_back_to_the_root() {
        let sampler = Sampler::ParentBased(Box::new(Sampler::AlwaysOff));
        let trace_id = TraceId::random();
        let parent =
            |sampled| SpanContext { trace_id, span_id: SpanId::random(), sampled, random: true, tracestate: vec![] };
        assert!(sampler.should_sample(Some(&parent(Some(true))), &trace_id));
        assert!(!sampler.should_sample(Some(&parent(Some(false))), &trace_id));
        assert!(!sampler.should_sample(Some(&parent(None)), &trace_id), "deferred: the root decides");
        assert!(!sampler.should_sample(None, &trace_id));
    }
}
