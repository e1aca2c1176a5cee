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

/// A string Debug would print as it is, between quotes. Every byte is looked at, without
/// stopping at the first that is not plain, so the loop runs many bytes per instruction.
fn plain(s: &str) -> bool {
    !s.bytes().fold(false, |odd, b| {
        odd | !(0x20..0x7f).contains(&b) | (b == b'"') | (b == b'\\')
    })
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
            if !self.out.is_empty() {
                self.out.push(' ');
            }
            let start = self.out.len();
            self.result = write!(self.out, "{value:?}");
            // As tracing-subscriber does: no terminal escape sequence from a message.
            if self.out[start..].contains('\u{1b}') {
                let text = self.out.split_off(start).replace('\u{1b}', "\\x1b");
                self.out.push_str(&text);
            }
            return;
        }
        self.name(field.name());
        self.result = write!(self.out, "{value:?}");
    }
}

/// The log's output as its writer thread (`tracing-appender`) uses it: after each batch
/// of lines is written out, the thread waits [`Paced::PAUSE`] before it takes the next
/// batch. Under load, lines queue up meanwhile and whoever logs finds the thread busy, so
/// it is not woken (a system call and a context switch) for every line; a line waits at
/// most that long. Nothing is dropped: the queue is lossless and bounded.
#[derive(Debug)]
pub struct Paced<W>(W);

impl<W> Paced<W> {
    pub const PAUSE: std::time::Duration = std::time::Duration::from_millis(1);

    pub fn new(inner: W) -> Self {
        Paced(inner)
    }
}

impl<W: std::io::Write> std::io::Write for Paced<W> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.write(buf)
    }

    /// The writer thread flushes after each batch: the end of a batch.
    fn flush(&mut self) -> std::io::Result<()> {
        self.0.flush()?;
        std::thread::sleep(Self::PAUSE);
        Ok(())
    }
}

/// The text format's line when the log is not a terminal (a pipe, a container's log): the
/// same text as tracing-subscriber's default `Full` format without colours (a test pins it),
/// built in one buffer without `core::fmt` except for the timestamp. `Full` spent about
/// 4 500 instructions per line on `write!` and its own timestamp code (BENCHMARKS.md), and
/// every decision-log event is a line.
#[derive(Debug, Clone, Copy)]
pub struct TextLine {
    /// Whether the line starts with the time (RFC 3339, microseconds, UTC).
    pub time: bool,
}

impl<S, N> FormatEvent<S, N> for TextLine
where
    S: Subscriber + for<'a> LookupSpan<'a>,
    N: for<'w> FormatFields<'w> + 'static,
{
    fn format_event(
        &self,
        ctx: &FmtContext<'_, S, N>,
        mut writer: Writer<'_>,
        event: &Event<'_>,
    ) -> fmt::Result {
        // Events from the `log` crate carry their real target here.
        let normalized = tracing_log::NormalizeEvent::normalized_metadata(event);
        let meta = normalized.as_ref().unwrap_or_else(|| event.metadata());
        let mut line = String::with_capacity(192);
        if self.time {
            let now = humantime::format_rfc3339_micros(std::time::SystemTime::now());
            write!(line, "{now} ")?;
        }
        line.push_str(match *meta.level() {
            tracing::Level::TRACE => "TRACE ",
            tracing::Level::DEBUG => "DEBUG ",
            tracing::Level::INFO => " INFO ",
            tracing::Level::WARN => " WARN ",
            tracing::Level::ERROR => "ERROR ",
        });
        if let Some(scope) = ctx.event_scope() {
            let mut seen = false;
            for span in scope.from_root() {
                seen = true;
                line.push_str(span.metadata().name());
                let extensions = span.extensions();
                if let Some(fields) = extensions.get::<FormattedFields<N>>()
                    && !fields.is_empty()
                {
                    line.push('{');
                    line.push_str(fields);
                    line.push('}');
                }
                line.push(':');
            }
            if seen {
                line.push(' ');
            }
        }
        line.push_str(meta.target());
        line.push_str(": ");
        writer.write_str(&line)?;
        ctx.format_fields(writer.by_ref(), event)?;
        writer.write_char('\n')
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
            tracing::warn!("an escape \u{1b}[31m in the message");
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

    /// Exactly what tracing-subscriber's default event format writes without colours, in
    /// spans nested or not, at every level.
    #[test]
    fn text_line_writes_what_the_default_format_writes() {
        let emit = || {
            tracing::warn!("outside any span");
            let rpc = tracing::info_span!("rpc", method = "Decide", request_id = "r-1");
            let _in = rpc.enter();
            tracing::info!(target: "toolgate::decision", verdict = "ALLOW", revision = 3u64, "decision");
            let bare = tracing::info_span!("bare");
            let _bare = bare.enter();
            let store = tracing::error_span!("store", op = "commit");
            let _store = store.enter();
            tracing::error!(quoted = "a \"b\"", "failed");
            tracing::debug!("debug");
            tracing::trace!(n = 1i64, "trace");
        };
        let run = |ours: bool| {
            let out = Captured::default();
            let builder = tracing_subscriber::fmt()
                .without_time()
                .with_ansi(false)
                .with_max_level(tracing::Level::TRACE)
                .fmt_fields(TextFields)
                .with_writer(out.clone());
            if ours {
                let subscriber = builder.event_format(TextLine { time: false }).finish();
                tracing::subscriber::with_default(subscriber, emit);
            } else {
                tracing::subscriber::with_default(builder.finish(), emit);
            }
            String::from_utf8(out.0.lock().unwrap().clone()).unwrap()
        };
        let (ours, theirs) = (run(true), run(false));
        assert_eq!(ours, theirs);
        assert!(
            ours.contains(r#" INFO rpc{method="Decide" request_id="r-1"}: toolgate::decision: decision verdict="ALLOW" revision=3"#),
            "{ours}"
        );
        assert!(
            ours.contains("rpc{method=\"Decide\" request_id=\"r-1\"}:bare:store{op=\"commit\"}: "),
            "{ours}"
        );
        assert_eq!(ours.lines().count(), 5, "{ours}");
    }

    /// With the time, a line starts as the default format's does: RFC 3339 in UTC to the
    /// microsecond, then a space.
    #[test]
    fn text_line_starts_with_the_time_as_the_default_format_does() {
        let out = Captured::default();
        let subscriber = tracing_subscriber::fmt()
            .with_ansi(false)
            .fmt_fields(TextFields)
            .event_format(TextLine { time: true })
            .with_writer(out.clone())
            .finish();
        tracing::subscriber::with_default(subscriber, || tracing::info!("hello"));
        let text = String::from_utf8(out.0.lock().unwrap().clone()).unwrap();
        let (time, rest) = text.split_once(' ').expect("a space after the time");
        assert_eq!(time.len(), "2026-12-05T15:46:36.800832Z".len(), "{text}");
        assert!(time.ends_with('Z') && time.as_bytes()[10] == b'T', "{text}");
        assert!(humantime::parse_rfc3339(time).is_ok(), "{text}");
        assert!(rest.starts_with(" INFO "), "{text}");
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
