//! The log's formats: the JSON line a pipeline can read (one flat object per event), and
//! a faster field formatter for the text format.
//!
//! tracing-subscriber's JSON format nests the event's fields under `fields` and the call's
//! request id under `span`/`spans`, so a collector has to know our span layout to find
//! them. Here every line is one object with `timestamp`, `level`, `target`, the fields of
//! every span the event is in (root first: the `rpc` span gives `method` and
//! `request_id`), then the event's own fields (`message` among them), in that order, a
//! later one winning a name clash in the earlier one's place. The start-up settings
//! (`config`) are a nested object.
//!
//! The decision log's line ([`Decision`]) is written here too, straight into the log when
//! [`write_decisions`] says so, in the same text as the formats write its event.

use serde_json::Value;
use std::fmt::{self, Write as _};
use tracing::field::{Field, Visit};
use tracing::{Event, Subscriber};
use tracing_subscriber::field::RecordFields;
use tracing_subscriber::fmt::format::{JsonFields, Writer};
use tracing_subscriber::fmt::{FmtContext, FormatEvent, FormatFields, FormattedFields};
use tracing_subscriber::registry::LookupSpan;

/// The call a line is logged in, as the formats here write it: what the call's `rpc` span
/// would show (`rpc{method=Decide request_id="…"}:` in text, `method` and `request_id` in
/// JSON), without a span per call.
///
/// Creating, entering and closing a span cost about 3 400 instructions per Decide
/// (BENCHMARKS.md), and only tracing-subscriber's own format (at a terminal) and
/// OpenTelemetry need one. So the gate builds the span when [`call_spans`] says so, and
/// otherwise runs the call in [`CALL`], which [`TextLine`] and [`FlatJson`] read.
#[derive(Debug, Clone)]
pub struct Call {
    /// The RPC's name (`Decide`).
    pub method: std::borrow::Cow<'static, str>,
    /// The call's request id: short and printable (the gate checks a caller's).
    pub request_id: CallId,
}

/// A call's request id as its log lines carry it: the caller's, as the header value it
/// came in (a clone shares its bytes), or one the server made, held inline. A made id
/// held as a header value would be cloned here and sent in the answer, and the first clone
/// of bytes not yet shared allocates (BENCHMARKS.md, "Keepalive off, and small cuts").
#[derive(Debug, Clone)]
pub enum CallId {
    Given(http::HeaderValue),
    Made(MadeId),
}

impl CallId {
    pub fn as_str(&self) -> &str {
        match self {
            CallId::Given(value) => value.to_str().unwrap_or(""),
            CallId::Made(id) => id.as_str(),
        }
    }
}

impl From<http::HeaderValue> for CallId {
    fn from(value: http::HeaderValue) -> Self {
        CallId::Given(value)
    }
}

/// A request id the server made: `prefix` then a number in hex, inline.
#[derive(Clone, Copy)]
pub struct MadeId {
    text: [u8; MadeId::MAX],
    len: u8,
}

impl MadeId {
    /// The longest a made id may be.
    pub const MAX: usize = 40;

    /// `prefix` then `n` in lower-case hex; `None` when the prefix leaves no room or is
    /// not ASCII.
    pub fn new(prefix: &str, n: u64) -> Option<MadeId> {
        let digits = crate::keys::HexDigits::of(n, 1);
        let (prefix, digits) = (prefix.as_bytes(), digits.as_bytes());
        let len = prefix.len() + digits.len();
        if len > MadeId::MAX || !prefix.is_ascii() {
            return None;
        }
        let mut text = [0u8; MadeId::MAX];
        text[..prefix.len()].copy_from_slice(prefix);
        text[prefix.len()..len].copy_from_slice(digits);
        Some(MadeId {
            text,
            len: len as u8,
        })
    }

    pub fn as_str(&self) -> &str {
        // Only ASCII is ever written.
        std::str::from_utf8(&self.text[..usize::from(self.len)]).unwrap_or("")
    }
}

impl fmt::Debug for MadeId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(self.as_str(), f)
    }
}

impl Call {
    fn request_id(&self) -> &str {
        self.request_id.as_str()
    }

    /// The span's part of a text line, as [`TextFields`] writes the `rpc` span.
    fn write_text(&self, line: &mut String) -> fmt::Result {
        line.push_str("rpc{method=");
        line.push_str(&self.method);
        line.push_str(" request_id=");
        debug_str(line, self.request_id())?;
        line.push_str("}:");
        Ok(())
    }
}

tokio::task_local! {
    /// The call being served, when it runs without a span (see [`Call`]).
    pub static CALL: Call;
}

/// Whether calls get a real `rpc` span: yes unless [`set_call_spans`] said otherwise, so a
/// program or test with a subscriber of its own sees the span.
static CALL_SPANS: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(true);

/// Whether the gate should build an `rpc` span for each call, or run it in [`CALL`].
pub fn call_spans() -> bool {
    CALL_SPANS.load(std::sync::atomic::Ordering::Relaxed)
}

/// Set once at start-up: `false` when the log is written by [`TextLine`] or [`FlatJson`]
/// and nothing else (OpenTelemetry) needs spans.
pub fn set_call_spans(spans: bool) {
    CALL_SPANS.store(spans, std::sync::atomic::Ordering::Relaxed);
}

/// The text format's fields: the same `name=value` text as tracing-subscriber's
/// `DefaultFields`, written without `core::fmt` for strings, integers and booleans. Every
/// call's span passes through here (and every event at a terminal; elsewhere [`TextLine`]
/// writes an event's fields with the same visitor), and `DefaultFields` spent about a
/// thousand instructions per field on `write!` (BENCHMARKS.md).
#[derive(Debug, Clone, Copy, Default)]
pub struct TextFields;

impl<'w> FormatFields<'w> for TextFields {
    fn format_fields<R: RecordFields>(&self, mut writer: Writer<'w>, fields: R) -> fmt::Result {
        // Built in one buffer and handed to the writer once: each write to it is a
        // dynamic call that also checks for escape sequences.
        let mut visitor = TextVisitor::new(String::with_capacity(256));
        fields.record(&mut visitor);
        visitor.result?;
        writer.write_str(&visitor.out)
    }
}

/// Writes fields after whatever `out` already holds.
struct TextVisitor {
    out: String,
    /// Where the fields start in `out`.
    start: usize,
    result: fmt::Result,
}

impl TextVisitor {
    fn new(out: String) -> Self {
        TextVisitor {
            start: out.len(),
            out,
            result: Ok(()),
        }
    }

    /// A space between fields (none before the first).
    fn separate(&mut self) {
        if self.out.len() > self.start {
            self.out.push(' ');
        }
    }

    /// Starts a field: ` name=`.
    fn name(&mut self, name: &str) {
        self.separate();
        self.out.push_str(name);
        self.out.push('=');
    }

    /// A string value, as Debug prints it.
    fn string(&mut self, value: &str) {
        if self.result.is_ok() {
            self.result = debug_str(&mut self.out, value);
        }
    }

    /// As tracing-subscriber does: no terminal escape sequence from a message (written
    /// from `start` on).
    fn escape_message(&mut self, start: usize) {
        if self.out[start..].contains('\u{1b}') {
            let text = self.out.split_off(start).replace('\u{1b}', "\\x1b");
            self.out.push_str(&text);
        }
    }
}

/// The bytes Debug prints as they are inside a string: printable ASCII but `"` and `\`.
const PLAIN: [bool; 256] = {
    let mut table = [false; 256];
    let mut b = 0x20;
    while b < 0x7f {
        table[b] = b != b'"' as usize && b != b'\\' as usize;
        b += 1;
    }
    table
};

/// A string Debug would print as it is, between quotes: one table look-up per byte (the
/// values here are short names and ids).
fn plain(s: &str) -> bool {
    s.bytes()
        .fold(true, |plain, b| plain & PLAIN[usize::from(b)])
}

/// `value` as Debug prints it, without `core::fmt` when it is plain.
fn debug_str(out: &mut String, value: &str) -> fmt::Result {
    if plain(value) {
        out.push('"');
        out.push_str(value);
        out.push('"');
        Ok(())
    } else {
        write!(out, "{value:?}")
    }
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
            // A message given as a string (`message = "decision"`), written as it is
            // without `core::fmt`.
            self.separate();
            let start = self.out.len();
            self.out.push_str(value);
            return self.escape_message(start);
        }
        self.name(field.name());
        self.string(value);
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
            self.separate();
            let start = self.out.len();
            self.result = write!(self.out, "{value:?}");
            return self.escape_message(start);
        }
        self.name(field.name());
        self.result = write!(self.out, "{value:?}");
    }
}

/// The log's output: every line is appended to one shared buffer, and a writer thread
/// takes the whole buffer at once and writes it out in one system call.
///
/// tracing-appender's writer, which this replaced, allocated every line and sent it over
/// a channel; its thread freed the line, and those frees from another thread took the
/// allocator's lock of the worker that made it, so workers waited on each other
/// (BENCHMARKS.md, "The decision log"). Here a logging call copies its line under a short
/// lock and allocates nothing.
///
/// - **Paced.** After each batch the thread waits [`LogWriter::PAUSE`] before taking the
///   next, so under load lines queue up meanwhile and whoever logs finds the thread busy
///   instead of waking it (a system call and a context switch) for every line. A line
///   waits at most about that long.
/// - **Lossless.** When `max_pending` bytes are queued, loggers wait until the thread has
///   taken them. Nothing is dropped while the [`LogGuard`] lives; dropping it writes out
///   what is queued, and a line logged after that is dropped.
#[derive(Clone)]
pub struct LogWriter {
    shared: std::sync::Arc<Shared>,
}

struct Shared {
    state: std::sync::Mutex<Pending>,
    /// The writer thread waits here for lines.
    lines: std::sync::Condvar,
    /// Loggers wait here for room.
    room: std::sync::Condvar,
    max_pending: usize,
}

#[derive(Default)]
struct Pending {
    bytes: Vec<u8>,
    /// The writer thread is waiting for lines: the next line wakes it.
    writer_idle: bool,
    /// Loggers waiting for room.
    waiting: usize,
    closed: bool,
}

/// Stops the log's writer thread when dropped, after it has written out every queued line.
pub struct LogGuard {
    shared: std::sync::Arc<Shared>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl LogWriter {
    /// How long the writer thread waits after each batch.
    pub const PAUSE: std::time::Duration = std::time::Duration::from_millis(10);

    /// Starts the writer thread, writing into `out`; loggers wait once `max_pending`
    /// bytes are queued.
    pub fn start<W: std::io::Write + Send + 'static>(
        out: W,
        max_pending: usize,
    ) -> std::io::Result<(LogWriter, LogGuard)> {
        let shared = std::sync::Arc::new(Shared {
            state: std::sync::Mutex::new(Pending::default()),
            lines: std::sync::Condvar::new(),
            room: std::sync::Condvar::new(),
            max_pending,
        });
        let writer = shared.clone();
        let thread = std::thread::Builder::new()
            .name("toolgate-log".into())
            .spawn(move || write_out(&writer, out))?;
        let guard = LogGuard {
            shared: shared.clone(),
            thread: Some(thread),
        };
        Ok((LogWriter { shared }, guard))
    }

    /// Loggers waiting for room.
    #[cfg(test)]
    fn waiting(&self) -> usize {
        lock(&self.shared.state).waiting
    }

    /// Bytes queued for the writer thread.
    #[cfg(test)]
    fn queued(&self) -> usize {
        lock(&self.shared.state).bytes.len()
    }

    fn append(&self, line: &[u8]) {
        let shared = &*self.shared;
        let mut pending = lock(&shared.state);
        while pending.bytes.len() >= shared.max_pending && !pending.closed {
            pending.waiting += 1;
            pending = shared
                .room
                .wait(pending)
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            pending.waiting -= 1;
        }
        if pending.closed {
            // The writer thread has stopped (the guard was dropped, the process is ending):
            // the line has nowhere to go, and the buffer must not grow without bound.
            return;
        }
        pending.bytes.extend_from_slice(line);
        if pending.writer_idle {
            pending.writer_idle = false;
            shared.lines.notify_one();
        }
    }
}

fn lock(state: &std::sync::Mutex<Pending>) -> std::sync::MutexGuard<'_, Pending> {
    // A logger that panicked while holding the lock left whole lines: keep going.
    state
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// The writer thread: takes everything queued, writes it, pauses, until closed and empty.
fn write_out<W: std::io::Write>(shared: &Shared, mut out: W) {
    let mut batch = Vec::with_capacity(64 * 1024);
    loop {
        {
            let mut pending = lock(&shared.state);
            while pending.bytes.is_empty() {
                if pending.closed {
                    return;
                }
                pending.writer_idle = true;
                pending = shared
                    .lines
                    .wait(pending)
                    .unwrap_or_else(std::sync::PoisonError::into_inner);
            }
            std::mem::swap(&mut pending.bytes, &mut batch);
            if pending.waiting > 0 {
                shared.room.notify_all();
            }
        }
        // Nowhere to report a failed write of the log itself; the lines are dropped.
        let _ = out.write_all(&batch).and_then(|()| out.flush());
        batch.clear();
        std::thread::sleep(LogWriter::PAUSE);
    }
}

impl Drop for LogGuard {
    fn drop(&mut self) {
        {
            let mut pending = lock(&self.shared.state);
            pending.closed = true;
            self.shared.lines.notify_one();
            self.shared.room.notify_all();
        }
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

impl std::io::Write for &LogWriter {
    /// Takes the whole of `buf`: the fmt layer writes each line with one call, so lines
    /// never interleave.
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.append(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl<'a> tracing_subscriber::fmt::MakeWriter<'a> for LogWriter {
    type Writer = &'a LogWriter;

    fn make_writer(&'a self) -> &'a LogWriter {
        self
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
        let mut line = LINE.take();
        let mut seen = text_start(&mut line, self.time, *meta.level())?;
        // Then any spans the event is in.
        if let Some(scope) = ctx.event_scope() {
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
        }
        if seen {
            line.push(' ');
        }
        line.push_str(meta.target());
        line.push_str(": ");
        // The event's fields as `TextFields` writes them, in the same buffer, so the line
        // goes to the writer in one piece.
        let mut fields = TextVisitor::new(line);
        event.record(&mut fields);
        fields.result?;
        fields.out.push('\n');
        let written = writer.write_str(&fields.out);
        // An unusually long line's buffer is not kept.
        if fields.out.capacity() <= 64 * 1024 {
            LINE.set(fields.out);
        }
        written
    }
}

/// Starts a text line in `line` (emptied first): the time, the level, and the call's
/// context if the line is logged in a call run in [`CALL`]. Says whether it wrote that
/// context (the span part of the line).
fn text_start(line: &mut String, time: bool, level: tracing::Level) -> Result<bool, fmt::Error> {
    line.clear();
    line.reserve(512);
    if time {
        rfc3339_micros(std::time::SystemTime::now(), line);
        line.push(' ');
    }
    line.push_str(match level {
        tracing::Level::TRACE => "TRACE ",
        tracing::Level::DEBUG => "DEBUG ",
        tracing::Level::INFO => " INFO ",
        tracing::Level::WARN => " WARN ",
        tracing::Level::ERROR => "ERROR ",
    });
    match CALL.try_with(|call| call.write_text(line)) {
        Ok(written) => written.map(|()| true),
        Err(_) => Ok(false),
    }
}

thread_local! {
    /// [`TextLine`]'s buffer, kept between lines so a line allocates nothing.
    static LINE: std::cell::Cell<String> = const { std::cell::Cell::new(String::new()) };
    /// The last second [`rfc3339_micros`] wrote, and its text up to the seconds.
    static SECOND: std::cell::RefCell<(u64, String)> = const { std::cell::RefCell::new((u64::MAX, String::new())) };
}

/// `at` as humantime's `format_rfc3339_micros` writes it (`2026-12-05T18:50:12.123456Z`);
/// the date and time of day are worked out once a second per thread, the part that changes
/// on every line is written here.
fn rfc3339_micros(at: std::time::SystemTime, out: &mut String) {
    let Ok(since) = at.duration_since(std::time::UNIX_EPOCH) else {
        out.push_str(&humantime::format_rfc3339_micros(at).to_string());
        return;
    };
    let second = since.as_secs();
    SECOND.with_borrow_mut(|(cached, text)| {
        if *cached != second {
            // `2026-12-05T18:50:12Z` without the `Z`.
            *text = humantime::format_rfc3339_seconds(at).to_string();
            text.truncate(19);
            *cached = second;
        }
        out.push_str(text);
    });
    out.push('.');
    let micros = since.subsec_micros();
    let mut digits = [b'0'; 6];
    let mut rest = micros;
    for d in digits.iter_mut().rev() {
        *d = b'0' + (rest % 10) as u8;
        rest /= 10;
    }
    out.extend(digits.iter().map(|d| char::from(*d)));
    out.push('Z');
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
        let mut line = Members::default();
        let now = humantime::format_rfc3339_micros(std::time::SystemTime::now());
        line.set("timestamp", now.to_string().into());
        line.set("level", meta.level().as_str().into());
        line.set("target", meta.target().into());
        let _ = CALL.try_with(|call| {
            line.set("method", call.method.as_ref().into());
            line.set("request_id", call.request_id().into());
        });
        if let Some(scope) = ctx.event_scope() {
            for span in scope.from_root() {
                let extensions = span.extensions();
                let Some(fields) = extensions.get::<FormattedFields<JsonFields>>() else {
                    continue;
                };
                if let Ok(Value::Object(fields)) = serde_json::from_str(fields.as_str()) {
                    // By name, whatever order serde_json's map keeps.
                    let mut fields: Vec<(String, Value)> = fields.into_iter().collect();
                    fields.sort_by(|a, b| a.0.cmp(&b.0));
                    for (name, value) in fields {
                        line.set(&name, value);
                    }
                }
            }
        }
        event.record(&mut Fields(&mut line));
        writer.write_str(&line.text())
    }
}

/// A JSON line's members in the order they were first set (a later value for a name
/// replaces the earlier one in its place). Not a `serde_json::Map`: that is sorted, or
/// kept in insertion order when another crate in the same build turns on serde_json's
/// `preserve_order`, and the line must read the same either way.
#[derive(Default)]
struct Members(Vec<(String, Value)>);

impl Members {
    fn set(&mut self, name: &str, value: Value) {
        match self.0.iter_mut().find(|(n, _)| n == name) {
            Some(member) => member.1 = value,
            None => self.0.push((name.to_owned(), value)),
        }
    }

    /// The line: one object, then a newline.
    fn text(&self) -> String {
        let mut out = String::with_capacity(512);
        out.push('{');
        for (i, (name, value)) in self.0.iter().enumerate() {
            if i > 0 {
                out.push(',');
            }
            json_str(&mut out, name);
            out.push(':');
            out.push_str(&value.to_string());
        }
        out.push_str("}\n");
        out
    }
}

/// Records an event's fields into the line.
struct Fields<'a>(&'a mut Members);

impl Visit for Fields<'_> {
    fn record_str(&mut self, field: &Field, value: &str) {
        self.0.set(field.name(), value.into());
    }

    fn record_i64(&mut self, field: &Field, value: i64) {
        self.0.set(field.name(), value.into());
    }

    fn record_u64(&mut self, field: &Field, value: u64) {
        self.0.set(field.name(), value.into());
    }

    fn record_bool(&mut self, field: &Field, value: bool) {
        self.0.set(field.name(), value.into());
    }

    fn record_f64(&mut self, field: &Field, value: f64) {
        self.0.set(field.name(), value.into());
    }

    fn record_debug(&mut self, field: &Field, value: &dyn fmt::Debug) {
        let text = format!("{value:?}");
        // The start-up settings arrive as one JSON object: kept an object, not a string.
        if field.name() == "config"
            && let Ok(object @ Value::Object(_)) = serde_json::from_str(&text)
        {
            self.0.set("config", object);
            return;
        }
        self.0.set(field.name(), text.into());
    }
}

/// One decision-log line: what a Decide asked and answered, never the arguments (their
/// hash at most). Logged at INFO with the target `toolgate::decision`, so the log filter
/// silences it (`RUST_LOG=info,toolgate::decision=off`).
#[derive(Debug, Clone, Copy)]
pub struct Decision<'a> {
    pub decision_id: &'a str,
    pub tenant: &'a str,
    pub key_id: &'a str,
    pub integration: &'a str,
    pub tool: &'a str,
    pub verdict: &'a str,
    pub code: &'a str,
    pub revision: u64,
    pub approval_id: Option<&'a str>,
    pub requester: Option<&'a str>,
    pub arguments_sha256: Option<&'a str>,
}

/// The decision log's own writer: set by [`write_decisions`] when the log is written by
/// [`TextLine`] or [`FlatJson`] alone.
struct DecisionLines {
    writer: LogWriter,
    format: LineFormat,
}

static DECISION_LINES: std::sync::OnceLock<DecisionLines> = std::sync::OnceLock::new();

/// The format of the lines [`write_decisions`] writes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LineFormat {
    /// As [`TextLine`] writes an event.
    Text { time: bool },
    /// As [`FlatJson`] writes an event.
    Json,
}

/// Set once at start-up, when the log is written by [`TextLine`] or [`FlatJson`] into
/// `writer` and nothing else reads events (no OpenTelemetry): decision lines are then
/// written straight into `writer`, in the same text as the event would have been. Calls
/// then run without a span ([`set_call_spans`]`(false)`), and no other span is current
/// where a Decide logs (the store's spans exist only with OpenTelemetry). A second call
/// changes nothing.
///
/// Every Decide logs one line, and tracing's dispatch through the layers and its visiting
/// of the eleven fields (a dynamic call for each, and a look-up of its name) cost about
/// 1 500 of the line's 3 600 instructions (BENCHMARKS.md, "The decision log"); the
/// performance budget for the decision log is 3 % of Decide's throughput.
pub fn write_decisions(writer: LogWriter, format: LineFormat) {
    // A span current at the decision would be missing from the line: calls get none.
    set_call_spans(false);
    let _ = DECISION_LINES.set(DecisionLines { writer, format });
}

/// The decision event's callsite for [`Decision::enabled`]: the target, level and field
/// names of the event [`Decision::event`] sends, as tracing's macros would make its callsite.
static DECISION_CALLSITE: tracing_core::callsite::DefaultCallsite =
    tracing_core::callsite::DefaultCallsite::new(&DECISION_METADATA);

static DECISION_METADATA: tracing::Metadata<'static> = tracing::Metadata::new(
    "decision",
    "toolgate::decision",
    tracing::Level::INFO,
    Some(file!()),
    Some(line!()),
    Some(module_path!()),
    tracing_core::field::FieldSet::new(
        &[
            "message",
            "decision_id",
            "tenant",
            "key_id",
            "integration",
            "tool",
            "verdict",
            "code",
            "revision",
            "approval_id",
            "requester",
            "arguments_sha256",
        ],
        tracing_core::identify_callsite!(&DECISION_CALLSITE),
    ),
    tracing_core::metadata::Kind::EVENT,
);

impl Decision<'_> {
    /// Logs the decision: straight into the log when [`write_decisions`] said so and the
    /// log filter lets the line through, otherwise as a tracing event.
    pub fn log(&self) {
        match DECISION_LINES.get() {
            Some(lines) => {
                if Decision::enabled() {
                    lines.write(self);
                }
            }
            None => self.event(),
        }
    }

    /// Whether the log filter lets the decision's event through, decided as tracing decides
    /// for an event: from the interest the subscribers registered for its callsite (by
    /// target, level and field names), asking the subscriber only when that interest is
    /// "sometimes". `event_enabled!` asks the subscriber on every call even when the
    /// interest is "always", which cost every Decide the filter's whole walk (BENCHMARKS.md,
    /// "The connection's own count, and what the rest is").
    fn enabled() -> bool {
        use tracing::level_filters::{LevelFilter, STATIC_MAX_LEVEL};
        if STATIC_MAX_LEVEL < tracing::Level::INFO || LevelFilter::current() < tracing::Level::INFO
        {
            return false;
        }
        let interest = DECISION_CALLSITE.interest();
        if interest.is_never() {
            return false;
        }
        interest.is_always()
            || tracing::dispatcher::get_default(|current| current.enabled(&DECISION_METADATA))
    }

    /// The decision as a tracing event.
    fn event(&self) {
        // A field that does not apply is left out of the line.
        tracing::info!(
            target: "toolgate::decision",
            // A string rather than format arguments, so it is written without
            // `core::fmt`; first, where a formatted message would be.
            message = "decision",
            decision_id = self.decision_id,
            tenant = self.tenant,
            key_id = self.key_id,
            integration = self.integration,
            tool = self.tool,
            verdict = self.verdict,
            code = self.code,
            revision = self.revision,
            approval_id = self.approval_id,
            requester = self.requester,
            arguments_sha256 = self.arguments_sha256,
        );
    }

    /// The line [`TextLine`] writes for [`Decision::event`].
    fn text(&self, time: bool, line: &mut String) -> fmt::Result {
        if text_start(line, time, tracing::Level::INFO)? {
            line.push(' ');
        }
        // Each name with its punctuation is one literal (inlined, so copied without a call).
        made_member(
            line,
            "toolgate::decision: decision decision_id=",
            self.decision_id,
        );
        text_member(line, " tenant=", self.tenant)?;
        text_member(line, " key_id=", self.key_id)?;
        text_member(line, " integration=", self.integration)?;
        text_member(line, " tool=", self.tool)?;
        made_member(line, " verdict=", self.verdict);
        made_member(line, " code=", self.code);
        line.push_str(" revision=");
        decimal(line, self.revision);
        if let Some(approval_id) = self.approval_id {
            text_member(line, " approval_id=", approval_id)?;
        }
        if let Some(requester) = self.requester {
            text_member(line, " requester=", requester)?;
        }
        if let Some(arguments_sha256) = self.arguments_sha256 {
            text_member(line, " arguments_sha256=", arguments_sha256)?;
        }
        line.push('\n');
        Ok(())
    }

    /// The line [`FlatJson`] writes for [`Decision::event`]: the time, level and target,
    /// the call, then the fields in the event's order.
    fn json(&self, line: &mut String) {
        line.clear();
        line.reserve(512);
        // Each name with its punctuation is one literal (inlined, so copied without a call).
        line.push_str("{\"timestamp\":\"");
        rfc3339_micros(std::time::SystemTime::now(), line);
        line.push_str("\",\"level\":\"INFO\",\"target\":\"toolgate::decision\"");
        let _ = CALL.try_with(|call| {
            json_member(line, ",\"method\":", &call.method);
            json_member(line, ",\"request_id\":", call.request_id());
        });
        made_member(
            line,
            ",\"message\":\"decision\",\"decision_id\":",
            self.decision_id,
        );
        json_member(line, ",\"tenant\":", self.tenant);
        json_member(line, ",\"key_id\":", self.key_id);
        json_member(line, ",\"integration\":", self.integration);
        json_member(line, ",\"tool\":", self.tool);
        made_member(line, ",\"verdict\":", self.verdict);
        made_member(line, ",\"code\":", self.code);
        line.push_str(",\"revision\":");
        decimal(line, self.revision);
        if let Some(approval_id) = self.approval_id {
            json_member(line, ",\"approval_id\":", approval_id);
        }
        if let Some(requester) = self.requester {
            json_member(line, ",\"requester\":", requester);
        }
        if let Some(arguments_sha256) = self.arguments_sha256 {
            json_member(line, ",\"arguments_sha256\":", arguments_sha256);
        }
        line.push_str("}\n");
    }
}

impl DecisionLines {
    fn write(&self, decision: &Decision<'_>) {
        let mut line = LINE.take();
        let written = match self.format {
            LineFormat::Text { time } => decision.text(time, &mut line),
            LineFormat::Json => {
                decision.json(&mut line);
                Ok(())
            }
        };
        // Writing into a `String` does not fail; if it did, no half line is written.
        if written.is_ok() {
            self.writer.append(line.as_bytes());
        }
        if line.capacity() <= 64 * 1024 {
            LINE.set(line);
        }
    }
}

/// `name` (a literal with its punctuation, ` tenant=`), then `value` as Debug prints it.
#[inline]
fn text_member(line: &mut String, name: &str, value: &str) -> fmt::Result {
    line.push_str(name);
    debug_str(line, value)
}

/// `name` (a literal with its punctuation), then `value` between quotes, unchecked: for the
/// values this server makes plain (the decision id, the verdict's and code's names), which
/// Debug and JSON both write so. Checking them cost every Decide about 150 instructions.
#[inline]
fn made_member(line: &mut String, name: &str, value: &str) {
    debug_assert!(plain(value), "{value:?}");
    line.push_str(name);
    line.push('"');
    line.push_str(value);
    line.push('"');
}

/// `name` (a literal with its punctuation, `,"tenant":`), then `value` as a JSON string.
#[inline]
fn json_member(line: &mut String, name: &str, value: &str) {
    line.push_str(name);
    json_str(line, value);
}

/// `value` as a JSON string, as serde_json writes it.
fn json_str(out: &mut String, value: &str) {
    if plain(value) {
        out.push('"');
        out.push_str(value);
        out.push('"');
    } else {
        out.push_str(&Value::from(value).to_string());
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
            tracing::info!(n = 1u64, message = "a message given as a string");
            tracing::info!(message = "a string with an escape \u{1b}[31m");
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

    /// `plain` says yes exactly for the strings Debug prints as they are, between quotes.
    #[test]
    fn plain_is_what_debug_leaves_as_it_is() {
        let mut samples: Vec<String> = (0u32..0x300)
            .filter_map(char::from_u32)
            .map(|c| format!("ab{c}cd"))
            .collect();
        samples.extend(
            [
                "",
                "acme",
                "dec_8621e7d7a5e8_0000000001",
                "a\u{1b}[31m",
                "\u{2028}",
            ]
            .map(String::from),
        );
        for s in &samples {
            let as_is = format!("{s:?}") == format!("\"{s}\"");
            // Debug also leaves some non-ASCII as it is; `plain` only says yes for ASCII,
            // so for those it falls back to Debug itself (the same text, slower).
            if s.is_ascii() {
                assert_eq!(plain(s), as_is, "{s:?}");
            } else {
                assert!(!plain(s), "{s:?}");
            }
        }
    }

    /// A call run in [`CALL`] is written as the gate's `rpc` span would have it, in text
    /// and in JSON, with spans inside it after it.
    #[test]
    fn a_call_without_a_span_is_written_as_its_span_would_be() {
        let emit = || {
            tracing::info!(target: "toolgate::decision", message = "decision", verdict = "ALLOW");
            let store = tracing::info_span!("store", op = "commit");
            let _store = store.enter();
            tracing::warn!(tenant = "acme", "inside");
        };
        let with_span = || {
            let method = "Decide";
            let span = tracing::info_span!(
                "rpc",
                %method,
                request_id = "r-1",
                otel.name = tracing::field::Empty,
                otel.kind = tracing::field::Empty,
            );
            span.in_scope(emit);
        };
        let call = Call {
            method: "Decide".into(),
            request_id: http::HeaderValue::from_static("r-1").into(),
        };
        let without_span = || CALL.sync_scope(call.clone(), emit);
        let text = |run: &dyn Fn()| text_line(false, run);
        let (spanned, called) = (text(&with_span), text(&without_span));
        assert_eq!(called, spanned);
        assert!(
            called.contains(r#" INFO rpc{method=Decide request_id="r-1"}: toolgate::decision: decision verdict="ALLOW""#),
            "{called}"
        );
        assert!(
            called.contains(r#"rpc{method=Decide request_id="r-1"}:store{op="commit"}: "#),
            "{called}"
        );
        let json = |run: &dyn Fn()| {
            flat_json(run)
                .lines()
                .map(|l| {
                    let mut line: Value = serde_json::from_str(l).unwrap();
                    line.as_object_mut().unwrap().remove("timestamp");
                    line
                })
                .collect::<Vec<_>>()
        };
        let (spanned, called) = (json(&with_span), json(&without_span));
        assert_eq!(called, spanned);
        assert_eq!(called.len(), 2);
        for line in &called {
            assert_eq!(line["method"], "Decide", "{line}");
            assert_eq!(line["request_id"], "r-1", "{line}");
        }
        assert_eq!(called[0]["message"], "decision");
        assert_eq!(called[1]["op"], "commit");
    }

    /// A decision line written straight into the log is, byte for byte, what [`TextLine`]
    /// and [`FlatJson`] write for the decision's tracing event: in a call and outside one,
    /// with every field and with the optional ones absent, with values that need escaping.
    #[test]
    fn a_decision_line_is_what_its_event_would_be() {
        let full = Decision {
            decision_id: "dec_8621e7d7a5e8_0000000001",
            tenant: "acme",
            key_id: "key_0123",
            integration: "entra",
            tool: "reset\tpassword",
            verdict: "PENDING_APPROVAL",
            code: "APPROVAL_REQUIRED",
            revision: 42,
            approval_id: Some("apr_1"),
            requester: Some("al\"ice\\ \u{1b}[31m é"),
            arguments_sha256: Some("9f86d081884c7d65"),
        };
        let bare = Decision {
            verdict: "ALLOW",
            code: "POLICY_AUTO",
            revision: 0,
            approval_id: None,
            requester: None,
            arguments_sha256: None,
            ..full
        };
        let call = Call {
            method: "Decide".into(),
            request_id: http::HeaderValue::from_static("r-1").into(),
        };
        // The JSON line's time differs between the two ways of writing it.
        let untimed = |line: &str| {
            let at = line.find(r#""timestamp":""#).expect("a timestamp") + 13;
            let end = at + line[at..].find('"').unwrap();
            assert!(humantime::parse_rfc3339(&line[at..end]).is_ok(), "{line}");
            format!("{}{}", &line[..at], &line[end..])
        };
        for decision in [full, bare] {
            for in_call in [false, true] {
                let run = |f: &dyn Fn()| {
                    if in_call {
                        CALL.sync_scope(call.clone(), f)
                    } else {
                        f()
                    }
                };
                let event = text_line(false, &|| run(&|| decision.event()));
                let direct = std::cell::RefCell::new(String::new());
                run(&|| decision.text(false, &mut direct.borrow_mut()).unwrap());
                assert_eq!(*direct.borrow(), event);
                assert!(
                    event.contains(" toolgate::decision: decision decision_id="),
                    "{event}"
                );
                assert_eq!(event.contains("rpc{method=Decide"), in_call, "{event}");

                let event = flat_json(&|| run(&|| decision.event()));
                run(&|| decision.json(&mut direct.borrow_mut()));
                let direct = direct.take();
                assert_eq!(untimed(&direct), untimed(&event));
                let parsed: Value = serde_json::from_str(&direct).unwrap();
                assert_eq!(parsed["request_id"] == "r-1", in_call, "{direct}");
                assert_eq!(parsed["requester"].as_str(), decision.requester, "{direct}");
            }
        }
    }

    /// The log filter lets the decision through, or not, exactly as it does its event:
    /// by target, by level, by field name.
    #[test]
    fn the_filter_decides_for_a_decision_line_as_for_its_event() {
        let decision = Decision {
            decision_id: "dec_1",
            tenant: "acme",
            key_id: "key_1",
            integration: "entra",
            tool: "get_user",
            verdict: "ALLOW",
            code: "POLICY_AUTO",
            revision: 1,
            approval_id: None,
            requester: None,
            arguments_sha256: None,
        };
        for (filter, logged) in [
            ("info", true),
            ("info,toolgate::decision=off", false),
            ("warn", false),
            ("warn,toolgate::decision=info", true),
            ("off", false),
            ("info,[{addr}]=off", true),
            ("info,[{tenant}]=off", false),
            ("warn,toolgate[{tenant}]=info", true),
            ("warn,toolgate[{addr}]=info", false),
        ] {
            let out = Captured::default();
            let subscriber = tracing_subscriber::fmt()
                .with_env_filter(tracing_subscriber::EnvFilter::new(filter))
                .fmt_fields(TextFields)
                .event_format(TextLine { time: false })
                .with_writer(out.clone())
                .finish();
            let enabled = tracing::subscriber::with_default(subscriber, || {
                let enabled = Decision::enabled();
                decision.event();
                enabled
            });
            let written = !out.0.lock().unwrap().is_empty();
            assert_eq!(written, logged, "the event under {filter:?}");
            assert_eq!(enabled, logged, "the line under {filter:?}");
        }
    }

    /// With the time, a line starts as the default format's does: RFC 3339 in UTC to the
    /// microsecond, then a space.
    #[test]
    fn text_line_starts_with_the_time_as_the_default_format_does() {
        let text = text_line(true, &|| tracing::info!("hello"));
        let (time, rest) = text.split_once(' ').expect("a space after the time");
        assert_eq!(time.len(), "2026-12-05T15:46:36.800832Z".len(), "{text}");
        assert!(time.ends_with('Z') && time.as_bytes()[10] == b'T', "{text}");
        assert!(humantime::parse_rfc3339(time).is_ok(), "{text}");
        assert!(rest.starts_with(" INFO "), "{text}");
    }

    /// What `run` logs through toolgate's text format (`TextLine`, with or without time).
    fn text_line(time: bool, run: &dyn Fn()) -> String {
        let out = Captured::default();
        let subscriber = tracing_subscriber::fmt()
            .with_ansi(false)
            .fmt_fields(TextFields)
            .event_format(TextLine { time })
            .with_writer(out.clone())
            .finish();
        tracing::subscriber::with_default(subscriber, run);
        String::from_utf8(out.0.lock().unwrap().clone()).unwrap()
    }

    /// What `run` logs through the `--log-format json` format.
    fn flat_json(run: &dyn Fn()) -> String {
        let out = Captured::default();
        let subscriber = tracing_subscriber::fmt()
            .fmt_fields(JsonFields::new())
            .event_format(FlatJson)
            .with_writer(out.clone())
            .finish();
        tracing::subscriber::with_default(subscriber, run);
        String::from_utf8(out.0.lock().unwrap().clone()).unwrap()
    }

    #[test]
    fn a_line_is_one_flat_object_with_the_span_fields_at_the_top() {
        let text = flat_json(&|| {
            let span = tracing::info_span!("rpc", method = "Decide", request_id = "r-1");
            let _in = span.enter();
            tracing::info!(tenant = "acme", revision = 7u64, ok = true, shown = %"a b", "saved");
        });
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

    /// The cached-second timestamp is humantime's text, across second boundaries and on
    /// several dates.
    #[test]
    fn timestamps_are_what_humantime_writes() {
        let start = std::time::UNIX_EPOCH + std::time::Duration::from_secs(1_796_428_799);
        // In each base's second several times (the cached text), then past it.
        for base in [start, std::time::UNIX_EPOCH, std::time::SystemTime::now()] {
            for step_micros in [
                0u64,
                1,
                999_999,
                1_000_000,
                1_000_001,
                86_400_000_000,
                9_999_999_999,
            ] {
                let at = base + std::time::Duration::from_micros(step_micros);
                let mut ours = String::new();
                rfc3339_micros(at, &mut ours);
                assert_eq!(ours, humantime::format_rfc3339_micros(at).to_string());
            }
        }
    }

    /// Lines written from several threads at once all arrive, each whole, each thread's in
    /// its order; dropping the guard writes out what was queued.
    #[test]
    fn the_log_writer_keeps_every_line_whole_and_in_order() {
        use std::io::Write;
        let out = Captured::default();
        let (writer, guard) = LogWriter::start(out.clone(), 4 << 20).unwrap();
        std::thread::scope(|s| {
            for t in 0..4 {
                let writer = writer.clone();
                s.spawn(move || {
                    for n in 0..2000 {
                        (&writer)
                            .write_all(format!("thread {t} line {n:05} of a log\n").as_bytes())
                            .unwrap();
                    }
                });
            }
        });
        drop(guard);
        let text = String::from_utf8(out.0.lock().unwrap().clone()).unwrap();
        let mut next = [0usize; 4];
        for line in text.lines() {
            let rest = line.strip_prefix("thread ").expect(line);
            let (t, rest) = rest.split_once(" line ").expect(line);
            let (n, tail) = rest.split_once(' ').expect(line);
            assert_eq!(tail, "of a log", "{line}");
            let t: usize = t.parse().unwrap();
            assert_eq!(
                n.parse::<usize>().unwrap(),
                next[t],
                "thread {t}'s lines in order"
            );
            next[t] += 1;
        }
        assert_eq!(next, [2000; 4], "every line arrived");
    }

    /// Once the guard is dropped the writer thread is gone: a later line is dropped
    /// instead of queueing forever.
    #[test]
    fn lines_after_the_guard_is_dropped_are_not_kept() {
        use std::io::Write;
        let out = Captured::default();
        let (writer, guard) = LogWriter::start(out.clone(), 4 << 20).unwrap();
        (&writer).write_all(b"before\n").unwrap();
        drop(guard);
        for _ in 0..1000 {
            (&writer).write_all(b"after the end\n").unwrap();
        }
        assert_eq!(writer.queued(), 0);
        assert_eq!(out.0.lock().unwrap().as_slice(), b"before\n");
    }

    /// Writes to `out` once `gate` has a message; until then the writer thread is stuck.
    struct Gated {
        gate: std::sync::mpsc::Receiver<()>,
        out: Captured,
    }

    impl std::io::Write for Gated {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            let _ = self.gate.recv();
            self.out.write(buf)
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    /// With the output stuck and the queue full, a logger waits for room instead of
    /// dropping its line; every line arrives once the output moves.
    #[test]
    fn a_full_log_makes_loggers_wait_rather_than_drop_lines() {
        use std::io::Write;
        let (open, gate) = std::sync::mpsc::channel();
        let out = Captured::default();
        let sink = Gated {
            gate,
            out: out.clone(),
        };
        let (writer, guard) = LogWriter::start(sink, 16).unwrap();
        let logger = {
            let writer = writer.clone();
            std::thread::spawn(move || {
                for n in 0..10 {
                    (&writer)
                        .write_all(format!("line {n:04}\n").as_bytes())
                        .unwrap();
                }
            })
        };
        // The writer thread holds its first batch in the stuck write; the queue fills up
        // behind it and the logger waits.
        while writer.waiting() == 0 {
            std::thread::yield_now();
        }
        assert!(!logger.is_finished(), "the logger waits for room");
        for _ in 0..10 {
            open.send(()).unwrap();
        }
        drop(open);
        logger.join().unwrap();
        drop(guard);
        let text = String::from_utf8(out.0.lock().unwrap().clone()).unwrap();
        let expected: String = (0..10).map(|n| format!("line {n:04}\n")).collect();
        assert_eq!(text, expected);
    }
}
