//! The log's formats: the JSON line a pipeline can read (one flat object per event), and
//! a faster field formatter for the text format.
//!
//! tracing-subscriber's JSON format nests the event's fields under `fields` and the call's
//! request id under `span`/`spans`, so a collector has to know our span layout to find
//! them. Here every line is one object with `timestamp`, `level`, `target`, the fields of
//! every span the event is in (root first: the `rpc` span gives `method` and
//! `request_id`), then the event's own fields (`message` among them), a later one winning
//! a name clash. The start-up settings (`config`) are a nested object.

use serde_json::{Map, Value};
use std::fmt::{self, Write as _};
use tracing::field::{Field, Visit};
use tracing::{Event, Subscriber};
use tracing_subscriber::field::RecordFields;
use tracing_subscriber::fmt::format::{JsonFields, Writer};
use tracing_subscriber::fmt::{FmtContext, FormatEvent, FormatFields, FormattedFields};
use tracing_subscriber::registry::LookupSpan;

/// The text format's fields: the same `name=value` text as tracing-subscriber's
/// `DefaultFields`, written without `core::fmt` for strings, integers and booleans. Every
/// call's span and every decision-log event pass through here, and `DefaultFields` spent
/// about a thousand instructions per field on `write!` (BENCHMARKS.md).
#[derive(Debug, Clone, Copy, Default)]
pub struct TextFields;

impl<'w> FormatFields<'w> for TextFields {
    fn format_fields<R: RecordFields>(&self, mut writer: Writer<'w>, fields: R) -> fmt::Result {
        // Built in one buffer and handed to the writer once: each write to it is a
        // dynamic call that also checks for escape sequences.
        let mut visitor = TextVisitor {
            out: String::with_capacity(256),
            result: Ok(()),
        };
        fields.record(&mut visitor);
        visitor.result?;
        writer.write_str(&visitor.out)
    }
}

struct TextVisitor {
    out: String,
    result: fmt::Result,
}

impl TextVisitor {
    /// Starts a field: ` name=` (no space before the first).
    fn name(&mut self, name: &str) {
        if !self.out.is_empty() {
            self.out.push(' ');
        }
        self.out.push_str(name);
        self.out.push('=');
    }
}

/// A string Debug would print as it is, between quotes.
fn plain(s: &str) -> bool {
    s.bytes()
        .all(|b| (0x20..0x7f).contains(&b) && b != b'"' && b != b'\\')
}

fn decimal(out: &mut String, mut n: u64) {
    let mut digits = [0u8; 20];
    let mut at = digits.len();
    loop {
        at -= 1;
        digits[at] = b'0' + (n % 10) as u8;
        n /= 10;
        if n == 0 {
            break;
        }
    }
    out.extend(digits[at..].iter().map(|d| char::from(*d)));
}

impl Visit for TextVisitor {
    fn record_str(&mut self, field: &Field, value: &str) {
        if field.name() == "message" {
            return self.record_debug(field, &format_args!("{value}"));
        }
        self.name(field.name());
        if plain(value) {
            self.out.push('"');
            self.out.push_str(value);
            self.out.push('"');
        } else if self.result.is_ok() {
            self.result = write!(self.out, "{value:?}");
        }
    }

    fn record_u64(&mut self, field: &Field, value: u64) {
        self.name(field.name());
        decimal(&mut self.out, value);
    }

    fn record_i64(&mut self, field: &Field, value: i64) {
        self.name(field.name());
        if value < 0 {
            self.out.push('-');
        }
        decimal(&mut self.out, value.unsigned_abs());
    }

    fn record_bool(&mut self, field: &Field, value: bool) {
        self.name(field.name());
        self.out.push_str(if value { "true" } else { "false" });
    }

    fn record_debug(&mut self, field: &Field, value: &dyn fmt::Debug) {
        if self.result.is_err() {
            return;
        }
        if field.name() == "message" {
            // As tracing-subscriber does: no terminal escape sequence from a message.
            let text = format!("{value:?}").replace('\u{1b}', "\\x1b");
            if !self.out.is_empty() {
                self.out.push(' ');
            }
            self.out.push_str(&text);
            return;
        }
        self.name(field.name());
        self.result = write!(self.out, "{value:?}");
    }
}

/// The event format of `--log-format json`; use with [`JsonFields`] as the field format.
#[derive(Debug, Clone, Copy, Default)]
pub struct FlatJson;

impl<S> FormatEvent<S, JsonFields> for FlatJson
where
    S: Subscriber + for<'a> LookupSpan<'a>,
{
    fn format_event(
        &self,
        ctx: &FmtContext<'_, S, JsonFields>,
        mut writer: Writer<'_>,
        event: &Event<'_>,
    ) -> fmt::Result {
        let meta = event.metadata();
        let mut line = Map::new();
        let now = humantime::format_rfc3339_micros(std::time::SystemTime::now());
        line.insert("timestamp".into(), now.to_string().into());
        line.insert("level".into(), meta.level().as_str().into());
        line.insert("target".into(), meta.target().into());
        if let Some(scope) = ctx.event_scope() {
            for span in scope.from_root() {
                let extensions = span.extensions();
                let Some(fields) = extensions.get::<FormattedFields<JsonFields>>() else {
                    continue;
                };
                if let Ok(Value::Object(fields)) = serde_json::from_str(fields.as_str()) {
                    line.extend(fields);
                }
            }
        }
        event.record(&mut Fields(&mut line));
        writeln!(writer, "{}", Value::Object(line))
    }
}

/// Records an event's fields into the line.
struct Fields<'a>(&'a mut Map<String, Value>);

impl Visit for Fields<'_> {
    fn record_str(&mut self, field: &Field, value: &str) {
        self.0.insert(field.name().into(), value.into());
    }

    fn record_i64(&mut self, field: &Field, value: i64) {
        self.0.insert(field.name().into(), value.into());
    }

    fn record_u64(&mut self, field: &Field, value: u64) {
        self.0.insert(field.name().into(), value.into());
    }

    fn record_bool(&mut self, field: &Field, value: bool) {
        self.0.insert(field.name().into(), value.into());
    }

    fn record_f64(&mut self, field: &Field, value: f64) {
        self.0.insert(field.name().into(), value.into());
    }

    fn record_debug(&mut self, field: &Field, value: &dyn fmt::Debug) {
        let text = format!("{value:?}");
        // The start-up settings arrive as one JSON object: kept an object, not a string.
        if field.name() == "config"
            && let Ok(object @ Value::Object(_)) = serde_json::from_str(&text)
        {
            self.0.insert("config".into(), object);
            return;
        }
        self.0.insert(field.name().into(), text.into());
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::{Arc, Mutex};
    use tracing_subscriber::fmt::MakeWriter;

    #[derive(Clone, Default)]
    struct Captured(Arc<Mutex<Vec<u8>>>);

    impl std::io::Write for Captured {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(buf);
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    impl<'a> MakeWriter<'a> for Captured {
        type Writer = Captured;
        fn make_writer(&'a self) -> Captured {
            self.clone()
        }
    }

    /// Exactly what tracing-subscriber's default field formatter writes.
    #[test]
    fn text_fields_write_what_the_default_formatter_writes() {
        let emit = || {
            let span = tracing::info_span!("rpc", method = "Decide", request_id = "r-1");
            let _in = span.enter();
            tracing::info!(
                tenant = "acme",
                quoted = "say \"hi\"\tnow",
                revision = 7u64,
                delta = -3i64,
                ok = false,
                shown = %"a b",
                debugged = ?Some(1),
                "saved {} tools",
                2
            );
            tracing::warn!("no fields");
        };
        let run = |fast: bool| {
            let out = Captured::default();
            let builder = tracing_subscriber::fmt()
                .without_time()
                .with_ansi(false)
                .with_writer(out.clone());
            if fast {
                tracing::subscriber::with_default(builder.fmt_fields(TextFields).finish(), emit);
            } else {
                tracing::subscriber::with_default(builder.finish(), emit);
            }
            String::from_utf8(out.0.lock().unwrap().clone()).unwrap()
        };
        let (fast, default) = (run(true), run(false));
        assert_eq!(fast, default);
        assert!(
            fast.contains(r#"rpc{method="Decide" request_id="r-1"}"#),
            "{fast}"
        );
        assert!(fast.contains("revision=7 delta=-3 ok=false"), "{fast}");
    }

    #[test]
    fn a_line_is_one_flat_object_with_the_span_fields_at_the_top() {
        let out = Captured::default();
        let subscriber = tracing_subscriber::fmt()
            .fmt_fields(JsonFields::new())
            .event_format(FlatJson)
            .with_writer(out.clone())
            .finish();
        tracing::subscriber::with_default(subscriber, || {
            let span = tracing::info_span!("rpc", method = "Decide", request_id = "r-1");
            let _in = span.enter();
            tracing::info!(tenant = "acme", revision = 7u64, ok = true, shown = %"a b", "saved");
        });
        let text = String::from_utf8(out.0.lock().unwrap().clone()).unwrap();
        assert_eq!(text.lines().count(), 1, "{text}");
        let line: Value = serde_json::from_str(text.trim()).expect("one JSON object");
        assert_eq!(line["level"], "INFO");
        assert_eq!(line["message"], "saved");
        assert_eq!(line["request_id"], "r-1");
        assert_eq!(line["method"], "Decide");
        assert_eq!(line["tenant"], "acme");
        assert_eq!(line["revision"], 7);
        assert_eq!(line["ok"], true);
        assert_eq!(line["shown"], "a b");
        assert!(line.get("fields").is_none() && line.get("span").is_none());
        let stamp = line["timestamp"].as_str().unwrap();
        assert!(humantime::parse_rfc3339(stamp).is_ok(), "{stamp}");
    }
}
