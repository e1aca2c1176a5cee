//! Property and fuzz tests of the arguments parser and RFC 8785 canonicaliser
//! (`src/policy/canonical.rs`), black-box through its public API.
//!
//! The number oracle here shares no code with the parser: the exact value of a generated
//! number is known by construction (digits × 10^exponent), the double is the standard
//! library's correctly rounded parse, and the value of the RFC 8785 spelling is read from
//! the standard library's shortest round-trip `{:e}` formatting (not from ryu-js).
//!
//! Case counts: `PROPTEST_CASES` overrides every property here (for a long fuzz run, e.g.
//! `PROPTEST_CASES=200000 cargo test --test canonical_fuzz`); without it each property runs
//! the small default next to it, a few seconds in all.

use proptest::prelude::*;
use proptest::test_runner::{FileFailurePersistence, TestCaseError};
use toolgate::policy::canonical::{
    Json, canonical_arguments, canonicalize, parse, parse_arguments,
};

const MAX_BYTES: usize = 64 * 1024;

fn config(default_cases: u32) -> ProptestConfig {
    let cases = std::env::var("PROPTEST_CASES")
        .ok()
        .and_then(|c| c.parse().ok())
        .unwrap_or(default_cases);
    ProptestConfig {
        cases,
        // tests/canonical_fuzz.proptest-regressions
        failure_persistence: Some(Box::new(FileFailurePersistence::WithSource(
            "proptest-regressions",
        ))),
        ..ProptestConfig::default()
    }
}

// ---------------------------------------------------------------------------------------
// The oracle: exact decimal values, without floating point.

/// An exact decimal value: `digits` × 10^`exp`, digits without leading or trailing zeros;
/// zero is no digits (and no sign).
#[derive(Debug, Clone, PartialEq, Eq)]
struct Exact {
    negative: bool,
    digits: String,
    exp: i64,
}

impl Exact {
    fn new(negative: bool, digits: &str, exp: i64) -> Exact {
        let lead = digits.len() - digits.trim_start_matches('0').len();
        let trimmed = digits[lead..].trim_end_matches('0');
        if trimmed.is_empty() {
            return Exact {
                negative: false,
                digits: String::new(),
                exp: 0,
            };
        }
        let trail = digits.len() - lead - trimmed.len();
        Exact {
            negative,
            digits: trimmed.to_owned(),
            exp: exp + trail as i64,
        }
    }

    /// The exact value of the RFC 8785 spelling of `d`: the shortest digits that round-trip,
    /// the closest of them to `d`, the even one of two as close (ECMAScript
    /// Number::toString). From the standard library, independent of the code under test:
    /// its `{:e}` gives the shortest length and the closest digits, but breaks an exact tie
    /// away from zero (923616851727341.25 → `9.236168517273413e14`; ECMAScript, Python and
    /// ryu-js say …341.2), so ties are settled here against the exact expansion of `d`.
    fn of_double(d: f64) -> Exact {
        assert!(d.is_finite());
        if d == 0.0 {
            return Exact::new(false, "", 0);
        }
        let (digits, exp) = split_sci(&format!("{:e}", d.abs())); // "1.2345e-7", "5e-324"
        let n: u128 = digits.parse().expect("at most 17 digits");
        // The exact value of |d| (a double has at most 767 significant digits).
        let (all, all_exp) = split_sci(&format!("{:.800e}", d.abs()));
        let exact = Exact::new(false, &all, all_exp);
        let round_trips = |m: u128| format!("{m}e{exp}").parse::<f64>() == Ok(d.abs());
        let midpoint = |low: u128| Exact::new(false, &(10 * low + 5).to_string(), exp - 1);
        let n = if n % 2 == 1 && n > 1 && exact == midpoint(n - 1) && round_trips(n - 1) {
            n - 1
        } else if n % 2 == 1 && exact == midpoint(n) && round_trips(n + 1) {
            n + 1
        } else {
            n
        };
        Exact::new(d < 0.0, &n.to_string(), exp)
    }

    /// The exact value of a JSON number text in the form the canonicaliser writes
    /// (ECMAScript's Number::toString): `-`? digits (`.` digits)? (`e` [+-] digits)?.
    fn of_canonical(text: &str) -> Exact {
        let (negative, rest) = match text.strip_prefix('-') {
            Some(r) => (true, r),
            None => (false, text),
        };
        let (mantissa, e) = match rest.split_once('e') {
            Some((m, e)) => (m, e.parse::<i64>().expect("canonical exponent")),
            None => (rest, 0),
        };
        let (int, frac) = mantissa.split_once('.').unwrap_or((mantissa, ""));
        Exact::new(negative, &format!("{int}{frac}"), e - frac.len() as i64)
    }
}

/// `d.ddde±x` as (`dddd`, x - places): the digits and the exponent of their last one.
fn split_sci(sci: &str) -> (String, i64) {
    let (mantissa, e) = sci.split_once('e').expect("an exponent");
    let e: i64 = e.parse().expect("exponent");
    let (int, frac) = mantissa.split_once('.').unwrap_or((mantissa, ""));
    (format!("{int}{frac}"), e - frac.len() as i64)
}

/// A generated JSON number: its text and its exact value, known by construction.
#[derive(Debug, Clone)]
struct NumberText {
    text: String,
    exact: Exact,
}

impl NumberText {
    /// What the parser must do with it: accept exactly when the spelling of the correctly
    /// rounded double has the same exact value.
    fn must_accept(&self) -> bool {
        let d: f64 = self.text.parse().expect("std parses JSON numbers");
        d.is_finite() && Exact::of_double(d) == self.exact
    }
}

/// Digit strings of many kinds: random, integers of all sizes, around powers of two and
/// ten, the shortest digits of doubles (exact: accepted), the full expansion of integral
/// doubles (often not shortest: refused, like 2^60).
fn arb_digits() -> impl Strategy<Value = String> {
    prop_oneof![
        "[0-9]{1,3}",
        "[1-9][0-9]{0,40}",
        (0u32..128, -4i128..=4).prop_map(|(k, d)| {
            let v = (1i128 << k.min(126)) + d;
            v.unsigned_abs().to_string()
        }),
        (0u32..38, -4i128..=4).prop_map(|(k, d)| (10i128.pow(k) + d).unsigned_abs().to_string()),
        any::<f64>()
            .prop_filter("finite", |d| d.is_finite())
            .prop_map(|d| {
                let sci = format!("{:e}", d.abs());
                let mantissa = sci.split('e').next().unwrap();
                mantissa.replace('.', "")
            }),
        (0f64..1e30).prop_map(|d| format!("{:.0}", d.trunc())),
        (any::<u64>(), 0u32..12).prop_map(|(n, k)| format!("{}", (n as u128) << k)),
    ]
}

/// Leading zeros in the exponent and an explicit `+` are valid JSON; so is `E`.
fn render_exponent(e: i64, style: u8) -> String {
    let letter = if style & 1 == 0 { "e" } else { "E" };
    let sign = if e < 0 {
        "-"
    } else if style & 2 != 0 {
        "+"
    } else {
        ""
    };
    let zeros = if style & 4 != 0 { "00" } else { "" };
    format!("{letter}{sign}{zeros}{}", e.unsigned_abs())
}

/// A JSON number text for `digits` × 10^`value_exp`, written with its point and exponent
/// anywhere, and optional trailing zeros.
fn arb_number() -> impl Strategy<Value = NumberText> {
    (
        any::<bool>(),
        arb_digits(),
        prop_oneof![4 => -30i64..=30, 1 => -360i64..=330],
        -45i64..=45, // shift: written exponent = value_exp + shift
        any::<bool>(),
        any::<u8>(),
        0usize..4,
    )
        .prop_map(
            |(negative, digits, value_exp, shift, with_exp, style, extra_zeros)| {
                // value = digits × 10^value_exp = mantissa × 10^written, with
                // mantissa = digits × 10^(value_exp - written).
                let written = if with_exp { value_exp + shift } else { 0 };
                let scale = value_exp - written;
                let (mut int, mut frac) = if scale >= 0 {
                    (
                        format!("{digits}{}", "0".repeat(scale as usize)),
                        String::new(),
                    )
                } else {
                    let places = (-scale) as usize;
                    let padded = if digits.len() <= places {
                        format!("{}{digits}", "0".repeat(places - digits.len() + 1))
                    } else {
                        digits.clone()
                    };
                    let (i, f) = padded.split_at(padded.len() - places);
                    (i.to_owned(), f.to_owned())
                };
                let trimmed = int.trim_start_matches('0');
                int = if trimmed.is_empty() {
                    "0".into()
                } else {
                    trimmed.into()
                };
                frac.push_str(&"0".repeat(extra_zeros));
                let mut text = String::new();
                if negative {
                    text.push('-');
                }
                text.push_str(&int);
                if !frac.is_empty() {
                    text.push('.');
                    text.push_str(&frac);
                }
                if with_exp {
                    text.push_str(&render_exponent(written, style));
                }
                NumberText {
                    exact: Exact::new(negative, &digits, value_exp),
                    text,
                }
            },
        )
}

// ---------------------------------------------------------------------------------------
// Generated JSON trees whose numbers are NumberTexts.

#[derive(Debug, Clone)]
enum Tree {
    Null,
    Bool(bool),
    Number(NumberText),
    String(String),
    Array(Vec<Tree>),
    Object(Vec<(String, Tree)>),
}

fn arb_tree() -> impl Strategy<Value = Tree> {
    let leaf = prop_oneof![
        1 => Just(Tree::Null),
        1 => any::<bool>().prop_map(Tree::Bool),
        4 => arb_number().prop_map(Tree::Number),
        1 => "\\PC{0,6}".prop_map(Tree::String),
    ];
    leaf.prop_recursive(4, 40, 6, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..6).prop_map(Tree::Array),
            prop::collection::btree_map("\\PC{0,4}", inner, 0..6)
                .prop_map(|m| Tree::Object(m.into_iter().collect())),
        ]
    })
}

const JSON_WS: [&str; 5] = ["", " ", "\t", "\n", "\r\n "];

/// The tree as a sender might write it: members in the given order, JSON whitespace
/// chosen by `ws` (a seed) between tokens.
fn render(tree: &Tree, reverse: bool, ws: &mut u64) -> String {
    fn space(ws: &mut u64) -> &'static str {
        *ws = ws
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        JSON_WS[(*ws >> 61) as usize % JSON_WS.len()]
    }
    match tree {
        Tree::Null => "null".into(),
        Tree::Bool(b) => b.to_string(),
        Tree::Number(n) => n.text.clone(),
        Tree::String(s) => serde_json::to_string(s).unwrap(),
        Tree::Array(items) => {
            let parts: Vec<String> = items.iter().map(|t| render(t, reverse, ws)).collect();
            let (a, b, c, d) = (space(ws), space(ws), space(ws), space(ws));
            format!("[{a}{}{b}]", parts.join(&format!("{c},{d}")))
        }
        Tree::Object(members) => {
            let mut parts: Vec<String> = members
                .iter()
                .map(|(k, v)| {
                    let key = serde_json::to_string(k).unwrap();
                    let (a, b) = (space(ws), space(ws));
                    format!("{key}{a}:{b}{}", render(v, reverse, ws))
                })
                .collect();
            if reverse {
                parts.reverse();
            }
            let (a, b, c, d) = (space(ws), space(ws), space(ws), space(ws));
            format!("{{{a}{}{b}}}", parts.join(&format!("{c},{d}")))
        }
    }
}

fn numbers_of(tree: &Tree, out: &mut Vec<NumberText>) {
    match tree {
        Tree::Number(n) => out.push(n.clone()),
        Tree::Array(items) => items.iter().for_each(|t| numbers_of(t, out)),
        Tree::Object(members) => members.iter().for_each(|(_, t)| numbers_of(t, out)),
        _ => {}
    }
}

/// Pairs a parsed value with the tree it came from (same shape, members in tree order).
fn pair_numbers(tree: &Tree, value: &Json, out: &mut Vec<(NumberText, f64)>) {
    match (tree, value) {
        (Tree::Number(n), Json::Number(d)) => out.push((n.clone(), *d)),
        (Tree::Array(ts), Json::Array(vs)) => {
            assert_eq!(ts.len(), vs.len());
            ts.iter().zip(vs).for_each(|(t, v)| pair_numbers(t, v, out));
        }
        (Tree::Object(ts), Json::Object(vs)) => {
            for (k, t) in ts {
                let v = &vs.iter().find(|(name, _)| name == k).expect("member").1;
                pair_numbers(t, v, out);
            }
        }
        (Tree::Null, Json::Null) | (Tree::Bool(_), Json::Bool(_)) => {}
        (Tree::String(a), Json::String(b)) => assert_eq!(a, b),
        (t, v) => panic!("shape differs: {t:?} vs {v:?}"),
    }
}

/// The numbers of a value in canonical text (canonical member order), as texts.
fn canonical_number_texts(canonical: &str) -> Vec<String> {
    // Canonical text escapes every `"` inside strings, so a scan outside strings is exact.
    let mut out = Vec::new();
    let bytes = canonical.as_bytes();
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'"' => {
                i += 1;
                while bytes[i] != b'"' {
                    i += if bytes[i] == b'\\' { 2 } else { 1 };
                }
                i += 1;
            }
            b'-' | b'0'..=b'9' => {
                let start = i;
                while i < bytes.len() && b"0123456789-+.e".contains(&bytes[i]) {
                    i += 1;
                }
                out.push(canonical[start..i].to_owned());
            }
            _ => i += 1,
        }
    }
    out
}

/// ECMAScript Number::toString: no exponent exactly when 1e-6 ≤ |x| < 1e21, and then no
/// `e`; otherwise `d[.ddd]e±n`; never a leading `+`, a trailing `.`, or a trailing zero
/// after the point.
fn assert_ecmascript_spelling(text: &str) -> Result<(), TestCaseError> {
    let d: f64 = text
        .parse()
        .map_err(|_| TestCaseError::fail(text.to_owned()))?;
    let plain = d == 0.0 || (1e-6..1e21).contains(&d.abs());
    prop_assert_eq!(!text.contains('e'), plain, "{}", text);
    if let Some((m, e)) = text.split_once('e') {
        prop_assert!(e.starts_with('+') || e.starts_with('-'), "{}", text);
        let m = m.trim_start_matches('-');
        prop_assert!(m.len() == 1 || m.as_bytes()[1] == b'.', "{}", text);
    }
    if let Some((_, frac)) = text.split_once('.') {
        let frac = frac.split('e').next().unwrap();
        prop_assert!(!frac.is_empty() && !frac.ends_with('0'), "{}", text);
    }
    Ok(())
}

/// What must hold of any text: no panic (the runner catches one as a failure); if accepted,
/// the canonical form is accepted again, as itself, with the same hash; arguments are only
/// ever an object, and whitespace-only arguments are `{}` only for JSON whitespace.
fn check_any_text(text: &str) -> Result<(), TestCaseError> {
    let parsed = parse(text);
    if let Ok(value) = &parsed {
        let once = canonicalize(value);
        let again = parse(&once);
        prop_assert!(
            again.is_ok(),
            "canonical {:?} of {:?} refused: {:?}",
            once,
            text,
            again
        );
        let again = again.unwrap();
        prop_assert_eq!(canonicalize(&again), once.clone());
        prop_assert_eq!(canonical_arguments(&again), canonical_arguments(value));
        // Stricter than serde_json, never looser.
        prop_assert!(
            serde_json::from_str::<serde_json::Value>(text).is_ok(),
            "{:?}",
            text
        );
        for n in canonical_number_texts(&once) {
            assert_ecmascript_spelling(&n)?;
        }
    }
    let only_json_ws = text.chars().all(|c| matches!(c, ' ' | '\t' | '\n' | '\r'));
    match parse_arguments(text, MAX_BYTES) {
        Ok(args) if only_json_ws => prop_assert_eq!(args, Json::Object(Vec::new())),
        Ok(args) => {
            prop_assert!(matches!(args, Json::Object(_)));
            prop_assert_eq!(Ok(args), parsed);
        }
        Err(_) if only_json_ws => prop_assert!(false, "{:?} refused", text),
        Err(_) => prop_assert!(!matches!(parsed, Ok(Json::Object(_))), "{:?}", text),
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------
// Fuzz alphabets.

/// Characters JSON is made of, plus whitespace JSON does not allow.
const ALPHABET: &[char] = &[
    '{', '}', '[', ']', ',', ':', '"', '\\', '/', 'u', 'e', 'E', '.', '-', '+', '0', '1', '5', '9',
    'a', 't', 'r', 'f', 'n', 'l', 's', 'b', 'd', '8', ' ', '\t', '\n', '\r', '\u{0b}', '\u{0c}',
    '\u{a0}', '\u{3000}', '\u{2028}', '\u{feff}', '\u{0}', 'é', '😀',
];

/// Whole tokens, so that generated texts are often valid JSON.
const TOKENS: &[&str] = &[
    "{",
    "}",
    "[",
    "]",
    ",",
    ":",
    "\"a\"",
    "\"b\"",
    "\"\\u00e9\"",
    "\"\\ud800\"",
    "\"\\ud83d\\ude00\"",
    "\"\\\"\"",
    "\"\\\\\"",
    "true",
    "false",
    "null",
    "0",
    "-0",
    "1",
    "-1",
    "0.1",
    "1.0",
    "1e16",
    "1E+2",
    "10000000000000000",
    "9007199254740992",
    "9007199254740993",
    "0.10000000000000001",
    "18446744073709551616",
    "18446744073709552000",
    "1152921504606846976",
    "1152921504606847000",
    "5e-324",
    "1e-400",
    "1e400",
    "01",
    "1.",
    ".5",
    "1e",
    "+1",
    " ",
    "\n",
    "\u{a0}",
    "\u{3000}",
    "\u{2028}",
    "\u{0b}",
    "\u{0c}",
    "\u{feff}",
];

fn arb_token_text() -> impl Strategy<Value = String> {
    prop::collection::vec(prop::sample::select(TOKENS), 0..24).prop_map(|t| t.concat())
}

/// A valid rendering of a generated tree with a few characters inserted, deleted or
/// replaced.
fn arb_mutated_text() -> impl Strategy<Value = String> {
    (
        arb_tree(),
        any::<u64>(),
        prop::collection::vec(
            (any::<u8>(), any::<usize>(), prop::sample::select(ALPHABET)),
            1..4,
        ),
    )
        .prop_map(|(tree, ws, edits)| {
            let mut ws = ws;
            let mut chars: Vec<char> = render(&tree, false, &mut ws).chars().collect();
            for (kind, at, c) in edits {
                let at = at % (chars.len() + 1);
                match kind % 3 {
                    0 => chars.insert(at, c),
                    1 if at < chars.len() => {
                        chars.remove(at);
                    }
                    _ if at < chars.len() => chars[at] = c,
                    _ => chars.push(c),
                }
            }
            chars.into_iter().collect()
        })
}

// ---------------------------------------------------------------------------------------

proptest! {
    #![proptest_config(config(2000))]

    /// Any number text is accepted exactly when the RFC 8785 spelling of its double has its
    /// exact value; then the spelling is ECMAScript's, parses to the same double and is
    /// accepted again as itself; refusals name the number.
    #[test]
    fn a_number_is_accepted_exactly_when_its_spelling_keeps_its_value(n in arb_number()) {
        let result = parse(&n.text);
        prop_assert_eq!(result.is_ok(), n.must_accept(), "{} -> {:?}", n.text, result);
        match result {
            Ok(value) => {
                let spelled = canonicalize(&value);
                prop_assert_eq!(Exact::of_canonical(&spelled), n.exact.clone(), "{}", n.text);
                prop_assert_eq!(spelled.parse::<f64>().unwrap(), n.text.parse::<f64>().unwrap());
                assert_ecmascript_spelling(&spelled)?;
                prop_assert_eq!(canonicalize(&parse(&spelled).unwrap()), spelled);
            }
            // Beyond the double range the JSON parser itself refuses it ("number out of
            // range", with a position); otherwise the message names the number.
            Err(e) if n.text.parse::<f64>().unwrap().is_finite() => {
                let shown: String = n.text.chars().take(40).collect();
                prop_assert!(e.0.contains(&format!("number {shown}")), "{}: {}", n.text, e);
            }
            Err(e) => prop_assert!(e.0.contains("out of range"), "{}: {}", n.text, e),
        }
    }

    /// Two different exact values never share an accepted canonical spelling: `n` and `n`
    /// with one more nonzero digit below its last one.
    #[test]
    fn two_accepted_numbers_with_one_spelling_are_one_value(
        n in arb_number(),
        extra in 1u8..10,
        at in 1usize..20,
    ) {
        let exp = n.exact.exp - at as i64;
        let other = if n.exact.digits.is_empty() {
            format!("{extra}e{exp}")
        } else {
            let sign = if n.exact.negative { "-" } else { "" };
            format!("{sign}{}{}{extra}e{exp}", n.exact.digits, "0".repeat(at - 1))
        };
        if let (Ok(a), Ok(b)) = (parse(&n.text), parse(&other)) {
            prop_assert_ne!(canonicalize(&a), canonicalize(&b), "{} and {}", n.text, other);
        }
    }

    /// JSON values with numbers of all kinds: accepted exactly when every number is; then
    /// the canonical form is a fixed point, any member order or JSON spacing hashes the
    /// same, and each canonical number has the exact value of the one sent.
    #[test]
    fn arguments_with_random_numbers_are_accepted_exactly_when_every_number_is(
        tree in arb_tree(),
        ws in any::<u64>(),
    ) {
        let mut seed = ws;
        let text = render(&tree, false, &mut seed);
        let mut numbers = Vec::new();
        numbers_of(&tree, &mut numbers);
        let all_exact = numbers.iter().all(NumberText::must_accept);
        let result = parse(&text);
        prop_assert_eq!(result.is_ok(), all_exact, "{} -> {:?}", text, result);
        let Ok(value) = result else { return Ok(()) };

        let once = canonicalize(&value);
        let again = parse(&once).expect("the canonical form is accepted");
        prop_assert_eq!(canonicalize(&again), once.clone());
        let hash = canonical_arguments(&value);
        prop_assert_eq!(canonical_arguments(&again), hash.clone());
        let other = render(&tree, true, &mut seed);
        prop_assert_eq!(canonical_arguments(&parse(&other).unwrap()), hash);

        let mut pairs = Vec::new();
        pair_numbers(&tree, &value, &mut pairs);
        for (n, d) in pairs {
            prop_assert_eq!(Exact::of_double(d), n.exact.clone(), "{}", n.text);
        }
        for spelled in canonical_number_texts(&once) {
            assert_ecmascript_spelling(&spelled)?;
        }
    }

    /// Fuzz: arbitrary bytes (as UTF-8 where they are, lossily otherwise).
    #[test]
    fn fuzz_arbitrary_bytes(bytes in prop::collection::vec(any::<u8>(), 0..256)) {
        match std::str::from_utf8(&bytes) {
            Ok(text) => check_any_text(text)?,
            Err(_) => check_any_text(&String::from_utf8_lossy(&bytes))?,
        }
    }

    /// Fuzz: arbitrary strings, any characters.
    #[test]
    fn fuzz_arbitrary_strings(text in "\\PC{0,128}|.{0,32}") {
        check_any_text(&text)?;
    }

    /// Fuzz: strings over JSON's alphabet and odd whitespace.
    #[test]
    fn fuzz_json_alphabet(chars in prop::collection::vec(prop::sample::select(ALPHABET), 0..64)) {
        check_any_text(&chars.into_iter().collect::<String>())?;
    }

    /// Fuzz: sequences of JSON tokens (often valid, often almost).
    #[test]
    fn fuzz_json_tokens(text in arb_token_text()) {
        check_any_text(&text)?;
    }

    /// Fuzz: valid arguments with a few characters inserted, deleted or replaced.
    #[test]
    fn fuzz_mutated_arguments(text in arb_mutated_text()) {
        check_any_text(&text)?;
    }
}

#[test]
fn whitespace_only_arguments() {
    assert_eq!(parse_arguments("", 10), Ok(Json::Object(Vec::new())));
    assert_eq!(parse_arguments(" \t\r\n", 10), Ok(Json::Object(Vec::new())));
    for odd in [
        "\u{a0}", "\u{3000}", "\u{2028}", "\u{2029}", "\u{0b}", "\u{0c}", "\u{85}", "\u{feff}",
        "\u{1680}", "\u{2000}", "\u{202f}", "\u{205f}", " \u{a0} ",
    ] {
        assert!(parse_arguments(odd, 100).is_err(), "{odd:?}");
        assert!(
            parse_arguments(&format!("{odd}{{}}"), 100).is_err(),
            "{odd:?}"
        );
        assert!(
            parse_arguments(&format!("{{}}{odd}"), 100).is_err(),
            "{odd:?}"
        );
        assert!(
            parse_arguments(&format!("{{{odd}}}"), 100).is_err(),
            "{odd:?}"
        );
        assert!(parse(&format!("[1,{odd}2]")).is_err(), "{odd:?}");
    }
}

#[test]
fn the_oracle_agrees_with_the_issue() {
    let exact = |t: &str| {
        let d: f64 = t.parse().unwrap();
        let (neg, rest) = t.strip_prefix('-').map_or((false, t), |r| (true, r));
        let (m, e) = rest.split_once(['e', 'E']).unwrap_or((rest, "0"));
        let (i, f) = m.split_once('.').unwrap_or((m, ""));
        let value = Exact::new(
            neg,
            &format!("{i}{f}"),
            e.parse::<i64>().unwrap() - f.len() as i64,
        );
        Exact::of_double(d) == value
    };
    // An exact tie between two shortest spellings: ECMAScript takes the even one.
    assert_eq!(
        // (From text: clippy would "truncate" the literal to …341.3, Rust's tie-break.)
        Exact::of_double("923616851727341.25".parse().unwrap()),
        Exact::new(false, "9236168517273412", -1)
    );
    assert_eq!(
        canonicalize(&parse("923616851727341.2").unwrap()),
        "923616851727341.2"
    );
    assert!(parse("923616851727341.3").is_err());
    for t in [
        "0.1",
        "1e16",
        "10000000000000000",
        "1.0",
        "-0",
        "1152921504606847000",
    ] {
        assert!(exact(t), "{t}");
        assert!(parse(t).is_ok(), "{t}");
    }
    for t in [
        "18446744073709551616",
        "18446744073709551617",
        "9007199254740993",
        "9007199254740993.0",
        "0.10000000000000001",
        "1152921504606846976",
    ] {
        assert!(!exact(t), "{t}");
        assert!(
            parse(t).unwrap_err().0.contains(&format!("number {t} ")),
            "{t}"
        );
    }
}
