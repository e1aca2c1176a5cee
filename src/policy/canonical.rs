//! RFC 8785 (JSON Canonicalization Scheme) and the SHA-256 that binds an approval to the
//! exact arguments of a call.
//!
//! Parsing is stricter than plain JSON where a looser parser would let two different calls
//! share one hash: duplicate object keys are rejected (parsers disagree on which one wins),
//! and so are integers beyond ±2^53, which RFC 8785 would round to the nearest double while
//! an agent backend in Python or Go would run them exactly.

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

/// Largest integer magnitude a double holds exactly.
const MAX_SAFE_INTEGER: u64 = 1 << 53;

/// Parses `text` as the arguments of a call: a JSON object. Empty text means `{}`.
pub fn parse_arguments(text: &str, max_bytes: usize) -> Result<Json, ArgumentsError> {
    if text.len() > max_bytes {
        return Err(ArgumentsError(format!(
            "is {} bytes; at most {max_bytes}",
            text.len()
        )));
    }
    if text.trim().is_empty() {
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
    Ok(value)
}

/// Canonical form and hash of already-parsed arguments.
pub fn canonical_arguments(value: &Json) -> CanonicalArguments {
    let canonical = canonicalize(value);
    let sha256 = hex(&Sha256::digest(canonical.as_bytes()));
    CanonicalArguments { canonical, sha256 }
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

    fn visit_u64<E: de::Error>(self, v: u64) -> Result<Json, E> {
        if v > MAX_SAFE_INTEGER {
            return Err(E::custom(format!(
                "integer {v} is beyond 2^53 and would lose precision; send it as a string"
            )));
        }
        Ok(Json::Number(v as f64))
    }

    fn visit_i64<E: de::Error>(self, v: i64) -> Result<Json, E> {
        if v.unsigned_abs() > MAX_SAFE_INTEGER {
            return Err(E::custom(format!(
                "integer {v} is beyond 2^53 and would lose precision; send it as a string"
            )));
        }
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
        let mut seen: HashSet<String> = HashSet::new();
        while let Some(name) = map.next_key::<String>()? {
            if !seen.insert(name.clone()) {
                return Err(de::Error::custom(format!("duplicate object key {name:?}")));
            }
            let value = map.next_value_seed(Seed)?;
            members.push((name, value));
        }
        Ok(Json::Object(members))
    }
}

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
        let input = r#"{
          "numbers": [333333333.33333329, 1E30, 4.50, 2e-3, 0.000000000000000000000000001],
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
    fn duplicate_keys_are_rejected() {
        let err = parse(r#"{"group":"Helpdesk","group":"Domain Admins"}"#).unwrap_err();
        assert!(err.0.contains("duplicate object key \"group\""), "{err}");
    }

    #[test]
    fn integers_beyond_2_pow_53_are_rejected() {
        assert!(parse("9007199254740992").is_ok());
        assert!(parse("-9007199254740992").is_ok());
        assert!(parse("9007199254740993").is_err());
        assert!(parse("-9007199254740993").is_err());
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
            (-(1i64 << 53)..(1i64 << 53)).prop_map(|n| Json::Number(n as f64)),
            // Doubles of 2^53 and beyond are integers whose canonical text an exact-integer
            // parser would read differently, so the strict parser refuses that text.
            any::<f64>()
                .prop_filter("finite, below 2^53", |f| f.is_finite()
                    && f.abs() < 9.007199254740992e15)
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
            Json::Number(n) => format!("{n:e}"),
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

        #[test]
        fn parser_never_panics(text in "\\PC{0,64}") {
            let _ = parse(&text);
        }
    }
}
