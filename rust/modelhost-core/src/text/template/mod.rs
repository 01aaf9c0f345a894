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

use minijinja::value::{Kwargs, Rest};
use minijinja::{context, Environment, ErrorKind, State, Value};

use python::{python_formatter, tojson};
use strftime::strftime_now;

use crate::error::{Error, Result};

mod python;
mod strftime;

/// A render stops with an error once its output would pass this many bytes (real prompts are a few
/// kilobytes; a context window of text is well under this).
pub const MAX_OUTPUT_BYTES: usize = 1 << 20;
/// Fuel for one render: minijinja charges one unit per instruction and about one per 64 bytes
/// allocated, so this bounds a render to ~2M instructions (milliseconds) and ~128 MB. Rendering a
/// chat as long as `MAX_OUTPUT_BYTES` (1000 messages of 1 kB) costs about 100k.
pub const FUEL: u64 = 2_000_000;
/// Nesting depth of loops, macro calls and includes (minijinja counts a macro call as several).
pub const RECURSION_LIMIT: usize = 200;

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
    fn strftime_now_is_a_global() {
        let out = render("{{ strftime_now('%Y-%m-%d') }}").unwrap();
        assert_eq!(out.len(), 10, "{out}");
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
