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
//! Growth over many small steps (comprehensions, rules that each double a
//! value) is not bounded here: the heap ceiling and the time limit (see
//! [`super::engine`]) stop it.
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

/// The prefix of every error from these guards (and of the heap ceiling's).
pub(super) const BOUND: &str = "kbs policy bound";

/// The guarded builtins, with their arities.
const GUARDED: [(&str, u8); 10] = [
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
        _ => Ok(()),
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
/// [`MAX_STRING_BYTES`] of strings, or nested deeper than [`MAX_DEPTH`].
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
    fn every_guard_and_refusal_installs() {
        let mut engine = Engine::new();
        install(&mut engine).unwrap();
        // Installing twice is refused by regorus: the names really are taken.
        assert!(install(&mut engine).is_err());
    }
}
