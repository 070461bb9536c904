//! Bounds on the Rego builtins whose output can be far larger than their
//! input.
//!
//! A policy is code from an operator (an uploaded policy, or a dry run),
//! and the broker evaluates it in its own process. The evaluation time limit
//! (see [`super::engine`]) stops a long loop, but not one builtin call that
//! asks for terabytes at once: `numbers.range(0, 1e12)` makes regorus
//! reserve the whole array in one allocation, and a failed allocation
//! aborts the process. So every builtin whose result size is set by a
//! number, or is a product of its inputs' sizes, is replaced (regorus looks
//! up extensions before builtins) by a guard that computes the result's
//! size from the arguments first and refuses past a bound, then lets the
//! original builtin compute the result, so the answers are regorus' own.
//! The guards also refuse the arguments on which the originals panic (a
//! zero step, a format width that overflows or is not ASCII).
//!
//! Values can share parts: `a1 := [a0, a0]` costs one small array, so 40
//! such rules make a value of 2^40 leaves in a few bytes. The builtins that
//! write a value out or rebuild it whole (`sprintf`, `json.marshal`,
//! `object.union`, `object.union_n`) are guarded by the value's size
//! written out ([`expanded`]), counted with a budget, shared parts each
//! time they appear.
//!
//! Integers are arbitrary-precision in regorus, and their cost grows with
//! their length: parsing one from text, writing one out in decimal and
//! dividing one by another take time quadratic in its length, in one step
//! the time limit cannot interrupt. So the builtins that make a long
//! integer in one call (`bits.lsh`, `product`, `units.parse`,
//! `units.parse_bytes`, `to_number`) refuse a result past
//! [`MAX_INTEGER_BITS`] (or a number written in more than
//! [`MAX_NUMBER_TEXT`] bytes, or with an exponent past
//! [`MAX_DECIMAL_EXPONENT`]), and the builtins that write a value out
//! (`format_int`, and [`expanded`]) refuse an integer past
//! [`MAX_INTEGER_BITS`].
//!
//! Growth over many small steps (comprehensions, rules that each double a
//! value, an integer multiplied by itself rule after rule) is not bounded
//! here: the heap ceiling and the time limit (see [`super::engine`]) stop
//! it. One step of the arithmetic operators is not bounded at all: see the
//! residual risk in [`super::engine`].
//! Two builtins are refused outright: `strings.replace_n` (a product of its
//! inputs, and not needed by release policies) and
//! `json.marshal_with_options` (its indent string is repeated per line).

use std::sync::LazyLock;

use regorus::{CompiledPolicy, Engine, Value};

/// Most elements a bounded builtin returns in one array.
pub const MAX_ELEMENTS: u64 = 100_000;
/// Longest string a bounded builtin returns.
pub const MAX_STRING_BYTES: u64 = 1024 * 1024;
/// Largest width or precision in a `sprintf` format.
pub const MAX_FORMAT_WIDTH: u64 = 1000;
/// Deepest nesting of a value a builtin writes out or rebuilds.
pub const MAX_DEPTH: usize = 1000;
/// Longest integer, in bits, that a bounded builtin makes or writes out
/// (1,233 decimal digits).
pub const MAX_INTEGER_BITS: u64 = 4096;
/// Longest text a bounded builtin reads a number from.
pub const MAX_NUMBER_TEXT: usize = 1000;
/// Largest decimal exponent (`1e1000`) a bounded builtin reads.
pub const MAX_DECIMAL_EXPONENT: u64 = 1000;

/// The prefix of every error from these guards (and of the heap ceiling's).
pub(super) const BOUND: &str = "kbs policy bound";

/// The guarded builtins, with their arities.
const GUARDED: [(&str, u8); 16] = [
    ("numbers.range", 2),
    ("numbers.range_step", 3),
    ("sprintf", 2),
    ("concat", 2),
    ("replace", 3),
    ("split", 2),
    ("array.concat", 2),
    ("json.marshal", 1),
    ("object.union", 2),
    ("object.union_n", 1),
    ("bits.lsh", 2),
    ("product", 1),
    ("units.parse", 1),
    ("units.parse_bytes", 1),
    ("to_number", 1),
    ("format_int", 2),
];
/// The builtins no policy may call.
const REFUSED: [(&str, u8); 2] = [("strings.replace_n", 2), ("json.marshal_with_options", 2)];

/// The original builtins, each compiled once in a module of its own that
/// has no guards, so a guard can call through to it.
static ORIGINALS: LazyLock<Result<Vec<(&'static str, CompiledPolicy)>, String>> = LazyLock::new(|| {
    GUARDED
        .iter()
        .map(|&(name, arity)| {
            let args = (0..arity).map(|i| format!("input[{i}]")).collect::<Vec<_>>().join(", ");
            let mut engine = Engine::new();
            engine
                .add_policy("builtin.rego".into(), format!("package kbs.builtin\nout := {name}({args})\n"))
                .map_err(|e| format!("{e:#}"))?;
            let compiled =
                engine.compile_with_entrypoint(&"data.kbs.builtin.out".into()).map_err(|e| format!("{e:#}"))?;
            Ok((name, compiled))
        })
        .collect()
});

/// Adds the guards to an engine, before its policy is compiled.
pub fn install(engine: &mut Engine) -> Result<(), String> {
    let originals = ORIGINALS.as_ref().map_err(|e| format!("bounded builtins: {e}"))?;
    for (name, original) in originals {
        let arity = GUARDED.iter().find(|(n, _)| n == name).map_or(0, |(_, a)| *a);
        let (name, original) = (*name, original.clone());
        let guard = move |args: Vec<Value>| -> anyhow::Result<Value> {
            check(name, &args).map_err(|e| anyhow::anyhow!("{BOUND}: {name}: {e}"))?;
            let out = original.eval_with_input(Value::from(args))?;
            let size = match &out {
                Value::String(s) => s.len() as u64,
                _ => 0,
            };
            if size > MAX_STRING_BYTES {
                anyhow::bail!("{BOUND}: {name}: the result is over {MAX_STRING_BYTES} bytes");
            }
            Ok(out)
        };
        engine.add_extension(name.into(), arity, Box::new(guard)).map_err(|e| format!("{e:#}"))?;
    }
    for (name, arity) in REFUSED {
        let refuse =
            move |_: Vec<Value>| -> anyhow::Result<Value> { anyhow::bail!("{BOUND}: {name} is not available") };
        engine.add_extension(name.into(), arity, Box::new(refuse)).map_err(|e| format!("{e:#}"))?;
    }
    Ok(())
}

/// Refuses arguments whose result would be past the bounds. Arguments of
/// the wrong type pass: the original builtin refuses them as it always has.
fn check(name: &str, args: &[Value]) -> Result<(), String> {
    match (name, args) {
        ("numbers.range", [from, to]) => match (integer(from), integer(to)) {
            (Some(from), Some(to)) => elements(from.abs_diff(to).saturating_add(1)),
            _ => not_integers(from, to),
        },
        ("numbers.range_step", [from, to, step]) => match (integer(from), integer(to), integer(step)) {
            (_, _, Some(step)) if step < 1 => Err("the step must be a positive integer".into()),
            (Some(from), Some(to), Some(step)) => elements((from.abs_diff(to) / step.unsigned_abs()).saturating_add(1)),
            (_, _, None) if is_number(step) => Err("the step must be a positive integer".into()),
            _ => not_integers(from, to),
        },
        ("sprintf", [Value::String(format), values]) => {
            widths(format)?;
            expanded(values)
        }
        ("json.marshal", [value]) | ("object.union_n", [value]) => expanded(value),
        ("object.union", [a, b]) => {
            expanded(a)?;
            expanded(b)
        }
        ("concat", [Value::String(separator), items]) => {
            let (count, bytes) = match items {
                Value::Array(a) => (a.len() as u64, a.iter().map(string_len).sum::<u64>()),
                Value::Set(s) => (s.len() as u64, s.iter().map(string_len).sum::<u64>()),
                _ => return Ok(()),
            };
            let joints = count.saturating_sub(1).saturating_mul(separator.len() as u64);
            string(bytes.saturating_add(joints))
        }
        ("replace", [Value::String(s), Value::String(old), Value::String(new)]) => {
            let matches = match old.is_empty() {
                true => s.chars().count() as u64 + 1,
                false => s.matches(old.as_ref()).count() as u64,
            };
            string((s.len() as u64).saturating_add(matches.saturating_mul(new.len() as u64)))
        }
        ("split", [Value::String(s), Value::String(separator)]) => elements(match separator.is_empty() {
            true => s.chars().count() as u64,
            false => s.matches(separator.as_ref()).count() as u64 + 1,
        }),
        ("array.concat", [Value::Array(a), Value::Array(b)]) => elements(a.len() as u64 + b.len() as u64),
        ("bits.lsh", [x, Value::Number(shift)]) => match shift.as_u64() {
            Some(shift) => integer_bits(bits(x).saturating_add(shift)),
            None => Ok(()),
        },
        ("product", [Value::Array(a)]) => integer_bits(a.iter().map(bits).fold(0, u64::saturating_add)),
        ("product", [Value::Set(s)]) => integer_bits(s.iter().map(bits).fold(0, u64::saturating_add)),
        ("units.parse" | "units.parse_bytes" | "to_number", [Value::String(s)]) => number_text(s),
        ("format_int", [n, _]) => integer_bits(bits(n)),
        _ => Ok(()),
    }
}

/// The length in bits of an integer's magnitude; 64 for any other number
/// (a float is at most a `f64`), 0 for other types.
fn bits(value: &Value) -> u64 {
    match value {
        Value::Number(n) if n.as_i64().is_some() || n.as_u64().is_some() || !n.is_integer() => 64,
        Value::Number(n) => n.as_big().map_or(64, |b| b.bits()),
        _ => 0,
    }
}

fn integer_bits(bits: u64) -> Result<(), String> {
    match bits > MAX_INTEGER_BITS {
        true => Err(format!("an integer of {bits} bits, at most {MAX_INTEGER_BITS}")),
        false => Ok(()),
    }
}

/// A number written as text: at most [`MAX_NUMBER_TEXT`] bytes, and a
/// decimal exponent (the digits after an `e` in the part that ends with
/// the last digit, as the parsers split it) at most
/// [`MAX_DECIMAL_EXPONENT`]. Anything that does not look like an exponent
/// goes to the original, which reads it or refuses it as it always has.
fn number_text(s: &str) -> Result<(), String> {
    if s.len() > MAX_NUMBER_TEXT {
        return Err(format!("a number of {} bytes of text, at most {MAX_NUMBER_TEXT}", s.len()));
    }
    let number = s.rfind(|c: char| c.is_ascii_digit()).map_or("", |last| &s[..=last]);
    let Some(at) = number.rfind(['e', 'E']) else { return Ok(()) };
    let digits = number[at + 1..].trim_start_matches(['+', '-']);
    if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return Ok(());
    }
    let exponent = digits.bytes().fold(0u64, |e, d| e.saturating_mul(10).saturating_add(u64::from(d - b'0')));
    match exponent > MAX_DECIMAL_EXPONENT {
        true => Err(format!("a decimal exponent of {exponent}, at most {MAX_DECIMAL_EXPONENT}")),
        false => Ok(()),
    }
}

fn integer(value: &Value) -> Option<i64> {
    match value {
        Value::Number(n) if n.is_integer() => n.as_i64(),
        _ => None,
    }
}

fn is_number(value: &Value) -> bool {
    matches!(value, Value::Number(_))
}

/// Integers past `i64` are refused; other numbers (fractions) and other
/// types go to the original, which answers undefined or refuses them.
fn not_integers(from: &Value, to: &Value) -> Result<(), String> {
    let huge = |v: &Value| matches!(v, Value::Number(n) if n.is_integer() && n.as_i64().is_none());
    match huge(from) || huge(to) {
        true => Err("the range is over 64-bit integers".into()),
        false => Ok(()),
    }
}

fn string_len(value: &Value) -> u64 {
    match value {
        Value::String(s) => s.len() as u64,
        _ => 0,
    }
}

fn elements(count: u64) -> Result<(), String> {
    match count > MAX_ELEMENTS {
        true => Err(format!("{count} elements, at most {MAX_ELEMENTS}")),
        false => Ok(()),
    }
}

fn string(bytes: u64) -> Result<(), String> {
    match bytes > MAX_STRING_BYTES {
        true => Err(format!("a result of {bytes} bytes, at most {MAX_STRING_BYTES}")),
        false => Ok(()),
    }
}

/// Refuses a value whose size written out is past the bounds: more than
/// [`MAX_ELEMENTS`] values (elements, entries, scalars), more than
/// [`MAX_STRING_BYTES`] of strings, an integer over [`MAX_INTEGER_BITS`]
/// (written out in decimal in time quadratic in its length), or nested
/// deeper than [`MAX_DEPTH`].
/// A part shared by several parents counts each time it appears, as it is
/// written out; counting stops at the first bound, so the check costs at
/// most the bounds' worth of work however large the value would be.
pub(super) fn expanded(value: &Value) -> Result<(), String> {
    let (mut nodes, mut bytes) = (0u64, 0u64);
    count(value, 0, &mut nodes, &mut bytes)
}

fn count(value: &Value, depth: usize, nodes: &mut u64, bytes: &mut u64) -> Result<(), String> {
    *nodes += 1;
    if *nodes > MAX_ELEMENTS {
        return Err(format!("a value of over {MAX_ELEMENTS} elements written out"));
    }
    if depth > MAX_DEPTH {
        return Err(format!("a value nested over {MAX_DEPTH} deep"));
    }
    match value {
        Value::String(s) => {
            *bytes = bytes.saturating_add(s.len() as u64);
            match *bytes > MAX_STRING_BYTES {
                true => Err(format!("a value of over {MAX_STRING_BYTES} bytes of strings written out")),
                false => Ok(()),
            }
        }
        Value::Number(_) => integer_bits(bits(value)).map_err(|e| format!("{e} written out")),
        Value::Array(items) => items.iter().try_for_each(|v| count(v, depth + 1, nodes, bytes)),
        Value::Set(items) => items.iter().try_for_each(|v| count(v, depth + 1, nodes, bytes)),
        Value::Object(entries) => entries.iter().try_for_each(|(k, v)| {
            count(k, depth + 1, nodes, bytes)?;
            count(v, depth + 1, nodes, bytes)
        }),
        _ => Ok(()),
    }
}

/// Every width and precision in a format is ASCII digits and at most
/// [`MAX_FORMAT_WIDTH`] (regorus reads them as `u32` digits with Unicode's
/// idea of a digit, and pads to them).
fn widths(format: &str) -> Result<(), String> {
    let mut chars = format.chars().peekable();
    while let Some(c) = chars.next() {
        if c != '%' {
            continue;
        }
        if chars.peek() == Some(&'%') {
            chars.next();
            continue;
        }
        let mut width: u64 = 0;
        while let Some(&d) = chars.peek() {
            if d == '.' && width == 0 {
                chars.next();
                continue;
            }
            if !d.is_numeric() {
                break;
            }
            let digit = d.to_digit(10).filter(|_| d.is_ascii_digit()).ok_or("a format width must be ASCII digits")?;
            width = width.saturating_mul(10).saturating_add(u64::from(digit));
            if width > MAX_FORMAT_WIDTH {
                return Err(format!("a format width or precision over {MAX_FORMAT_WIDTH}"));
            }
            chars.next();
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn format_widths() {
        assert!(widths("%d %5d %05d %.2f %% %v").is_ok());
        assert!(widths("%1000d").is_ok());
        assert!(widths("%1001d").is_err());
        assert!(widths("%.1001f").is_err());
        assert!(widths("%00000000000000000000000000001d").is_ok());
        assert!(widths("%99999999999999999999999999999999999d").is_err());
        assert!(widths("%\u{b2}d").is_err());
        assert!(widths("%\u{663}d").is_err());
        assert!(widths("100%").is_ok());
    }

    #[test]
    fn values_are_measured_as_written_out() {
        let leaf = Value::from("0123456789abcdef");
        assert!(expanded(&leaf).is_ok());
        // 2^40 leaves in 40 small arrays: refused after the budget, at once.
        let mut shared = Value::from(vec![leaf]);
        for _ in 0..40 {
            shared = Value::from(vec![shared.clone(), shared]);
        }
        assert!(expanded(&shared).unwrap_err().contains("elements"));
        // Few values, many bytes.
        let big = Value::from("x".repeat(600 * 1024));
        assert!(expanded(&Value::from(vec![big.clone()])).is_ok());
        assert!(expanded(&Value::from(vec![big.clone(), big])).unwrap_err().contains("bytes"));
        // Deep nesting.
        let mut deep = Value::Null;
        for _ in 0..=MAX_DEPTH {
            deep = Value::from(vec![deep]);
        }
        assert!(expanded(&deep).unwrap_err().contains("deep"));
    }

    #[test]
    fn numbers_as_text() {
        for ok in ["1", "1e1000", "1E-1000", "2.5e+3Mi", "10E", "1eb", "e5", "1e", "0x1e5", ""] {
            assert!(number_text(ok).is_ok(), "{ok}");
        }
        for bad in ["1e1001", "1E+99999999999999999999999", "3e5000Ki", "-1.0e-2000"] {
            assert!(number_text(bad).unwrap_err().contains("exponent"), "{bad}");
        }
        assert!(number_text(&"1".repeat(MAX_NUMBER_TEXT)).is_ok());
        assert!(number_text(&"1".repeat(MAX_NUMBER_TEXT + 1)).unwrap_err().contains("bytes"));
    }

    #[test]
    fn every_guard_and_refusal_installs() {
        let mut engine = Engine::new();
        install(&mut engine).unwrap();
        // Installing twice is refused by regorus: the names really are taken.
        assert!(install(&mut engine).is_err());
    }
}
