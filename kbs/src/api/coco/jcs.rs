//! RFC 8785 JSON Canonicalization Scheme (JCS).
//!
//! The CoCo guest binds its evidence to `HASH(JCS(runtime data))`, so the
//! broker must reproduce the client's canonical bytes exactly:
//! - objects: members sorted by the UTF-16 code units of their names;
//! - strings: only `"`, `\`, and control characters are escaped, with the
//!   short forms `\b \t \n \f \r` and `\u00xx` (lowercase hex) otherwise;
//! - numbers: IEEE-754 doubles printed as ECMAScript `Number.toString`;
//! - no whitespace.

use serde_json::{Map, Value};

/// Why a value has no canonical form.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum JcsError {
    /// A number that is not a finite double (cannot occur for parsed JSON).
    #[error("number is not a finite IEEE-754 double")]
    NonFinite,
    /// Nested deeper than [`MAX_DEPTH`].
    #[error("value nested deeper than {MAX_DEPTH}")]
    TooDeep,
}

/// Deepest nesting canonicalized; deeper input is refused.
pub const MAX_DEPTH: usize = 64;

/// The canonical bytes of `value`.
pub fn to_vec(value: &Value) -> Result<Vec<u8>, JcsError> {
    let mut out = String::new();
    write_value(&mut out, value, 0)?;
    Ok(out.into_bytes())
}

fn write_value(out: &mut String, value: &Value, depth: usize) -> Result<(), JcsError> {
    if depth > MAX_DEPTH {
        return Err(JcsError::TooDeep);
    }
    match value {
        Value::Null => out.push_str("null"),
        Value::Bool(true) => out.push_str("true"),
        Value::Bool(false) => out.push_str("false"),
        Value::Number(n) => {
            let f = n.as_f64().ok_or(JcsError::NonFinite)?;
            out.push_str(&number(f)?);
        }
        Value::String(s) => write_string(out, s),
        Value::Array(items) => {
            out.push('[');
            for (i, item) in items.iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                write_value(out, item, depth + 1)?;
            }
            out.push(']');
        }
        Value::Object(map) => write_object(out, map, depth)?,
    }
    Ok(())
}

fn write_object(out: &mut String, map: &Map<String, Value>, depth: usize) -> Result<(), JcsError> {
    let mut members: Vec<(&String, &Value)> = map.iter().collect();
    members.sort_by(|(a, _), (b, _)| a.encode_utf16().cmp(b.encode_utf16()));
    out.push('{');
    for (i, (name, value)) in members.into_iter().enumerate() {
        if i > 0 {
            out.push(',');
        }
        write_string(out, name);
        out.push(':');
        write_value(out, value, depth + 1)?;
    }
    out.push('}');
    Ok(())
}

fn write_string(out: &mut String, s: &str) {
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\u{08}' => out.push_str("\\b"),
            '\t' => out.push_str("\\t"),
            '\n' => out.push_str("\\n"),
            '\u{0c}' => out.push_str("\\f"),
            '\r' => out.push_str("\\r"),
            c if u32::from(c) < 0x20 => out.push_str(&format!("\\u{:04x}", u32::from(c))),
            c => out.push(c),
        }
    }
    out.push('"');
}

/// ECMAScript `Number.prototype.toString` for a finite double
/// (ECMA-262 Number::toString, radix 10), as RFC 8785 §3.2.2.3 requires.
pub fn number(f: f64) -> Result<String, JcsError> {
    if !f.is_finite() {
        return Err(JcsError::NonFinite);
    }
    if f == 0.0 {
        // Both +0 and -0.
        return Ok("0".into());
    }
    let sign = if f < 0.0 { "-" } else { "" };
    // Rust's `{:e}` prints the shortest digit count k that round-trips.
    // Among the k-digit decimals that round-trip, ECMAScript wants the one
    // closest to the value: the correctly rounded k-digit form, when it
    // round-trips (it does except at rare power-of-two boundaries).
    let shortest = format!("{:e}", f.abs());
    let k_digits = shortest.split_once('e').map_or(0, |(m, _)| m.chars().filter(char::is_ascii_digit).count());
    let closest = format!("{:.*e}", k_digits.saturating_sub(1), f.abs());
    let sci = if closest.parse::<f64>() == Ok(f.abs()) { closest } else { shortest };
    let (mantissa, exp) = sci.split_once('e').ok_or(JcsError::NonFinite)?;
    let exp: i32 = exp.parse().map_err(|_| JcsError::NonFinite)?;
    let digits: String = mantissa.chars().filter(char::is_ascii_digit).collect();
    let k = i32::try_from(digits.len()).map_err(|_| JcsError::NonFinite)?;
    // n is the position of the decimal point relative to the digits.
    let n = exp + 1;
    let body = if k <= n && n <= 21 {
        // Integer: digits followed by n - k zeros.
        format!("{digits}{}", "0".repeat(usize::try_from(n - k).unwrap_or(0)))
    } else if 0 < n && n <= 21 {
        let split = usize::try_from(n).unwrap_or(0);
        let (int, frac) = digits.split_at(split.min(digits.len()));
        format!("{int}.{frac}")
    } else if -6 < n && n <= 0 {
        format!("0.{}{digits}", "0".repeat(usize::try_from(-n).unwrap_or(0)))
    } else {
        let e = n - 1;
        let e_sign = if e < 0 { '-' } else { '+' };
        let mut chars = digits.chars();
        let first: String = chars.next().map(String::from).unwrap_or_default();
        let rest: String = chars.collect();
        if rest.is_empty() {
            format!("{first}e{e_sign}{}", e.abs())
        } else {
            format!("{first}.{rest}e{e_sign}{}", e.abs())
        }
    };
    Ok(format!("{sign}{body}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn canon(text: &str) -> String {
        String::from_utf8(to_vec(&serde_json::from_str(text).unwrap()).unwrap()).unwrap()
    }

    /// RFC 8785 Appendix B: IEEE-754 bit patterns and their canonical text.
    #[test]
    fn rfc8785_appendix_b_numbers() {
        let vectors: &[(u64, &str)] = &[
            (0x0000000000000000, "0"),
            (0x8000000000000000, "0"),
            (0x0000000000000001, "5e-324"),
            (0x8000000000000001, "-5e-324"),
            (0x7fefffffffffffff, "1.7976931348623157e+308"),
            (0xffefffffffffffff, "-1.7976931348623157e+308"),
            (0x4340000000000000, "9007199254740992"),
            (0xc340000000000000, "-9007199254740992"),
            (0x4430000000000000, "295147905179352830000"),
            (0x44b52d02c7e14af5, "9.999999999999997e+22"),
            (0x44b52d02c7e14af6, "1e+23"),
            (0x44b52d02c7e14af7, "1.0000000000000001e+23"),
            (0x444b1ae4d6e2ef4e, "999999999999999700000"),
            (0x444b1ae4d6e2ef4f, "999999999999999900000"),
            (0x444b1ae4d6e2ef50, "1e+21"),
            (0x3eb0c6f7a0b5ed8c, "9.999999999999997e-7"),
            (0x3eb0c6f7a0b5ed8d, "0.000001"),
            (0x41b3de4355555553, "333333333.3333332"),
            (0x41b3de4355555554, "333333333.33333325"),
            (0x41b3de4355555555, "333333333.3333333"),
            (0x41b3de4355555556, "333333333.3333334"),
            (0x41b3de4355555557, "333333333.33333343"),
            (0xbecbf647612f3696, "-0.0000033333333333333333"),
            (0x43143ff3c1cb0959, "1424953923781206.2"),
        ];
        for (bits, expected) in vectors {
            assert_eq!(number(f64::from_bits(*bits)).unwrap(), *expected, "{bits:016x}");
        }
        assert_eq!(number(f64::NAN), Err(JcsError::NonFinite));
        assert_eq!(number(f64::INFINITY), Err(JcsError::NonFinite));
    }

    /// RFC 8785 §3.2.4: the whole transformation on the RFC's example.
    #[test]
    fn rfc8785_example() {
        let input = r#"{
          "numbers": [333333333.33333329, 1E30, 4.50, 2e-3, 0.000000000000000000000000001],
          "string": "\u20ac$\u000F\u000aA'\u0042\u0022\u005c\\\"\/",
          "literals": [null, true, false]
        }"#;
        let expected = "{\"literals\":[null,true,false],\"numbers\":[333333333.3333333,1e+30,4.5,0.002,1e-27],\
                        \"string\":\"\u{20ac}$\\u000f\\nA'B\\\"\\\\\\\\\\\"/\"}";
        assert_eq!(canon(input), expected);
    }

    /// RFC 8785 §3.2.3: member names sort by UTF-16 code units, so the
    /// surrogate pair of U+1F600 sorts before U+FB33.
    #[test]
    fn rfc8785_sorting() {
        let input = r#"{
          "\u20ac": "Euro Sign",
          "\r": "Carriage Return",
          "\ufb33": "Hebrew Letter Dalet With Dagesh",
          "1": "One",
          "\ud83d\ude00": "Emoji: Grinning Face",
          "\u0080": "Control",
          "\u00f6": "Latin Small Letter O With Diaeresis"
        }"#;
        let value: Value = serde_json::from_str(input).unwrap();
        let out = String::from_utf8(to_vec(&value).unwrap()).unwrap();
        let names: Vec<&str> = ["\r", "1", "\u{80}", "\u{f6}", "\u{20ac}", "\u{1f600}", "\u{fb33}"].to_vec();
        let mut last = 0;
        for name in names {
            let quoted = String::from_utf8(to_vec(&Value::String(name.into())).unwrap()).unwrap();
            let at = out.find(&format!("{quoted}:")).unwrap();
            assert!(at >= last, "{name:?} out of order in {out}");
            last = at;
        }
    }

    #[test]
    fn nested_and_whitespace_free() {
        assert_eq!(canon(r#"{ "b": [1, {"z": 1, "a": 2}], "a": {} }"#), r#"{"a":{},"b":[1,{"a":2,"z":1}]}"#);
        assert_eq!(canon("[1.0, -0.0, 100, 1e21, 1e-7, 123e-9]"), "[1,0,100,1e+21,1e-7,1.23e-7]");
    }

    #[test]
    fn depth_is_capped() {
        let deep = format!("{}{}", "[".repeat(MAX_DEPTH + 2), "]".repeat(MAX_DEPTH + 2));
        let value: Value = serde_json::from_str(&deep).unwrap();
        assert_eq!(to_vec(&value), Err(JcsError::TooDeep));
    }
}
