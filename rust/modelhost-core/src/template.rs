//! Chat templates: the GGUF's Jinja `tokenizer.chat_template`, rendered with minijinja the way HF
//! transformers' `apply_chat_template` renders it with jinja2 (and llama-cpp-python's
//! `Jinja2ChatFormatter`, which uses the same environment settings).
//!
//! The jinja2 environment is `ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True)`
//! with loop controls, a `tojson` filter that is plain `json.dumps` (no HTML escaping, non-ASCII
//! kept), and the globals `raise_exception` and `strftime_now`. Beyond that this module makes
//! minijinja print values as Python does (`None`, `True`, `['a', 1]`, `1e+16`) and adds Python's
//! string and dict methods (`.strip()`, `.items()`, … from minijinja-contrib's pycompat).
//!
//! A template comes from a model file, so it is hostile until proven otherwise: every render runs
//! on a fuel budget, a recursion limit and an output cap, and a panic inside the engine becomes an
//! error. Since minijinja 3, fuel is charged for the memory a render allocates too (strings and lists
//! built by operators, literals, filters, functions and methods, and values whose size is known
//! up front are refused before they are made), so `FUEL` bounds both time and memory.

use std::fmt::Write as _;
use std::io;
use std::panic::{catch_unwind, AssertUnwindSafe};

use minijinja::value::{Kwargs, Rest, ValueKind};
use minijinja::{context, Environment, ErrorKind, Output, State, Value};

use crate::error::{Error, Result};

/// A render stops with an error once its output would pass this many bytes (real prompts are a few
/// kilobytes; a context window of text is well under this).
pub const MAX_OUTPUT_BYTES: usize = 1 << 20;
/// Fuel for one render: minijinja charges one unit per instruction and about one per 64 bytes
/// allocated, so this bounds a render to ~2M instructions (milliseconds) and ~128 MB. Rendering a
/// chat as long as `MAX_OUTPUT_BYTES` (1000 messages of 1 kB) costs about 100k.
pub const FUEL: u64 = 2_000_000;
/// Nesting depth of loops, macro calls and includes (minijinja counts a macro call as several).
pub const RECURSION_LIMIT: usize = 200;
/// Nesting depth of values printed or serialised by `tojson` (deeper ones are an error rather than
/// a stack overflow).
const MAX_VALUE_DEPTH: usize = 128;
/// `tojson(indent=n)` beyond this many spaces is clamped (Python has no limit, no template needs one).
const MAX_JSON_INDENT: i64 = 64;

/// The name errors give the template (its GGUF key); no file extension, so no auto-escaping.
const TEMPLATE_NAME: &str = "tokenizer.chat_template";

/// One chat message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChatMessage {
    /// "system", "user", "assistant", …
    pub role: String,
    /// The message text.
    pub content: String,
}

impl ChatMessage {
    /// A message with this role and content.
    pub fn new(role: impl Into<String>, content: impl Into<String>) -> Self {
        ChatMessage { role: role.into(), content: content.into() }
    }
}

/// A compiled chat template. `Send + Sync`; rendering takes `&self`.
pub struct ChatTemplate {
    env: Environment<'static>,
    source: String,
    bos_token: String,
    eos_token: String,
}

impl std::fmt::Debug for ChatTemplate {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ChatTemplate")
            .field("source_len", &self.source.len())
            .field("bos_token", &self.bos_token)
            .field("eos_token", &self.eos_token)
            .finish_non_exhaustive()
    }
}

impl ChatTemplate {
    /// Compile a Jinja chat template (normally the GGUF's `tokenizer.chat_template`). A syntax
    /// error is `Error::InvalidConfig("chat template: ...")`; the loader may turn it into a load
    /// error naming the file.
    pub fn new(source: &str, bos_token: &str, eos_token: &str) -> Result<Self> {
        let mut env = Environment::new();
        // Infallible: only delimiters can make a syntax config invalid, and these are the defaults.
        let syntax = minijinja::syntax::SyntaxConfig::builder().trim_blocks(true).lstrip_blocks(true).build();
        env.set_syntax(syntax.expect("default delimiters"));
        env.set_fuel(Some(FUEL));
        env.set_recursion_limit(RECURSION_LIMIT);
        env.set_unknown_method_callback(minijinja_contrib::pycompat::unknown_method_callback);
        env.set_formatter(python_formatter);
        env.add_filter("tojson", tojson);
        for (name, builtin) in [
            ("join", Value::from_function(minijinja::filters::join)),
            ("sum", Value::from_function(minijinja::filters::sum)),
        ] {
            env.add_filter(name, move |state: &mut State, args: Rest<Value>, kwargs: Kwargs| {
                pay_for_printing(state, args.first().unwrap_or(&Value::UNDEFINED))?;
                let mut args = args.0;
                if kwargs.args().next().is_some() {
                    args.push(Value::from(kwargs));
                }
                builtin.call(state, &args)
            });
        }
        env.add_function("raise_exception", raise_exception);
        env.add_function("strftime_now", strftime_now);
        // Compile once now so that a broken template fails at load, not at the first chat. Compiling
        // folds constants, so `{{ 'x' * 10**20 }}` already panics here (capacity overflow).
        match catch_unwind(AssertUnwindSafe(|| env.template_from_named_str(TEMPLATE_NAME, source).map(|_| ()))) {
            Ok(Ok(())) => {}
            Ok(Err(e)) => return Err(Error::InvalidConfig(format!("chat template: {e}"))),
            Err(_) => return Err(panicked()),
        }
        Ok(ChatTemplate {
            env,
            source: source.to_owned(),
            bos_token: bos_token.to_owned(),
            eos_token: eos_token.to_owned(),
        })
    }

    /// Render `messages` with the variables HF transformers passes: `messages`,
    /// `add_generation_prompt`, `bos_token`, `eos_token` and `tools` (none). The template's own
    /// `raise_exception(msg)` becomes `Error::InvalidConfig` carrying `msg`; running out of fuel,
    /// recursing too deep or writing more than `MAX_OUTPUT_BYTES` are `Error::InvalidConfig` too.
    pub fn render(&self, messages: &[ChatMessage], add_generation_prompt: bool) -> Result<String> {
        let messages: Vec<Value> =
            messages.iter().map(|m| context! { role => m.role.as_str(), content => m.content.as_str() }).collect();
        let ctx = context! {
            messages => messages,
            add_generation_prompt => add_generation_prompt,
            bos_token => self.bos_token.as_str(),
            eos_token => self.eos_token.as_str(),
            tools => (),
        };
        let mut out = CappedWriter { buf: Vec::new(), exceeded: false };
        // Formatting a container is not paid for by fuel: bound it by what the fuel could pay for
        // (our patched minijinja, vendor/README.md). Restored whatever happens, panics included.
        struct DisplayBudget(Option<u64>);
        impl Drop for DisplayBudget {
            fn drop(&mut self) {
                minijinja::value::set_display_budget(self.0);
            }
        }
        let budget = DisplayBudget(minijinja::value::set_display_budget(Some(FUEL * BYTES_PER_FUEL)));
        let rendered = catch_unwind(AssertUnwindSafe(|| {
            // Compiling again is cheap next to a forward pass and keeps this struct free of
            // self-references (a minijinja Template borrows its Environment).
            let template = self.env.template_from_named_str(TEMPLATE_NAME, &self.source)?;
            template.render_captured_to(ctx, &mut out).map(|_| ())
        }));
        let formatted_too_much = minijinja::value::display_budget_exhausted();
        drop(budget);
        match rendered {
            Ok(Ok(())) => String::from_utf8(out.buf)
                .map_err(|_| Error::InvalidConfig("chat template: rendered output is not UTF-8".into())),
            Ok(Err(_)) if out.exceeded => Err(Error::InvalidConfig(format!(
                "chat template: the rendered prompt is longer than {MAX_OUTPUT_BYTES} bytes"
            ))),
            Ok(Err(_)) | Err(_) if formatted_too_much => Err(Error::InvalidConfig(format!(
                "chat template: ran out of fuel ({FUEL} units of instructions and memory): it formats a value \
                 larger than the render could pay for"
            ))),
            Ok(Err(e)) => Err(render_error(&e)),
            Err(_) => Err(panicked()),
        }
    }
}

fn panicked() -> Error {
    Error::InvalidConfig("chat template: the template engine panicked (a value too large to allocate?)".into())
}

/// Map a minijinja error to ours, recognising the template's own `raise_exception`.
fn render_error(e: &minijinja::Error) -> Error {
    let mut source: Option<&(dyn std::error::Error + 'static)> = Some(e);
    while let Some(err) = source {
        if let Some(raised) = err.downcast_ref::<RaisedException>() {
            return Error::InvalidConfig(format!("chat template raised an exception: {}", raised.0));
        }
        source = err.source();
    }
    match e.kind() {
        ErrorKind::OutOfFuel => {
            Error::InvalidConfig(format!(
                "chat template: ran out of fuel ({FUEL} units of instructions and memory; an endless loop or a huge value?)"
            ))
        }
        _ => Error::InvalidConfig(format!("chat template: {e}")),
    }
}

/// Collects the output and refuses to grow past `MAX_OUTPUT_BYTES`.
struct CappedWriter {
    buf: Vec<u8>,
    exceeded: bool,
}

impl io::Write for CappedWriter {
    fn write(&mut self, data: &[u8]) -> io::Result<usize> {
        if self.buf.len() + data.len() > MAX_OUTPUT_BYTES {
            self.exceeded = true;
            return Err(io::Error::other("chat template output limit reached"));
        }
        self.buf.extend_from_slice(data);
        Ok(data.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// Bytes of output one unit of fuel pays for (minijinja charges "about n * 64 bytes").
const BYTES_PER_FUEL: u64 = 64;

/// minijinja 3.1 charges fuel for the strings it builds, but not for printing a container: a list that
/// holds one long string many times (`[s] * 10**6`, made lazily for no fuel) prints as gigabytes.
/// Formatting it is bounded by the display budget (`render`), but `join` and `sum` concatenate the items
/// without formatting the list: before them, measure the printed size (stopping as soon as the remaining
/// fuel cannot pay for it), which bounds what they build, and pay for it.
fn pay_for_printing(state: &State, value: &Value) -> std::result::Result<(), minijinja::Error> {
    struct Counter {
        bytes: u64,
        limit: u64,
    }
    impl std::fmt::Write for Counter {
        fn write_str(&mut self, s: &str) -> std::fmt::Result {
            self.bytes += s.len() as u64;
            if self.bytes > self.limit {
                Err(std::fmt::Error)
            } else {
                Ok(())
            }
        }
    }
    let remaining = state.fuel_levels().map_or(FUEL, |(_, remaining)| remaining);
    let mut counter = Counter { bytes: 0, limit: remaining.saturating_mul(BYTES_PER_FUEL) };
    if write!(counter, "{value}").is_err() {
        return Err(minijinja::Error::new(ErrorKind::OutOfFuel, "the value is too large to print"));
    }
    state.consume_fuel(counter.bytes / BYTES_PER_FUEL)
}

/// The error `raise_exception` raises, found again by `render_error`.
#[derive(Debug)]
struct RaisedException(String);

impl std::fmt::Display for RaisedException {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for RaisedException {}

/// `raise_exception(message)`, as HF transformers defines it for chat templates.
fn raise_exception(message: String) -> std::result::Result<Value, minijinja::Error> {
    Err(minijinja::Error::new(ErrorKind::InvalidOperation, message.clone()).with_source(RaisedException(message)))
}

/// Print values as jinja2 does, i.e. with Python's `str()`.
fn python_formatter(
    out: &mut Output<'_>,
    state: &mut State<'_, '_>,
    value: &Value,
) -> std::result::Result<(), minijinja::Error> {
    match value.kind() {
        ValueKind::None | ValueKind::Bool | ValueKind::Seq | ValueKind::Iterable | ValueKind::Map => {
            let mut s = String::new();
            py_repr(value, &mut s, 0)?;
            out.write_str(&s).map_err(|_| minijinja::Error::new(ErrorKind::WriteFailure, "cannot write output"))
        }
        ValueKind::Number if !value.is_integer() => {
            let f = f64::try_from(value.clone()).unwrap_or(f64::NAN);
            out.write_str(&py_float(f))
                .map_err(|_| minijinja::Error::new(ErrorKind::WriteFailure, "cannot write output"))
        }
        _ => minijinja::escape_formatter(out, state, value),
    }
}

fn too_deep() -> minijinja::Error {
    minijinja::Error::new(ErrorKind::InvalidOperation, format!("value nested deeper than {MAX_VALUE_DEPTH} levels"))
}

/// Printing or serialising one value runs no template instructions, so no fuel: cap its size here
/// (a lazily repeated list such as `[1] * 10**9` would otherwise fill memory).
fn check_size(out: &str) -> std::result::Result<(), minijinja::Error> {
    if out.len() > MAX_OUTPUT_BYTES {
        return Err(minijinja::Error::new(
            ErrorKind::InvalidOperation,
            format!("value is longer than {MAX_OUTPUT_BYTES} bytes when printed"),
        ));
    }
    Ok(())
}

/// Python's `repr()` of a value (for strings inside containers; `str()` of containers uses it).
fn py_repr(value: &Value, out: &mut String, depth: usize) -> std::result::Result<(), minijinja::Error> {
    if depth > MAX_VALUE_DEPTH {
        return Err(too_deep());
    }
    match value.kind() {
        ValueKind::Undefined => out.push_str("Undefined"),
        ValueKind::None => out.push_str("None"),
        ValueKind::Bool => out.push_str(if value.is_true() { "True" } else { "False" }),
        ValueKind::Number if !value.is_integer() => out.push_str(&py_float(f64::try_from(value.clone())?)),
        ValueKind::String => py_str_repr(value.as_str().unwrap_or_default(), out),
        ValueKind::Seq | ValueKind::Iterable => {
            out.push('[');
            for (i, item) in value.try_iter()?.enumerate() {
                if i > 0 {
                    out.push_str(", ");
                }
                py_repr(&item, out, depth + 1)?;
                check_size(out)?;
            }
            out.push(']');
        }
        ValueKind::Map => {
            out.push('{');
            for (i, key) in value.try_iter()?.enumerate() {
                if i > 0 {
                    out.push_str(", ");
                }
                py_repr(&key, out, depth + 1)?;
                out.push_str(": ");
                py_repr(&value.get_item(&key)?, out, depth + 1)?;
                check_size(out)?;
            }
            out.push('}');
        }
        _ => {
            let _ = write!(out, "{value}");
        }
    }
    Ok(())
}

/// Python's `repr()` of a string: single quotes unless only double quotes avoid escaping.
fn py_str_repr(s: &str, out: &mut String) {
    let quote = if s.contains('\'') && !s.contains('"') { '"' } else { '\'' };
    out.push(quote);
    for c in s.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c if c == quote => {
                out.push('\\');
                out.push(c);
            }
            c if !py_printable(c) => {
                let cp = u32::from(c);
                let _ = match cp {
                    0..=0xff => write!(out, "\\x{cp:02x}"),
                    0x100..=0xffff => write!(out, "\\u{cp:04x}"),
                    _ => write!(out, "\\U{cp:08x}"),
                };
            }
            c => out.push(c),
        }
    }
    out.push(quote);
}

/// Python's `str.isprintable()` for one character: false for controls, separators other than
/// the space, and the common format characters (the full rule needs Unicode category tables).
fn py_printable(c: char) -> bool {
    if c == ' ' {
        return true;
    }
    !(c.is_control()
        || c.is_whitespace()
        || matches!(c, '\u{ad}' | '\u{200b}'..='\u{200f}' | '\u{202a}'..='\u{202e}' | '\u{2060}'..='\u{2064}' | '\u{feff}'))
}

/// Python's `repr()` of a float: the shortest round-tripping digits, positional from 1e-4 up to
/// 1e16, scientific (`1e+16`, `1.5e-05`) outside that.
fn py_float(f: f64) -> String {
    if f.is_nan() {
        return "nan".into();
    }
    if f.is_infinite() {
        return if f > 0.0 { "inf".into() } else { "-inf".into() };
    }
    if f == 0.0 {
        return if f.is_sign_negative() { "-0.0".into() } else { "0.0".into() };
    }
    // Rust's `{:e}` gives the same shortest round-trip digits as Python's repr.
    let sci = format!("{:e}", f.abs());
    let (mantissa, exp) = sci.split_once('e').unwrap_or((&sci, "0"));
    let exp: i32 = exp.parse().unwrap_or(0);
    let digits: String = mantissa.chars().filter(char::is_ascii_digit).collect();
    let sign = if f < 0.0 { "-" } else { "" };
    if (-4..16).contains(&exp) {
        let point = exp + 1;
        let body = if point <= 0 {
            format!("0.{}{digits}", "0".repeat((-point) as usize))
        } else if point as usize >= digits.len() {
            format!("{digits}{}.0", "0".repeat(point as usize - digits.len()))
        } else {
            format!("{}.{}", &digits[..point as usize], &digits[point as usize..])
        };
        format!("{sign}{body}")
    } else {
        let (first, rest) = digits.split_at(1);
        let frac = if rest.is_empty() { String::new() } else { format!(".{rest}") };
        let esign = if exp < 0 { '-' } else { '+' };
        format!("{sign}{first}{frac}e{esign}{:02}", exp.abs())
    }
}

/// `json.dumps` options, as HF transformers' `tojson(x, ensure_ascii=False, indent=None,
/// separators=None, sort_keys=False)` passes them.
struct JsonOptions {
    ensure_ascii: bool,
    indent: Option<String>,
    item_sep: String,
    key_sep: String,
    sort_keys: bool,
}

/// The `tojson` filter of HF chat templates: Python's `json.dumps`, without jinja2's HTML escaping.
fn tojson(value: &Value, args: Rest<Value>, kwargs: Kwargs) -> std::result::Result<Value, minijinja::Error> {
    let names = ["ensure_ascii", "indent", "separators", "sort_keys"];
    if args.len() > names.len() {
        return Err(minijinja::Error::from(ErrorKind::TooManyArguments));
    }
    let mut params: [Option<Value>; 4] = Default::default();
    for (slot, arg) in params.iter_mut().zip(args.iter()) {
        *slot = Some(arg.clone());
    }
    for (slot, name) in params.iter_mut().zip(names) {
        if let Some(v) = kwargs.get::<Option<Value>>(name)? {
            *slot = Some(v);
        }
    }
    kwargs.assert_all_used()?;
    let [ensure_ascii, indent, separators, sort_keys] = params;
    let indent = match indent {
        None => None,
        Some(v) if v.is_none() => None,
        Some(v) => Some(match v.as_str() {
            Some(s) => s.to_owned(),
            None => " ".repeat(usize::try_from(v.as_i64().unwrap_or(0).clamp(0, MAX_JSON_INDENT)).unwrap_or(0)),
        }),
    };
    let (item_sep, key_sep) = match separators.filter(|v| !v.is_none()) {
        Some(v) => {
            let parts: Vec<Value> = v.try_iter()?.collect();
            match parts.as_slice() {
                [a, b] => (a.to_string(), b.to_string()),
                _ => return Err(minijinja::Error::new(ErrorKind::InvalidOperation, "separators must be two strings")),
            }
        }
        None if indent.is_some() => (",".to_owned(), ": ".to_owned()),
        None => (", ".to_owned(), ": ".to_owned()),
    };
    let opts = JsonOptions {
        ensure_ascii: ensure_ascii.is_some_and(|v| v.is_true()),
        indent,
        item_sep,
        key_sep,
        sort_keys: sort_keys.is_some_and(|v| v.is_true()),
    };
    let mut out = String::new();
    write_json(value, &opts, 0, &mut out)?;
    Ok(Value::from(out))
}

fn write_json(
    value: &Value,
    opts: &JsonOptions,
    level: usize,
    out: &mut String,
) -> std::result::Result<(), minijinja::Error> {
    if level > MAX_VALUE_DEPTH {
        return Err(too_deep());
    }
    let newline = |out: &mut String, level: usize| {
        if let Some(indent) = &opts.indent {
            out.push('\n');
            for _ in 0..level {
                out.push_str(indent);
            }
        }
    };
    match value.kind() {
        ValueKind::None => out.push_str("null"),
        ValueKind::Bool => out.push_str(if value.is_true() { "true" } else { "false" }),
        ValueKind::Number if value.is_integer() => {
            let _ = write!(out, "{value}");
        }
        ValueKind::Number => {
            let f = f64::try_from(value.clone())?;
            out.push_str(&match f {
                f if f.is_nan() => "NaN".to_owned(),
                f if f.is_infinite() => if f > 0.0 { "Infinity" } else { "-Infinity" }.to_owned(),
                f => py_float(f),
            });
        }
        ValueKind::String => json_str(value.as_str().unwrap_or_default(), opts.ensure_ascii, out),
        ValueKind::Seq | ValueKind::Iterable => {
            // Streamed, not collected: the sequence may be a lazy `[x] * 10**9`.
            let mut items = value.try_iter()?.peekable();
            if items.peek().is_none() {
                out.push_str("[]");
                return Ok(());
            }
            out.push('[');
            for (i, item) in items.enumerate() {
                if i > 0 {
                    out.push_str(&opts.item_sep);
                }
                newline(out, level + 1);
                write_json(&item, opts, level + 1, out)?;
                check_size(out)?;
            }
            newline(out, level);
            out.push(']');
        }
        ValueKind::Map => {
            let mut entries = Vec::new();
            for key in value.try_iter()? {
                let item = value.get_item(&key)?;
                let key = match key.kind() {
                    ValueKind::String => key.as_str().unwrap_or_default().to_owned(),
                    ValueKind::None => "null".to_owned(),
                    ValueKind::Bool | ValueKind::Number => {
                        let mut s = String::new();
                        write_json(&key, opts, level + 1, &mut s)?;
                        s
                    }
                    _ => {
                        return Err(minijinja::Error::new(
                            ErrorKind::InvalidOperation,
                            format!("tojson: keys must be str, int, float, bool or None, not {}", key.kind()),
                        ))
                    }
                };
                entries.push((key, item));
            }
            if opts.sort_keys {
                entries.sort_by(|a, b| a.0.cmp(&b.0));
            }
            if entries.is_empty() {
                out.push_str("{}");
                return Ok(());
            }
            out.push('{');
            for (i, (key, item)) in entries.iter().enumerate() {
                if i > 0 {
                    out.push_str(&opts.item_sep);
                }
                newline(out, level + 1);
                json_str(key, opts.ensure_ascii, out);
                out.push_str(&opts.key_sep);
                write_json(item, opts, level + 1, out)?;
                check_size(out)?;
            }
            newline(out, level);
            out.push('}');
        }
        kind => {
            return Err(minijinja::Error::new(
                ErrorKind::InvalidOperation,
                format!("tojson: object of type {kind} is not JSON serializable"),
            ))
        }
    }
    Ok(())
}

/// A JSON string as Python's `json` module writes it.
fn json_str(s: &str, ensure_ascii: bool, out: &mut String) {
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            '\u{8}' => out.push_str("\\b"),
            '\u{c}' => out.push_str("\\f"),
            c if (c as u32) < 0x20 || (ensure_ascii && (c as u32) > 0x7e) => {
                let mut units = [0u16; 2];
                for unit in c.encode_utf16(&mut units) {
                    let _ = write!(out, "\\u{unit:04x}");
                }
            }
            c => out.push(c),
        }
    }
    out.push('"');
}

/// `strftime_now(format)`: the local time formatted like Python's `datetime.now().strftime(format)`.
fn strftime_now(format: String) -> String {
    strftime(&format, &now_local())
}

/// A broken-down local time.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct DateTime {
    year: i64,
    /// 1..=12
    month: u32,
    /// 1..=31
    day: u32,
    hour: u32,
    minute: u32,
    second: u32,
    microsecond: u32,
    /// 0 = Sunday
    weekday: u32,
    /// 0-based day of the year
    yearday: u32,
}

impl DateTime {
    /// The UTC time `secs` after the Unix epoch (Howard Hinnant's days-to-civil algorithm).
    fn from_unix_utc(secs: i64, microsecond: u32) -> Self {
        let days = secs.div_euclid(86_400);
        let tod = secs.rem_euclid(86_400) as u32;
        let z = days + 719_468;
        let era = z.div_euclid(146_097);
        let doe = z.rem_euclid(146_097);
        let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
        let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
        let mp = (5 * doy + 2) / 153;
        let day = (doy - (153 * mp + 2) / 5 + 1) as u32;
        let month = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
        let year = yoe + era * 400 + i64::from(month <= 2);
        let leap = (year % 4 == 0 && year % 100 != 0) || year % 400 == 0;
        const CUMULATIVE: [u32; 12] = [0, 31, 59, 90, 120, 151, 181, 212, 243, 273, 304, 334];
        let yearday = CUMULATIVE[month as usize - 1] + day - 1 + u32::from(leap && month > 2);
        DateTime {
            year,
            month,
            day,
            hour: tod / 3600,
            minute: tod / 60 % 60,
            second: tod % 60,
            microsecond,
            weekday: (days + 4).rem_euclid(7) as u32,
            yearday,
        }
    }
}

fn now_local() -> DateTime {
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default();
    let secs = i64::try_from(now.as_secs()).unwrap_or(0);
    let utc = DateTime::from_unix_utc(secs, now.subsec_micros());
    #[cfg(unix)]
    {
        let t = secs as libc::time_t;
        // SAFETY: `tm` is plain data (a zeroed pointer field is a null pointer); localtime_r reads
        // `t` and writes only into `tm`, and is thread-safe. It returns null on failure.
        let local = unsafe {
            let mut tm: libc::tm = std::mem::zeroed();
            (!libc::localtime_r(&t, &mut tm).is_null()).then_some(tm)
        };
        if let Some(tm) = local {
            return DateTime {
                year: i64::from(tm.tm_year) + 1900,
                month: (tm.tm_mon + 1).clamp(1, 12) as u32,
                day: tm.tm_mday.clamp(1, 31) as u32,
                hour: tm.tm_hour.clamp(0, 23) as u32,
                minute: tm.tm_min.clamp(0, 59) as u32,
                second: tm.tm_sec.clamp(0, 60) as u32,
                microsecond: utc.microsecond,
                weekday: tm.tm_wday.clamp(0, 6) as u32,
                yearday: tm.tm_yday.clamp(0, 365) as u32,
            };
        }
    }
    utc
}

/// C-locale `strftime` as Python's `datetime.strftime` applies it to a naive datetime (`%z` and
/// `%Z` are empty, `%f` is microseconds). Unknown directives are copied through.
fn strftime(format: &str, t: &DateTime) -> String {
    const DAYS: [&str; 7] = ["Sunday", "Monday", "Tuesday", "Wednesday", "Thursday", "Friday", "Saturday"];
    const MONTHS: [&str; 12] = [
        "January",
        "February",
        "March",
        "April",
        "May",
        "June",
        "July",
        "August",
        "September",
        "October",
        "November",
        "December",
    ];
    let day_name = DAYS[t.weekday as usize % 7];
    let month_name = MONTHS[(t.month as usize + 11) % 12];
    let hour12 = if t.hour.is_multiple_of(12) { 12 } else { t.hour % 12 };
    let mut out = String::with_capacity(format.len() + 16);
    let mut chars = format.chars();
    while let Some(c) = chars.next() {
        if c != '%' {
            out.push(c);
            continue;
        }
        let Some(d) = chars.next() else {
            out.push('%');
            break;
        };
        let _ = match d {
            'a' => write!(out, "{}", &day_name[..3]),
            'A' => write!(out, "{day_name}"),
            'b' | 'h' => write!(out, "{}", &month_name[..3]),
            'B' => write!(out, "{month_name}"),
            'c' => write!(
                out,
                "{} {} {:2} {:02}:{:02}:{:02} {}",
                &day_name[..3],
                &month_name[..3],
                t.day,
                t.hour,
                t.minute,
                t.second,
                t.year
            ),
            'C' => write!(out, "{:02}", t.year.div_euclid(100)),
            'd' => write!(out, "{:02}", t.day),
            'D' | 'x' => write!(out, "{:02}/{:02}/{:02}", t.month, t.day, t.year.rem_euclid(100)),
            'e' => write!(out, "{:2}", t.day),
            'f' => write!(out, "{:06}", t.microsecond),
            'F' => write!(out, "{}-{:02}-{:02}", t.year, t.month, t.day),
            'H' => write!(out, "{:02}", t.hour),
            'I' => write!(out, "{hour12:02}"),
            'j' => write!(out, "{:03}", t.yearday + 1),
            'm' => write!(out, "{:02}", t.month),
            'M' => write!(out, "{:02}", t.minute),
            'n' => {
                out.push('\n');
                Ok(())
            }
            'p' => write!(out, "{}", if t.hour < 12 { "AM" } else { "PM" }),
            'r' => write!(out, "{hour12:02}:{:02}:{:02} {}", t.minute, t.second, if t.hour < 12 { "AM" } else { "PM" }),
            'R' => write!(out, "{:02}:{:02}", t.hour, t.minute),
            'S' => write!(out, "{:02}", t.second),
            't' => {
                out.push('\t');
                Ok(())
            }
            'T' | 'X' => write!(out, "{:02}:{:02}:{:02}", t.hour, t.minute, t.second),
            'u' => write!(out, "{}", if t.weekday == 0 { 7 } else { t.weekday }),
            'w' => write!(out, "{}", t.weekday),
            'y' => write!(out, "{:02}", t.year.rem_euclid(100)),
            'Y' => write!(out, "{}", t.year),
            'z' | 'Z' => Ok(()),
            '%' => write!(out, "%"),
            other => write!(out, "%{other}"),
        };
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::{Duration, Instant};

    fn msgs(pairs: &[(&str, &str)]) -> Vec<ChatMessage> {
        pairs.iter().map(|(r, c)| ChatMessage::new(*r, *c)).collect()
    }

    fn render(source: &str) -> Result<String> {
        ChatTemplate::new(source, "<s>", "</s>")?.render(&msgs(&[("user", "hi")]), true)
    }

    fn assert_quick_error(source: &str, needle: &str) {
        let start = Instant::now();
        let err = render(source).unwrap_err();
        let elapsed = start.elapsed();
        assert!(matches!(err, Error::InvalidConfig(_)), "{err:?}");
        assert!(err.to_string().contains(needle), "{err}");
        assert!(elapsed < Duration::from_secs(5), "took {elapsed:?}");
    }

    #[test]
    fn chatml_with_trim_and_lstrip_blocks() {
        let source = "{% for m in messages %}\n  {% if m.role == 'user' %}\n<|im_start|>{{ m['role'] }}\n{{ m.content }}<|im_end|>\n  {% endif %}\n{% endfor %}\n{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}";
        let out = render(source).unwrap();
        assert_eq!(out, "<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\n");
    }

    #[test]
    fn variables_and_python_printing() {
        let out = render("{{ bos_token }}|{{ eos_token }}|{{ tools }}|{{ tools is none }}|{{ true }}|{{ [1, 'a', none] }}|{{ {'k': 2.5} }}").unwrap();
        assert_eq!(out, "<s>|</s>|None|True|True|[1, 'a', None]|{'k': 2.5}");
        assert_eq!(render("{{ messages[0] }}").unwrap(), "{'role': 'user', 'content': 'hi'}");
        assert_eq!(render("{{ \"it's\" ~ '' }}{{ [\"it's\"] }}").unwrap(), "it's[\"it's\"]");
    }

    #[test]
    fn python_string_methods() {
        let out = render("{{ '  x  '.strip() }}|{{ 'a,b'.split(',') | join('+') }}|{{ 'Hi'.startswith('H') }}|{{ messages[0].content.upper() }}").unwrap();
        assert_eq!(out, "x|a+b|True|HI");
        let out = render("{% for k, v in {'a': 1}.items() %}{{ k }}={{ v }}{% endfor %}").unwrap();
        assert_eq!(out, "a=1");
    }

    #[test]
    fn tojson_is_python_json_dumps() {
        let out = render("{{ {'b': 1, 'a': [1, 2.0, 'é\"\\n'], 'c': none, 'd': true} | tojson }}").unwrap();
        assert_eq!(out, r#"{"b": 1, "a": [1, 2.0, "é\"\n"], "c": null, "d": true}"#);
        let out = render("{{ {'b': 1, 'a': [1]} | tojson(indent=2, sort_keys=true) }}").unwrap();
        assert_eq!(out, "{\n  \"a\": [\n    1\n  ],\n  \"b\": 1\n}");
        let out = render("{{ ['é', '<&>'] | tojson(ensure_ascii=true) }}|{{ [] | tojson(indent=4) }}").unwrap();
        assert_eq!(out, r#"["\u00e9", "<&>"]|[]"#);
        let out = render("{{ {'a': 1} | tojson(separators=[',', ':']) }}").unwrap();
        assert_eq!(out, r#"{"a":1}"#);
        assert!(render("{{ 1 | tojson(bogus=1) }}").is_err());
    }

    #[test]
    fn python_float_repr() {
        for (f, s) in [
            (1.0, "1.0"),
            (0.1, "0.1"),
            (-2.5, "-2.5"),
            (1e16, "1e+16"),
            (1e15, "1000000000000000.0"),
            (1.5e-5, "1.5e-05"),
            (0.0001, "0.0001"),
            (123.456, "123.456"),
            (1e100, "1e+100"),
            (-0.0, "-0.0"),
        ] {
            assert_eq!(py_float(f), s, "{f}");
        }
    }

    #[test]
    fn raise_exception_carries_the_message() {
        let err = render("{{ raise_exception('Conversation roles must alternate') }}").unwrap_err();
        assert!(matches!(&err, Error::InvalidConfig(m) if m.contains("Conversation roles must alternate")), "{err}");
        assert!(err.to_string().contains("raised an exception"), "{err}");
    }

    #[test]
    fn syntax_errors_are_invalid_config() {
        let err = ChatTemplate::new("{% for x in %}", "", "").unwrap_err();
        assert!(matches!(&err, Error::InvalidConfig(m) if m.starts_with("chat template:")), "{err}");
        let err = ChatTemplate::new("{% generation %}x{% endgeneration %}", "", "").unwrap_err();
        assert!(matches!(err, Error::InvalidConfig(_)));
    }

    #[test]
    fn loop_controls_work() {
        let out = render("{% for i in range(10) %}{% if i == 3 %}{% break %}{% endif %}{{ i }}{% endfor %}").unwrap();
        assert_eq!(out, "012");
    }

    #[test]
    fn strftime_now_formats_a_date() {
        let out = render("{{ strftime_now('%Y-%m-%d') }}").unwrap();
        assert_eq!(out.len(), 10, "{out}");
        // 2024-02-29 13:05:09 UTC, a Thursday, day 60.
        let t = DateTime::from_unix_utc(1_709_211_909, 42);
        assert_eq!(
            strftime("%a %A %b %B %d %e %H %I %j %m %M %p %S %y %Y %F %T %f %z%Z %% %Q", &t),
            "Thu Thursday Feb February 29 29 13 01 060 02 05 PM 09 24 2024 2024-02-29 13:05:09 000042  % %Q"
        );
        assert_eq!(DateTime::from_unix_utc(0, 0).weekday, 4);
        assert_eq!(DateTime::from_unix_utc(-1, 0).year, 1969);
    }

    #[test]
    fn huge_loops_run_out_of_fuel() {
        assert_quick_error("{% for i in range(10**9) %}x{% endfor %}", "chat template");
        assert_quick_error(
            "{% for i in range(100000) %}{% for j in range(100000) %}{% endfor %}{% endfor %}",
            "instructions",
        );
    }

    #[test]
    fn deep_recursion_is_an_error() {
        assert_quick_error("{% macro f(n) %}{{ f(n + 1) }}{% endmacro %}{{ f(0) }}", "recursion");
        let nested = format!("{}{}", "{% for m in messages %}".repeat(60), "{% endfor %}".repeat(60));
        assert!(render(&nested).is_ok());
    }

    #[test]
    fn impossible_allocations_are_errors() {
        // Sizes known up front (a constant, or computed at render time) are refused before allocating.
        assert_quick_error("{{ 'ab' * 9223372036854775807 }}", "chat template");
        assert_quick_error("{{ 'ab' * (messages | length * 9223372036854775807) }}", "chat template");
    }

    #[test]
    fn huge_values_are_refused() {
        assert_quick_error("{{ [1] * 1000000000 }}", "too large");
        assert_quick_error("{% set x = ([1] * 1000000000) | tojson %}", "too large");
        // Built step by step in a variable, never printed: fuel pays for the memory.
        let doubling =
            "{% set ns = namespace(s='x') %}{% for i in range(40) %}{% set ns.s = ns.s ~ ns.s %}{% endfor %}";
        assert_quick_error(doubling, "fuel");
        assert_quick_error("{% set s = 'x' * 100000000 %}{{ s | length }}", "fuel");
    }

    #[test]
    fn filters_that_pay_for_printing_keep_their_arguments() {
        let source =
            "{{ ['a','b']|join(', ') }}|{{ [{'x':1},{'x':2}]|join(attribute='x') }}|{{ ['a','b']|join(d='-') }}|\
                      {{ [1,2]|sum(start=10) }}|{{ [{'p':2},{'p':3}]|sum(attribute='p') }}|{{ [1,'a']|string }}";
        assert_eq!(render(source).unwrap(), "a, b|12|a-b|13|5|[1, 'a']");
        assert_quick_error("{{ [1]|join(bogus=1) }}", "bogus");
    }

    #[test]
    fn huge_output_is_capped() {
        assert_quick_error("{% for i in range(100000) %}{{ 'xxxxxxxxxxxxxxxxxxxx' }}{% endfor %}", "longer than");
        assert_quick_error("{{ 'x' * 2000000 }}", "longer than");
    }

    #[test]
    fn deep_values_are_an_error_not_a_crash() {
        let source = "{% set ns = namespace(v=[]) %}{% for i in range(5000) %}{% set ns.v = [ns.v] %}{% endfor %}{{ ns.v | tojson }}";
        assert_quick_error(source, "nested deeper");
    }

    #[test]
    fn template_is_send_and_sync() {
        fn check<T: Send + Sync>() {}
        check::<ChatTemplate>();
    }
}
