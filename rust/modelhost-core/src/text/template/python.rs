//! Python's printing for chat templates: values print as jinja2 prints them (`str()` and `repr()`), and
//! `tojson` is Python's `json.dumps`, so a rendered prompt matches HF transformers' byte for byte. Printing
//! runs no template instructions, so no fuel: sizes and depths are capped here instead.

use std::fmt::Write as _;

use minijinja::value::{Kwargs, Rest, ValueKind};
use minijinja::{ErrorKind, Output, State, Value};

use super::MAX_OUTPUT_BYTES;

/// Nesting depth of values printed or serialised by `tojson` (deeper ones are an error rather than
/// a stack overflow).
const MAX_VALUE_DEPTH: usize = 128;
/// `tojson(indent=n)` beyond this many spaces is clamped (Python has no limit, no template needs one).
const MAX_JSON_INDENT: i64 = 64;

/// Print values as jinja2 does, i.e. with Python's `str()`.
pub(super) fn python_formatter(
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
pub(super) fn tojson(value: &Value, args: Rest<Value>, kwargs: Kwargs) -> std::result::Result<Value, minijinja::Error> {
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

#[cfg(test)]
mod tests {
    use super::*;

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
}
