//! RFC 8785 (JSON Canonicalization Scheme) and the SHA-256 that binds an approval to the
//! exact arguments of a call.
//!
//! Parsing is stricter than plain JSON where a looser parser would let two different calls
//! share one hash: duplicate object keys are rejected (parsers disagree on which one wins),
//! and a number is accepted only if canonicalisation loses nothing: the exact decimal value
//! of its text must equal the exact value of its RFC 8785 spelling (the nearest double,
//! printed shortest, as ECMAScript does). So `0.1`, `1.0`, `1e16` and
//! `10000000000000000` are accepted, while `18446744073709551617`, `9007199254740993`,
//! `0.10000000000000001` (which RFC 8785 would round, while an agent backend in Python or Go
//! would run them exactly) are refused: two texts with the same hash mean the same numbers to
//! every parser, exact or not. This holds for integers that are doubles too: 2^60 written out
//! (`1152921504606846976`) is refused, because RFC 8785 spells it `1152921504606847000`,
//! a different integer that is accepted and would share its hash. `-0` (and `-0.0`) is
//! accepted and spelled `0`: its exact value is zero (RFC 8785 drops the sign too). Only
//! JSON's four whitespace characters (space, tab, LF, CR) are whitespace.

use serde::de::{self, Deserializer, MapAccess, SeqAccess, Visitor};
use sha2::{Digest, Sha256};
use std::collections::HashSet;
use std::fmt;

/// A parsed JSON value, kept in the shape RFC 8785 needs (numbers as IEEE doubles).
#[derive(Debug, Clone, PartialEq)]
pub enum Json {
    Null,
    Bool(bool),
    Number(f64),
    String(String),
    Array(Vec<Json>),
    /// Members in the order they came; [`canonicalize`] sorts them.
    Object(Vec<(String, Json)>),
}

/// Arguments of a call: the canonical text and its hex SHA-256.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CanonicalArguments {
    pub canonical: String,
    pub sha256: String,
}

/// Why a text is not acceptable as a call's arguments.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ArgumentsError(pub String);

impl fmt::Display for ArgumentsError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for ArgumentsError {}

/// Parses `text` as the arguments of a call: a JSON object. Empty text means `{}`.
pub fn parse_arguments(text: &str, max_bytes: usize) -> Result<Json, ArgumentsError> {
    if text.len() > max_bytes {
        return Err(ArgumentsError(format!(
            "is {} bytes; at most {max_bytes}",
            text.len()
        )));
    }
    // Stops at the first byte that is not whitespace: `{`, for nearly every call.
    if text.bytes().all(|b| is_json_whitespace(char::from(b))) {
        return Ok(Json::Object(Vec::new()));
    }
    let value = parse(text)?;
    match value {
        Json::Object(_) => Ok(value),
        _ => Err(ArgumentsError("must be a JSON object".into())),
    }
}

/// Parses any JSON text strictly (see the module comment).
pub fn parse(text: &str) -> Result<Json, ArgumentsError> {
    let mut de = serde_json::Deserializer::from_str(text);
    let value = de
        .deserialize_any(JsonVisitor)
        .map_err(|e| ArgumentsError(format!("is not valid JSON: {e}")))?;
    de.end()
        .map_err(|e| ArgumentsError(format!("is not valid JSON: {e}")))?;
    // Each number token is checked against the double that was stored for it (and will be
    // hashed), not against a second parse of its own: the tree keeps document order, so the
    // n-th number in the tree is the n-th token in the text.
    let mut doubles = Vec::new();
    numbers_in_order(&value, &mut doubles);
    if doubles.is_empty() {
        // No number in the tree, so none in the text: outside strings, valid JSON has a
        // number token only where it has a number. Most calls' arguments take this way,
        // without scanning their text again.
        return Ok(value);
    }
    let mut tokens = number_tokens(text);
    for double in doubles {
        let token = tokens.next().ok_or_else(miscounted)?;
        check_exact(token, double)?;
    }
    if tokens.next().is_some() {
        return Err(miscounted());
    }
    Ok(value)
}

/// The numbers of a parsed value in document order (object members in the order they came).
fn numbers_in_order(value: &Json, out: &mut Vec<f64>) {
    match value {
        Json::Number(n) => out.push(*n),
        Json::Array(items) => items.iter().for_each(|item| numbers_in_order(item, out)),
        Json::Object(members) => members
            .iter()
            .for_each(|(_, item)| numbers_in_order(item, out)),
        Json::Null | Json::Bool(_) | Json::String(_) => {}
    }
}

/// The text's number tokens and the parsed numbers did not pair up (a bug, never the
/// sender's fault); refusing is the safe answer.
fn miscounted() -> ArgumentsError {
    ArgumentsError("numbers could not be checked (internal error)".into())
}

/// Space, tab, line feed and carriage return: JSON's whitespace (RFC 8259 §2).
fn is_json_whitespace(c: char) -> bool {
    matches!(c, ' ' | '\t' | '\n' | '\r')
}

/// The number tokens of a valid JSON text, in order (everything outside strings that starts
/// with `-` or a digit).
fn number_tokens(text: &str) -> impl Iterator<Item = &str> {
    let bytes = text.as_bytes();
    let mut i = 0;
    std::iter::from_fn(move || {
        while i < bytes.len() {
            match bytes[i] {
                b'"' => {
                    i += 1;
                    while i < bytes.len() && bytes[i] != b'"' {
                        // An escape takes the next byte with it (`\"` does not end it).
                        i += if bytes[i] == b'\\' { 2 } else { 1 };
                    }
                    i += 1;
                }
                b'-' | b'0'..=b'9' => {
                    let start = i;
                    while i < bytes.len()
                        && matches!(bytes[i], b'0'..=b'9' | b'-' | b'+' | b'.' | b'e' | b'E')
                    {
                        i += 1;
                    }
                    return Some(&text[start..i]);
                }
                _ => i += 1,
            }
        }
        None
    })
}

/// Refuses a number token whose exact value is not that of `double` (the value it was
/// parsed to) as RFC 8785 spells it. Linear in the token's length.
fn check_exact(token: &str, double: f64) -> Result<(), ArgumentsError> {
    if !double.is_finite() {
        return Err(ArgumentsError(format!(
            "number {} is out of range",
            shown(token)
        )));
    }
    let mut spelled = String::new();
    write_number(&mut spelled, double);
    if Decimal::of(token) == Decimal::of(&spelled) {
        return Ok(());
    }
    Err(ArgumentsError(format!(
        "number {} is not exactly representable: RFC 8785 would make it {spelled}, which a \
         parser that reads numbers exactly would run differently; send it as a string",
        shown(token)
    )))
}

/// A number token as an error message shows it (long ones cut).
fn shown(token: &str) -> String {
    match token.char_indices().nth(40) {
        Some((cut, _)) => format!("{}…", &token[..cut]),
        None => token.to_owned(),
    }
}

/// The exact value of a JSON number: `digits` × 10^`exponent`, with no leading or trailing
/// zero digit (zero is no digits, whatever its sign).
#[derive(Debug, PartialEq, Eq)]
struct Decimal {
    negative: bool,
    digits: Vec<u8>,
    exponent: i128,
}

impl Decimal {
    fn of(text: &str) -> Decimal {
        let (negative, rest) = match text.strip_prefix('-') {
            Some(rest) => (true, rest),
            None => (false, text),
        };
        let (mantissa, exp) = match rest.find(['e', 'E']) {
            Some(at) => (&rest[..at], &rest[at + 1..]),
            None => (rest, "0"),
        };
        let (int, frac) = mantissa.split_once('.').unwrap_or((mantissa, ""));
        // An exponent too long for i128 saturates: such a number is zero or not finite,
        // and the parse refused the latter already.
        let exp: i128 = exp.parse().unwrap_or(if exp.starts_with('-') {
            i128::MIN / 2
        } else {
            i128::MAX / 2
        });
        let all: Vec<u8> = int.bytes().chain(frac.bytes()).collect();
        let Some(first) = all.iter().position(|&d| d != b'0') else {
            return Decimal {
                negative: false,
                digits: Vec::new(),
                exponent: 0,
            };
        };
        let last = all.iter().rposition(|&d| d != b'0').unwrap_or(first);
        Decimal {
            negative,
            digits: all[first..=last].to_vec(),
            exponent: exp - frac.len() as i128 + (all.len() - 1 - last) as i128,
        }
    }
}

/// Canonical form and hash of already-parsed arguments.
pub fn canonical_arguments(value: &Json) -> CanonicalArguments {
    let canonical = canonicalize(value);
    let sha256 = sha256_hex(&canonical);
    CanonicalArguments { canonical, sha256 }
}

/// The lowercase hex SHA-256 of `text`: an approval's `arguments_sha256` from its canonical
/// arguments.
pub fn sha256_hex(text: &str) -> String {
    hex(&Sha256::digest(text.as_bytes()))
}

/// The RFC 8785 serialization of `value`.
pub fn canonicalize(value: &Json) -> String {
    let mut out = String::new();
    write_value(&mut out, value);
    out
}

pub fn hex(bytes: &[u8]) -> String {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut s = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        s.push(DIGITS[(b >> 4) as usize] as char);
        s.push(DIGITS[(b & 0xf) as usize] as char);
    }
    s
}

fn write_value(out: &mut String, value: &Json) {
    match value {
        Json::Null => out.push_str("null"),
        Json::Bool(true) => out.push_str("true"),
        Json::Bool(false) => out.push_str("false"),
        Json::Number(n) => write_number(out, *n),
        Json::String(s) => write_string(out, s),
        Json::Array(items) => {
            out.push('[');
            for (i, item) in items.iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                write_value(out, item);
            }
            out.push(']');
        }
        Json::Object(members) => {
            // RFC 8785 §3.2.3: sort by the UTF-16 code units of the names.
            let mut sorted: Vec<&(String, Json)> = members.iter().collect();
            sorted.sort_by(|a, b| a.0.encode_utf16().cmp(b.0.encode_utf16()));
            out.push('{');
            for (i, (name, item)) in sorted.into_iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                write_string(out, name);
                out.push(':');
                write_value(out, item);
            }
            out.push('}');
        }
    }
}

/// RFC 8785 §3.2.2.3: numbers as ECMAScript's Number.prototype.toString prints them.
fn write_number(out: &mut String, n: f64) {
    if n == 0.0 {
        // Both zeros print as "0".
        out.push('0');
        return;
    }
    let mut buf = ryu_js::Buffer::new();
    out.push_str(buf.format_finite(n));
}

/// RFC 8785 §3.2.2.2: only `"`, `\` and control characters are escaped.
fn write_string(out: &mut String, s: &str) {
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\u{08}' => out.push_str("\\b"),
            '\u{0c}' => out.push_str("\\f"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c if (c as u32) < 0x20 => {
                out.push_str(&format!("\\u{:04x}", c as u32));
            }
            c => out.push(c),
        }
    }
    out.push('"');
}

struct JsonVisitor;

impl<'de> Visitor<'de> for JsonVisitor {
    type Value = Json;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("any JSON value")
    }

    fn visit_unit<E: de::Error>(self) -> Result<Json, E> {
        Ok(Json::Null)
    }

    fn visit_bool<E: de::Error>(self, v: bool) -> Result<Json, E> {
        Ok(Json::Bool(v))
    }

    // Integers become doubles; `parse` refuses those the double does not hold exactly.
    fn visit_u64<E: de::Error>(self, v: u64) -> Result<Json, E> {
        Ok(Json::Number(v as f64))
    }

    fn visit_i64<E: de::Error>(self, v: i64) -> Result<Json, E> {
        Ok(Json::Number(v as f64))
    }

    fn visit_f64<E: de::Error>(self, v: f64) -> Result<Json, E> {
        if !v.is_finite() {
            return Err(E::custom("number out of range"));
        }
        Ok(Json::Number(v))
    }

    fn visit_str<E: de::Error>(self, v: &str) -> Result<Json, E> {
        Ok(Json::String(v.to_owned()))
    }

    fn visit_string<E: de::Error>(self, v: String) -> Result<Json, E> {
        Ok(Json::String(v))
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Json, A::Error> {
        let mut items = Vec::new();
        while let Some(item) = seq.next_element_seed(Seed)? {
            items.push(item);
        }
        Ok(Json::Array(items))
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Json, A::Error> {
        let mut members: Vec<(String, Json)> = Vec::new();
        // Duplicate keys are looked for along the members while there are few (most
        // arguments: no set to allocate, no name to copy), in a set of the names once
        // there are `SET_FROM` of them (so a large object stays linear).
        let mut seen: Option<HashSet<String>> = None;
        while let Some(name) = map.next_key::<String>()? {
            let duplicate = match &mut seen {
                Some(seen) => !seen.insert(name.clone()),
                None => members.iter().any(|(known, _)| *known == name),
            };
            if duplicate {
                return Err(de::Error::custom(format!("duplicate object key {name:?}")));
            }
            let value = map.next_value_seed(Seed)?;
            members.push((name, value));
            if seen.is_none() && members.len() >= SET_FROM {
                seen = Some(members.iter().map(|(known, _)| known.clone()).collect());
            }
        }
        Ok(Json::Object(members))
    }
}

/// How many members an object has before its duplicate keys are looked for in a set.
const SET_FROM: usize = 16;

struct Seed;

impl<'de> de::DeserializeSeed<'de> for Seed {
    type Value = Json;

    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<Json, D::Error> {
        d.deserialize_any(JsonVisitor)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn canon(text: &str) -> String {
        canonicalize(&parse(text).expect("valid JSON"))
    }

    #[test]
    fn rfc8785_section_3_2_2_example() {
        // The RFC's 333333333.33333329 is one that canonicalisation rounds (to
        // 333333333.3333333), which `parse` refuses; its spelling is checked apart.
        let mut spelled = String::new();
        write_number(&mut spelled, "333333333.33333329".parse().unwrap());
        assert_eq!(spelled, "333333333.3333333");
        let input = r#"{
          "numbers": [333333333.3333333, 1E30, 4.50, 2e-3, 0.000000000000000000000000001],
          "string": "\u20ac$\u000F\u000aA'\u0042\u0022\u005c\\\"\/",
          "literals": [null, true, false]
        }"#;
        assert_eq!(
            canon(input),
            r#"{"literals":[null,true,false],"numbers":[333333333.3333333,1e+30,4.5,0.002,1e-27],"string":"€$\u000f\nA'B\"\\\\\"/"}"#
        );
    }

    #[test]
    fn rfc8785_section_3_2_3_sorting_by_utf16_code_units() {
        let input = r#"{
          "\u20ac": "Euro Sign",
          "\r": "Carriage Return",
          "\ufb33": "Hebrew Letter Dalet With Dagesh",
          "1": "One",
          "\ud83d\ude00": "Emoji: Grinning Face",
          "\u0080": "Control",
          "\u00f6": "Latin Small Letter O With Diaeresis"
        }"#;
        let expected_order = [
            "\r",
            "1",
            "\u{80}",
            "\u{f6}",
            "\u{20ac}",
            "\u{1f600}",
            "\u{fb33}",
        ];
        let Json::Object(members) = parse(&canon(input)).expect("canonical is JSON") else {
            panic!("not an object");
        };
        let names: Vec<&str> = members.iter().map(|(k, _)| k.as_str()).collect();
        assert_eq!(names, expected_order);
    }

    #[test]
    fn rfc8785_appendix_b_numbers() {
        // (IEEE-754 bits, expected serialization) from RFC 8785 Appendix B.
        let cases: &[(u64, &str)] = &[
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
        for (bits, expected) in cases {
            let mut out = String::new();
            write_number(&mut out, f64::from_bits(*bits));
            assert_eq!(&out, expected, "bits {bits:#018x}");
        }
    }

    #[test]
    fn strings_escape_only_what_rfc8785_escapes() {
        assert_eq!(canon(r#""\u007f\u2028/""#), "\"\u{7f}\u{2028}/\"");
        assert_eq!(canon(r#""\u0001\b\f\t""#), r#""\u0001\b\f\t""#);
    }

    #[test]
    fn duplicate_keys_are_rejected_in_objects_of_every_size() {
        // Before, at and after the member count where the look-up moves to a set: the
        // duplicate of the first key, of the last, and of one in the middle.
        for size in [1, 2, SET_FROM - 1, SET_FROM, SET_FROM + 1, 3 * SET_FROM] {
            let keys: Vec<String> = (0..size).map(|i| format!("k{i}")).collect();
            let object = |extra: &str| {
                let mut members: Vec<String> = keys.iter().map(|k| format!("\"{k}\":1")).collect();
                members.push(format!("\"{extra}\":2"));
                format!("{{{}}}", members.join(","))
            };
            assert!(
                parse_arguments(&object("new"), 1 << 16).is_ok(),
                "{size} members"
            );
            for again in [0, size.saturating_sub(1), size / 2].map(|i| keys[i].clone()) {
                let err = parse_arguments(&object(&again), 1 << 16).unwrap_err();
                assert!(
                    err.0.contains(&format!("duplicate object key \"{again}\"")),
                    "{size} members, {again} again: {err}"
                );
            }
        }
    }

    #[test]
    fn duplicate_keys_are_rejected() {
        let err = parse(r#"{"group":"Helpdesk","group":"Domain Admins"}"#).unwrap_err();
        assert!(err.0.contains("duplicate object key \"group\""), "{err}");
    }

    #[test]
    fn a_number_is_accepted_only_if_its_canonical_spelling_keeps_its_exact_value() {
        for accepted in [
            "0.1",
            "1e16",
            "10000000000000000",
            "1152921504606847000",
            "9007199254740992",
            "-9007199254740992",
            "1.0",
            "-0",
            "0e5",
            "4.50",
            "1E30",
        ] {
            let value = parse(accepted).unwrap_or_else(|e| panic!("{accepted}: {e}"));
            // The canonical form is accepted again and is its own canonical form.
            let once = canonicalize(&value);
            assert_eq!(canon(&once), once, "{accepted}");
        }
        for (accepted, canonical) in [
            ("0.1", "0.1"),
            ("1e16", "10000000000000000"),
            ("10000000000000000", "10000000000000000"),
            ("1152921504606847000", "1152921504606847000"),
            ("1.0", "1"),
            ("-0", "0"),
            ("-0.0", "0"),
            ("4.50", "4.5"),
            ("1E30", "1e+30"),
            ("1e21", "1e+21"),
            ("0.000001", "0.000001"),
            ("1e-7", "1e-7"),
            ("-1.5e-7", "-1.5e-7"),
            ("5e-324", "5e-324"),
            ("1.7976931348623157e308", "1.7976931348623157e+308"),
        ] {
            assert_eq!(canon(accepted), canonical, "{accepted}");
        }
        for refused in [
            "18446744073709551616",
            "18446744073709551617",
            "9007199254740993",
            "-9007199254740993",
            "9007199254740993.0",
            "0.10000000000000001",
            "333333333.33333329",
            // 2^60 is a double, but RFC 8785 spells it 1152921504606847000, which is
            // accepted (its own spelling) and would share its hash.
            "1152921504606846976",
        ] {
            let err = parse(&format!(r#"{{"amount":{refused}}}"#)).expect_err(refused);
            assert!(
                err.0.contains(&format!("number {refused} ")),
                "{refused}: {err}"
            );
            let err =
                parse_arguments(&format!(r#"{{"amount":[{refused}]}}"#), 1000).expect_err(refused);
            assert!(
                err.0.contains(&format!("number {refused} ")),
                "{refused}: {err}"
            );
        }
        // The message says what RFC 8785 would have made of it.
        let err = parse(r#"{"amount":18446744073709551617}"#).unwrap_err();
        assert_eq!(
            err.0,
            "number 18446744073709551617 is not exactly representable: RFC 8785 would make \
             it 18446744073709552000, which a parser that reads numbers exactly would run \
             differently; send it as a string"
        );
        let err = parse(r#"{"a":1152921504606846976}"#).unwrap_err();
        assert!(err.0.contains("would make it 1152921504606847000"), "{err}");
        // A long one is cut in the message, which stays short.
        let long = format!("0.1{}1", "0".repeat(5000));
        let err = parse(&long).unwrap_err();
        assert!(
            err.0.len() < 300 && err.0.contains("number 0.100000"),
            "{err}"
        );
        // Beyond the double range: refused (by the JSON parser), not rounded to infinity.
        assert!(parse("1e400").is_err());
        assert!(parse("-1e400").is_err());
        // Far below the smallest double: refused, not rounded to zero; zero itself is fine.
        assert!(parse("1e-400").is_err());
        assert_eq!(canon("0e-400"), "0");
        assert_eq!(
            canon("0.000e99999999999999999999999999999999999999999"),
            "0"
        );
        assert!(parse("1e-99999999999999999999999999999999999999999").is_err());
        // Two texts that RFC 8785 would give one hash cannot both be accepted.
        assert!(parse("18446744073709551616").is_err());
        assert!(parse("18446744073709552000").is_ok());
    }

    #[test]
    fn only_json_whitespace_is_whitespace() {
        assert_eq!(
            parse_arguments(" \t\r\n", 100),
            Ok(Json::Object(Vec::new()))
        );
        for odd in ["\u{a0}", "\u{3000}", "\u{2028}", "\u{0b}", "\u{0c}"] {
            assert!(parse_arguments(odd, 100).is_err(), "{odd:?}");
            assert!(
                parse_arguments(&format!("{odd}{{}}"), 100).is_err(),
                "{odd:?}"
            );
        }
    }

    #[test]
    fn numbers_inside_strings_and_keys_are_not_numbers() {
        let text = r#"{"9007199254740993":"0.10000000000000001","a\"1":[1,"\\",2]}"#;
        assert!(parse(text).is_ok());
    }

    #[test]
    fn lone_surrogates_and_trailing_text_are_rejected() {
        assert!(parse(r#""\ud800""#).is_err());
        assert!(parse(r#"{} {}"#).is_err());
    }

    #[test]
    fn arguments_must_be_an_object_within_the_size_limit() {
        assert_eq!(parse_arguments("", 10), Ok(Json::Object(vec![])));
        assert!(
            parse_arguments("[1]", 100)
                .unwrap_err()
                .0
                .contains("JSON object")
        );
        assert!(
            parse_arguments(r#"{"a":"0123456789"}"#, 10)
                .unwrap_err()
                .0
                .contains("at most 10")
        );
    }

    #[test]
    fn binding_hash_differs_for_different_arguments() {
        let a = canonical_arguments(&parse(r#"{"user":"bob","group":"Helpdesk"}"#).unwrap());
        let b = canonical_arguments(&parse(r#"{"user":"bob","group":"Domain Admins"}"#).unwrap());
        assert_ne!(a.sha256, b.sha256);
        assert_eq!(a.sha256.len(), 64);
    }

    fn arb_json() -> impl Strategy<Value = Json> {
        let leaf = prop_oneof![
            Just(Json::Null),
            any::<bool>().prop_map(Json::Bool),
            any::<i64>().prop_map(|n| Json::Number(n as f64)),
            any::<f64>()
                .prop_filter("finite", |f| f.is_finite())
                .prop_map(Json::Number),
            "\\PC{0,8}".prop_map(Json::String),
        ];
        leaf.prop_recursive(4, 48, 6, |inner| {
            prop_oneof![
                prop::collection::vec(inner.clone(), 0..6).prop_map(Json::Array),
                prop::collection::btree_map("\\PC{0,6}", inner, 0..6)
                    .prop_map(|m| Json::Object(m.into_iter().collect())),
            ]
        })
    }

    /// Serializes with members in the given order and optional spacing, as any sender might.
    fn render(value: &Json, reverse: bool, spaced: bool) -> String {
        let sep = if spaced { " " } else { "" };
        match value {
            Json::Object(members) => {
                let mut parts: Vec<String> = members
                    .iter()
                    .map(|(k, v)| {
                        format!(
                            "{}{sep}:{sep}{}",
                            serde_json::to_string(k).unwrap(),
                            render(v, reverse, spaced)
                        )
                    })
                    .collect();
                if reverse {
                    parts.reverse();
                }
                format!("{{{sep}{}{sep}}}", parts.join(&format!(",{sep}")))
            }
            Json::Array(items) => {
                let parts: Vec<String> = items.iter().map(|v| render(v, reverse, spaced)).collect();
                format!("[{sep}{}{sep}]", parts.join(&format!(",{sep}")))
            }
            // Not `{n:e}`: Rust breaks an exact tie between two shortest spellings away
            // from zero (631732743515159.25 as 6.317327435151593e14), ECMAScript to the
            // even one (…159.2), and the odd one is (rightly) refused as not its spelling.
            // The spaced form writes the same value another way.
            Json::Number(_) => {
                let s = canonicalize(value);
                match (spaced, s.contains('.'), s.find('e')) {
                    (false, _, _) => s,
                    (true, true, None) => format!("{s}0"),
                    (true, true, Some(at)) => format!("{}0E{}", &s[..at], &s[at + 1..]),
                    (true, false, Some(at)) => format!("{}.0E{}", &s[..at], &s[at + 1..]),
                    (true, false, None) => format!("{s}.0e0"),
                }
            }
            other => canonicalize(other),
        }
    }

    proptest! {
        #[test]
        fn any_key_order_or_spacing_gives_the_same_hash(value in arb_json()) {
            let plain = render(&value, false, false);
            let shuffled = render(&value, true, true);
            let a = canonical_arguments(&parse(&plain).unwrap());
            let b = canonical_arguments(&parse(&shuffled).unwrap());
            prop_assert_eq!(a, b);
        }

        #[test]
        fn canonical_form_is_a_fixed_point(value in arb_json()) {
            let once = canonicalize(&value);
            let twice = canonicalize(&parse(&once).unwrap());
            prop_assert_eq!(once, twice);
        }

        /// Fuzz target for the arguments parser (issue "Hardening"): any text either is
        /// refused or gives a canonical form that is accepted again as itself.
        #[test]
        fn any_text_is_refused_or_canonical_again(text in "\\PC{0,64}|[-+0-9.eE \\[\\],{}\"a:]{0,48}") {
            if let Ok(value) = parse(&text) {
                let once = canonicalize(&value);
                let again = parse(&once).expect("the canonical form is accepted");
                prop_assert_eq!(canonicalize(&again), once);
            }
        }

        /// Any number text is accepted exactly when its value survives canonicalisation,
        /// and then its canonical spelling is accepted and spelled the same.
        #[test]
        fn any_number_is_accepted_exactly_when_canonicalisation_keeps_it(
            text in "-?(0|[1-9][0-9]{0,24})(\\.[0-9]{1,24})?([eE][-+]?[0-9]{1,3})?"
        ) {
            let Ok(double) = text.parse::<f64>() else { return Ok(()) };
            if !double.is_finite() {
                prop_assert!(parse(&text).is_err());
                return Ok(());
            }
            let mut spelled = String::new();
            write_number(&mut spelled, double);
            let same = Decimal::of(&text) == Decimal::of(&spelled);
            prop_assert_eq!(parse(&text).is_ok(), same, "{} spelled {}", text, spelled);
            prop_assert_eq!(canon(&spelled), spelled);
        }
    }
}
