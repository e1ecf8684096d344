//! W3C Trace Context Level 2 for the OpenTelemetry SDK, over `wasmtrace-trace-core`'s parser:
//! the same processing model as the sidecar's trace filter, so a gallery service run alone
//! passes the same W3C test-suite cases as one behind a sidecar.
//!
//! [`W3cPropagator`] is an OpenTelemetry [`TextMapPropagator`]. It extracts with
//! [`w3c::parse_traceparent`] (all `traceparent` values: more than one is invalid; future
//! versions read by their first four fields; any invalid one restarts the trace and discards
//! `tracestate`) and [`w3c::parse_tracestate`] (all `tracestate` values combined in order, a
//! repeated key keeping its first value, the whole list dropped when a member is invalid or
//! there are more than 32), and injects with [`w3c::format_traceparent`] and
//! [`w3c::normalize_tracestate`]. It needs every value of a repeated header, which
//! [`HeaderValues`] hands over (opentelemetry-http's `HeaderExtractor` leaves out values that are
//! not visible ASCII, which would let a second, garbled `traceparent` pass for none).
//!
//! Two things the SDK's span context cannot hold travel next to it in the [`Context`] (so every
//! span made under the extracted context finds them):
//!
//! - a `tracestate` that OpenTelemetry's `TraceState` refuses (Level 2 keys such as `foo@@bar`,
//!   or a vendor part longer than 13 characters), sent on as received;
//! - the Level 2 `random` flag, which the SDK drops from a span it does not sample, and which a
//!   trace this service starts has (the SDK's default id generator makes random ids).

use http::{HeaderMap, HeaderValue};
use opentelemetry::Context;
use opentelemetry::propagation::text_map_propagator::FieldIter;
use opentelemetry::propagation::{Extractor, Injector, TextMapPropagator};
use opentelemetry::trace::{SpanContext, SpanId, TraceContextExt, TraceFlags, TraceId, TraceState};
use wasmtrace_trace_core::w3c;

/// The `traceparent` header.
pub const TRACEPARENT: &str = "traceparent";
/// The `tracestate` header.
pub const TRACESTATE: &str = "tracestate";

/// The flags passed on: `sampled` and Level 2 `random`; unknown flags are dropped, as the
/// specification asks.
const KNOWN_FLAGS: u8 = w3c::FLAG_SAMPLED | w3c::FLAG_RANDOM;

/// W3C `traceparent`/`tracestate` propagation with `wasmtrace-trace-core`'s parser (see the
/// module documentation for what it does that the SDK's `TraceContextPropagator` does not).
#[derive(Clone, Debug)]
pub struct W3cPropagator {
    fields: [String; 2],
}

impl W3cPropagator {
    /// The propagator.
    pub fn new() -> Self {
        Self { fields: [TRACEPARENT.to_owned(), TRACESTATE.to_owned()] }
    }
}

impl Default for W3cPropagator {
    fn default() -> Self {
        Self::new()
    }
}

/// What extraction learned that the SDK's span context cannot carry.
#[derive(Clone, Debug, PartialEq, Eq)]
enum Received {
    /// A valid `traceparent`.
    Parent {
        /// Its trace: what follows applies only to spans of this trace.
        trace_id: TraceId,
        /// Its `random` flag.
        random: bool,
        /// Its `tracestate`, normalised, when OpenTelemetry's `TraceState` refused it.
        tracestate: Option<String>,
    },
    /// No valid `traceparent`: spans under the context start a trace of their own, with
    /// random ids.
    NewTrace,
}

// === impl W3cPropagator ===

impl TextMapPropagator for W3cPropagator {
    fn inject_context(&self, cx: &Context, injector: &mut dyn Injector) {
        let Some(traceparent) = traceparent(cx) else { return };
        injector.set(TRACEPARENT, traceparent);
        if let Some(tracestate) = tracestate(cx) {
            injector.set(TRACESTATE, tracestate);
        }
    }

    fn extract_with_context(&self, cx: &Context, extractor: &dyn Extractor) -> Context {
        let traceparent = extractor.get_all(TRACEPARENT).unwrap_or_default();
        let Some((trace_id, span_id, flags)) = w3c::parse_traceparent(&traceparent) else {
            // The trace restarts — unless `cx` already has a span, which stays the parent.
            if cx.span().span_context().is_valid() {
                return cx.clone();
            }
            return cx.with_value(Received::NewTrace);
        };
        let tracestate = extractor.get_all(TRACESTATE).unwrap_or_default();
        // An invalid tracestate is dropped whole; the trace still continues.
        let members = w3c::parse_tracestate(&tracestate).unwrap_or_default();
        let (trace_state, refused) = match TraceState::from_key_value(members.iter().map(|(k, v)| (k, v))) {
            Ok(state) => (state, None),
            Err(_) => (TraceState::NONE, w3c::format_tracestate(&members)),
        };
        let trace_id = TraceId::from_bytes(trace_id.0);
        let span_context = SpanContext::new(
            trace_id,
            SpanId::from_bytes(span_id.0),
            TraceFlags::new(flags & KNOWN_FLAGS),
            true,
            trace_state,
        );
        cx.with_remote_span_context(span_context).with_value(Received::Parent {
            trace_id,
            random: flags & w3c::FLAG_RANDOM != 0,
            tracestate: refused,
        })
    }

    fn fields(&self) -> FieldIter<'_> {
        FieldIter::new(&self.fields)
    }
}

/// The `traceparent` (version 00) of the span in `cx`, `None` when it has no valid span: what
/// [`W3cPropagator`] injects, and what a service answers with in `traceresponse`.
pub fn traceparent(cx: &Context) -> Option<String> {
    let span = cx.span();
    let context = span.span_context();
    if !context.is_valid() {
        return None;
    }
    let random = context.trace_flags().to_u8() & w3c::FLAG_RANDOM != 0
        || match cx.get::<Received>() {
            Some(Received::Parent { trace_id, random, .. }) => *trace_id == context.trace_id() && *random,
            // A span of a trace this service started: the SDK drew its ids at random.
            Some(Received::NewTrace) => !context.is_remote(),
            None => false,
        };
    Some(w3c::format_traceparent(
        &wasmtrace_trace_core::TraceId(context.trace_id().to_bytes()),
        &wasmtrace_trace_core::SpanId(context.span_id().to_bytes()),
        context.is_sampled(),
        random,
    ))
}

/// The `tracestate` to send with the span in `cx`: the span's own (as the SDK holds it, with
/// what a sampler changed first) followed by the received one OpenTelemetry could not hold;
/// `None` when there is nothing to send or the result is not valid W3C (never sent half-valid).
fn tracestate(cx: &Context) -> Option<String> {
    let span = cx.span();
    let context = span.span_context();
    let own = context.trace_state().header();
    let received = match cx.get::<Received>() {
        Some(Received::Parent { trace_id, tracestate: Some(tracestate), .. }) if *trace_id == context.trace_id() => {
            tracestate.as_str()
        }
        _ => "",
    };
    let mut out = String::new();
    let valid = w3c::normalize_tracestate([own.as_str(), received], &mut out);
    (valid && !out.is_empty()).then_some(out)
}

/// The headers of a request, for extraction: every value of a repeated header, in order, as
/// W3C Trace Context needs (multiple `tracestate` headers are combined, multiple `traceparent`
/// headers are invalid). A value that is not UTF-8 reads as `U+FFFD`, which no trace header
/// grammar accepts, so it still counts (and invalidates) instead of vanishing.
#[derive(Clone, Copy, Debug)]
pub struct HeaderValues<'a>(pub &'a HeaderMap);

/// How a header value that is not UTF-8 reads.
const UNREADABLE: &str = "\u{fffd}";

fn text(value: &HeaderValue) -> &str {
    std::str::from_utf8(value.as_bytes()).unwrap_or(UNREADABLE)
}

// === impl HeaderValues ===

impl Extractor for HeaderValues<'_> {
    fn get(&self, key: &str) -> Option<&str> {
        self.0.get(key).map(text)
    }

    fn keys(&self) -> Vec<&str> {
        self.0.keys().map(http::HeaderName::as_str).collect()
    }

    fn get_all(&self, key: &str) -> Option<Vec<&str>> {
        let values: Vec<&str> = self.0.get_all(key).iter().map(text).collect();
        (!values.is_empty()).then_some(values)
    }
}

#[cfg(test)]
mod tests;
