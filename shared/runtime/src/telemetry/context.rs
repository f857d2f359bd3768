//! Trace context without an SDK, for when no span is exported.
//!
//! A saga is one trace whether or not anything exports it: every record carries a W3C
//! `traceparent`, the saga log stores it, and log lines carry the trace id. Building OpenTelemetry
//! SDK spans (attributes, events, timestamps) for each message only to drop them costs CPU on
//! every hop, so when export is off [`ContextLayer`] takes the place of `tracing-opentelemetry`: it
//! gives each span a [`SpanContext`] (its parent's trace id, or a new one, and a span id of its
//! own) and nothing else. The functions of [`super`] read and set it the same way as they read
//! and set an OpenTelemetry span's.

use opentelemetry::trace::{SpanContext, TraceContextExt, TraceFlags, TraceState};
use opentelemetry_sdk::trace::{IdGenerator, RandomIdGenerator};
use tracing::span::{Attributes, Id};
use tracing::Subscriber;
use tracing_subscriber::layer::Context;
use tracing_subscriber::registry::LookupSpan;
use tracing_subscriber::Layer;

/// Gives every span a trace context (see the module docs).
pub(crate) struct ContextLayer {
    ids: RandomIdGenerator,
}

impl ContextLayer {
    pub(crate) fn new() -> ContextLayer {
        ContextLayer { ids: RandomIdGenerator::default() }
    }
}

impl<S: Subscriber + for<'a> LookupSpan<'a>> Layer<S> for ContextLayer {
    fn on_new_span(&self, attrs: &Attributes<'_>, id: &Id, ctx: Context<'_, S>) {
        let parent = if attrs.is_root() {
            None
        } else if let Some(parent) = attrs.parent() {
            ctx.span(parent)
        } else {
            ctx.lookup_current()
        };
        let inherited = parent.and_then(|p| p.extensions().get::<SpanContext>().cloned());
        let (trace_id, flags, state) = match inherited {
            Some(p) => (p.trace_id(), p.trace_flags(), p.trace_state().clone()),
            None => (self.ids.new_trace_id(), TraceFlags::SAMPLED, TraceState::default()),
        };
        let own = SpanContext::new(trace_id, self.ids.new_span_id(), flags, false, state);
        if let Some(span) = ctx.span(id) {
            span.extensions_mut().insert(own);
        }
    }
}

/// Runs `f` on the registry's data of `span`; `None` when the layer is not installed (the
/// OpenTelemetry layer is, or nothing) or the span is disabled.
fn with_span<T>(span: &tracing::Span, f: impl FnOnce(tracing_subscriber::registry::SpanRef<'_, tracing_subscriber::Registry>) -> Option<T>) -> Option<T> {
    span.with_subscriber(|(id, dispatch)| f(dispatch.downcast_ref::<tracing_subscriber::Registry>()?.span(id)?)).flatten()
}

/// Makes `span` part of the trace in `remote` (a context extracted from a record): its trace id,
/// flags and state, keeping its own span id. `false` when the layer does not hold the span.
pub(crate) fn set_parent(span: &tracing::Span, remote: &opentelemetry::Context) -> bool {
    let remote = remote.span().span_context().clone();
    with_span(span, |data| {
        let mut extensions = data.extensions_mut();
        let own = extensions.get_mut::<SpanContext>()?;
        if remote.is_valid() {
            *own = SpanContext::new(remote.trace_id(), own.span_id(), remote.trace_flags(), false, remote.trace_state().clone());
        }
        Some(())
    })
    .is_some()
}

/// The context of `span`, as an OpenTelemetry context to inject into headers.
pub(crate) fn context_of(span: &tracing::Span) -> Option<opentelemetry::Context> {
    // Read only: the shared borrow of the span's extensions.
    with_span(span, |data| data.extensions().get::<SpanContext>().map(|own| opentelemetry::Context::new().with_remote_span_context(own.clone())))
}

#[cfg(test)]
mod tests {
    use tracing_subscriber::layer::SubscriberExt;

    use super::super::{headers_of, set_parent_from, trace_id_of};
    use super::ContextLayer;

    fn with_layer(f: impl FnOnce()) {
        opentelemetry::global::set_text_map_propagator(opentelemetry_sdk::propagation::TraceContextPropagator::new());
        let subscriber = tracing_subscriber::registry().with(ContextLayer::new());
        tracing::subscriber::with_default(subscriber, f);
    }

    fn traceparent(span: &tracing::Span) -> String {
        headers_of(span).into_iter().find(|(k, _)| k == "traceparent").map(|(_, v)| v).expect("a traceparent")
    }

    #[test]
    fn a_root_span_starts_a_trace_and_children_share_it_with_ids_of_their_own() {
        with_layer(|| {
            let root = tracing::info_span!("root");
            let child = tracing::info_span!(parent: &root, "child");
            let contextual = root.in_scope(|| tracing::info_span!("contextual"));
            let other = tracing::info_span!(parent: None, "other");
            let (r, c, x, o) = (traceparent(&root), traceparent(&child), traceparent(&contextual), traceparent(&other));
            let parts = |tp: &str| tp.split('-').map(str::to_string).collect::<Vec<_>>();
            assert_eq!(parts(&r).len(), 4, "{r}");
            assert_eq!((parts(&r)[0].as_str(), parts(&r)[3].as_str()), ("00", "01"), "version 00, sampled: {r}");
            assert_eq!(parts(&c)[1], parts(&r)[1], "the child is in the root's trace");
            assert_eq!(parts(&x)[1], parts(&r)[1], "so is a span made inside the root");
            assert_ne!(parts(&c)[2], parts(&r)[2], "each span has an id of its own");
            assert_ne!(parts(&o)[1], parts(&r)[1], "a span with no parent starts another trace");
            assert_eq!(trace_id_of(&root).as_deref(), Some(parts(&r)[1].as_str()));
        });
    }

    #[test]
    fn a_span_joins_the_trace_its_record_carried_and_passes_it_on() {
        with_layer(|| {
            let carried = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
            let span = tracing::info_span!("process");
            set_parent_from(&span, &[("traceparent".into(), carried.into()), ("tracestate".into(), "vendor=x".into())]);
            let child = tracing::info_span!(parent: &span, "handle");
            let headers = headers_of(&child);
            let tp = headers.iter().find(|(k, _)| k == "traceparent").map(|(_, v)| v.clone()).expect("traceparent");
            assert!(tp.starts_with("00-4bf92f3577b34da6a3ce929d0e0e4736-"), "{tp}");
            assert!(!tp.contains("00f067aa0ba902b7"), "the span id is the child's own: {tp}");
            assert!(headers.contains(&("tracestate".into(), "vendor=x".into())), "{headers:?}");
            assert_eq!(trace_id_of(&span).as_deref(), Some("4bf92f3577b34da6a3ce929d0e0e4736"));
        });
    }

    #[test]
    fn a_malformed_traceparent_leaves_the_span_in_its_own_trace() {
        with_layer(|| {
            let span = tracing::info_span!("process");
            let before = trace_id_of(&span).expect("a trace id");
            set_parent_from(&span, &[("traceparent".into(), "not-a-traceparent".into())]);
            assert_eq!(trace_id_of(&span), Some(before));
        });
    }

    #[test]
    fn without_a_layer_there_is_no_trace_context() {
        let span = tracing::info_span!("alone");
        assert!(headers_of(&span).is_empty());
        assert_eq!(trace_id_of(&span), None);
    }
}
