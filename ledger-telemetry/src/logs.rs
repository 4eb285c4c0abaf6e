//! JSON log lines that carry the trace id of the span they were logged in.
//!
//! `tracing-subscriber`'s own JSON format renders every span's fields to JSON when the span opens,
//! and parses and re-renders them on each `record`, whether or not anything is ever logged in it.
//! With several spans per transfer that was a fifth of the node's HTTP handling. Log lines need
//! only the trace id from their spans, so that is all [`TraceIdField`] keeps.

use serde_json::{Map, Value, json};
use std::fmt;
use tracing::field::{Field, Visit};
use tracing::{Event, Subscriber};
use tracing_subscriber::field::RecordFields;
use tracing_subscriber::fmt::format::Writer;
use tracing_subscriber::fmt::{FmtContext, FormatEvent, FormatFields, FormattedFields};
use tracing_subscriber::registry::LookupSpan;

/// The span field that holds the W3C trace id (32 hex digits).
pub const TRACE_ID_FIELD: &str = "trace_id";

/// Keeps only a span's `trace_id` field, as the bare id.
#[derive(Debug, Default, Clone, Copy)]
pub struct TraceIdField;

impl<'w> FormatFields<'w> for TraceIdField {
    fn format_fields<R: RecordFields>(&self, mut writer: Writer<'w>, fields: R) -> fmt::Result {
        let mut found = TraceId::default();
        fields.record(&mut found);
        match found.0 {
            Some(id) => writer.write_str(&id),
            None => Ok(()),
        }
    }

    fn add_fields(&self, current: &'w mut FormattedFields<Self>, fields: &tracing::span::Record<'_>) -> fmt::Result {
        let mut found = TraceId::default();
        fields.record(&mut found);
        if let Some(id) = found.0 {
            current.fields = id;
        }
        Ok(())
    }
}

#[derive(Default)]
struct TraceId(Option<String>);

impl Visit for TraceId {
    fn record_str(&mut self, field: &Field, value: &str) {
        if field.name() == TRACE_ID_FIELD {
            self.0 = Some(value.to_owned());
        }
    }

    fn record_debug(&mut self, field: &Field, value: &dyn fmt::Debug) {
        if field.name() == TRACE_ID_FIELD {
            self.0 = Some(format!("{value:?}"));
        }
    }
}

/// One JSON object per line: `timestamp`, `level`, `target`, the event's `fields`, and `span`
/// (`name`, `trace_id`) of the innermost enclosing span that has a trace id.
#[derive(Debug, Default, Clone, Copy)]
pub struct JsonLines;

impl<S> FormatEvent<S, TraceIdField> for JsonLines
where
    S: Subscriber + for<'a> LookupSpan<'a>,
{
    fn format_event(
        &self,
        ctx: &FmtContext<'_, S, TraceIdField>,
        mut writer: Writer<'_>,
        event: &Event<'_>,
    ) -> fmt::Result {
        let mut fields = Map::new();
        event.record(&mut JsonFieldMap(&mut fields));
        let meta = event.metadata();
        let mut line = json!({
            "timestamp": chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Micros, true),
            "level": meta.level().as_str(),
            "target": meta.target(),
            "fields": fields,
        });
        if let Some(scope) = ctx.event_scope() {
            for span in scope {
                let extensions = span.extensions();
                let Some(id) = extensions.get::<FormattedFields<TraceIdField>>() else { continue };
                if !id.fields.is_empty() {
                    line["span"] = json!({ "name": span.name(), TRACE_ID_FIELD: id.fields.as_str() });
                    break;
                }
            }
        }
        writeln!(writer, "{line}")
    }
}

struct JsonFieldMap<'a>(&'a mut Map<String, Value>);

impl Visit for JsonFieldMap<'_> {
    fn record_i64(&mut self, field: &Field, value: i64) {
        self.0.insert(field.name().to_owned(), value.into());
    }

    fn record_u64(&mut self, field: &Field, value: u64) {
        self.0.insert(field.name().to_owned(), value.into());
    }

    fn record_f64(&mut self, field: &Field, value: f64) {
        self.0.insert(field.name().to_owned(), value.into());
    }

    fn record_bool(&mut self, field: &Field, value: bool) {
        self.0.insert(field.name().to_owned(), value.into());
    }

    fn record_str(&mut self, field: &Field, value: &str) {
        self.0.insert(field.name().to_owned(), value.into());
    }

    fn record_debug(&mut self, field: &Field, value: &dyn fmt::Debug) {
        self.0.insert(field.name().to_owned(), format!("{value:?}").into());
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::{Arc, Mutex};
    use tracing_subscriber::layer::SubscriberExt;

    #[derive(Clone, Default)]
    struct Captured(Arc<Mutex<Vec<u8>>>);

    impl std::io::Write for Captured {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            self.0.lock().expect("capture lock").extend_from_slice(buf);
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    fn lines(captured: &Captured) -> Vec<Value> {
        let bytes = captured.0.lock().expect("capture lock").clone();
        String::from_utf8(bytes)
            .expect("utf-8 logs")
            .lines()
            .map(|l| serde_json::from_str(l).expect("each log line is one JSON object"))
            .collect()
    }

    #[test]
    fn a_line_logged_in_a_span_carries_the_trace_id_recorded_on_it_or_an_ancestor() {
        let captured = Captured::default();
        let writer = captured.clone();
        let subscriber = tracing_subscriber::registry().with(
            tracing_subscriber::fmt::layer()
                .fmt_fields(TraceIdField)
                .event_format(JsonLines)
                .with_writer(move || writer.clone()),
        );
        tracing::subscriber::with_default(subscriber, || {
            tracing::info!(answer = 42, "outside");
            let request =
                tracing::info_span!("http.request", route = "/v1/transfers", trace_id = tracing::field::Empty);
            request.record(TRACE_ID_FIELD, "4bf92f3577b34da6a3ce929d0e0e4736");
            let _in_request = request.enter();
            let inner = tracing::info_span!("inner", other = 1);
            let _in_inner = inner.enter();
            tracing::warn!(error = "boom", "inside");
        });
        let lines = lines(&captured);
        assert_eq!(lines.len(), 2, "{lines:?}");
        assert_eq!(lines[0]["fields"]["answer"], 42);
        assert_eq!(lines[0]["fields"]["message"], "outside");
        assert!(lines[0].get("span").is_none(), "no span outside: {}", lines[0]);
        assert_eq!(lines[1]["level"], "WARN");
        assert_eq!(lines[1]["fields"]["error"], "boom");
        assert_eq!(lines[1]["span"]["name"], "http.request");
        assert_eq!(lines[1]["span"]["trace_id"], "4bf92f3577b34da6a3ce929d0e0e4736");
    }
}
