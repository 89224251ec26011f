//! Scoring structured items: JSON answers field by field, tool calls by name and arguments.
//!
//! - A JSON item's `expected` is an object. The answer is right when every expected field is
//!   there with an equal value (extra fields are ignored). Strings compare after the same
//!   normalisation as `exact` answers (case, punctuation, articles), numbers as numbers,
//!   objects field by field, arrays element by element.
//! - A tool item's `expected` is `{"name": ..., "arguments": {arg: [accepted values]}}`, as
//!   the Berkeley Function Calling Leaderboard gives it: the first call must name the function,
//!   and each argument must equal one of its accepted values. An argument whose list holds
//!   `""` may be left out; an argument the call adds must be one the expected call lists.

use serde_json::Value;

use super::score::normalize;
use crate::types::ToolCall;

/// Whether `got` holds every field of `expected` with an equal value.
pub fn json_matches(expected: &Value, got: &Value) -> bool {
    match (expected, got) {
        (Value::Object(e), Value::Object(g)) => e
            .iter()
            .all(|(k, v)| g.get(k).is_some_and(|x| json_matches(v, x))),
        (Value::Array(e), Value::Array(g)) => {
            e.len() == g.len() && e.iter().zip(g).all(|(a, b)| json_matches(a, b))
        }
        (Value::Number(a), Value::Number(b)) => match (a.as_f64(), b.as_f64()) {
            (Some(x), Some(y)) => (x - y).abs() <= 1e-6 * x.abs().max(y.abs()).max(1.0),
            _ => false,
        },
        // A number written as a string, or the other way round, counts when it reads equal.
        (Value::Number(a), Value::String(s)) | (Value::String(s), Value::Number(a)) => s
            .trim()
            .parse::<f64>()
            .ok()
            .zip(a.as_f64())
            .is_some_and(|(x, y)| (x - y).abs() <= 1e-6 * x.abs().max(y.abs()).max(1.0)),
        (Value::String(a), Value::String(b)) => {
            let (a, b) = (normalize(a), normalize(b));
            !a.is_empty() && a == b || a.is_empty() && b.is_empty()
        }
        (a, b) => a == b,
    }
}

/// Whether the answer text is right for a JSON item: it parses (a code fence around it is
/// allowed) and matches.
pub fn json_answer_matches(expected: &Value, text: &str) -> bool {
    parse_json(text).is_some_and(|v| json_matches(expected, &v))
}

/// The answer text as JSON, if it is (inside a Markdown code fence or not).
pub fn parse_json(text: &str) -> Option<Value> {
    let t = text.trim();
    let t = t
        .strip_prefix("```")
        .and_then(|r| r.strip_suffix("```"))
        .map_or(t, |inner| {
            inner.split_once('\n').map_or(inner, |(_, b)| b).trim()
        });
    serde_json::from_str(t).ok()
}

/// Whether the first of `calls` is the expected call.
pub fn call_matches(expected: &Value, calls: &[ToolCall]) -> bool {
    let Some(call) = calls.first() else {
        return false;
    };
    if expected.get("name").and_then(Value::as_str) != Some(call.name.as_str()) {
        return false;
    }
    let Ok(Value::Object(args)) = serde_json::from_str::<Value>(&call.arguments) else {
        return false;
    };
    let empty = serde_json::Map::new();
    let accepted = expected
        .get("arguments")
        .and_then(Value::as_object)
        .unwrap_or(&empty);
    let optional = |list: &Value| {
        list.as_array()
            .is_some_and(|l| l.iter().any(|v| v.as_str() == Some("")))
    };
    accepted.iter().all(|(name, list)| match args.get(name) {
        None => optional(list),
        Some(v) => accepts(list, v),
    }) && args.keys().all(|k| accepted.contains_key(k))
}

/// Whether `v` is one of the accepted values in `list`. An accepted object lists accepted
/// values per field in turn (BFCL's nested arguments).
fn accepts(list: &Value, v: &Value) -> bool {
    list.as_array().is_some_and(|l| {
        l.iter()
            .filter(|ok| ok.as_str() != Some(""))
            .any(|ok| match (ok, v) {
                (Value::Object(fields), Value::Object(got)) => {
                    fields.iter().all(|(k, inner)| match got.get(k) {
                        None => inner
                            .as_array()
                            .is_some_and(|a| a.iter().any(|x| x.as_str() == Some(""))),
                        Some(x) => accepts(inner, x),
                    }) && got.keys().all(|k| fields.contains_key(k))
                }
                _ => json_matches(ok, v),
            })
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn json_fields_match_by_value_with_extra_fields_ignored() {
        let e = json!({"name": "Marie Curie", "year": 1903, "tags": ["physics", "chemistry"], "place": {"city": "Paris"}});
        let ok = json!({"name": "marie curie.", "year": 1903.0, "tags": ["Physics", "chemistry"], "place": {"city": "paris", "zip": "75005"}, "extra": true});
        assert!(json_matches(&e, &ok));
        assert!(json_answer_matches(&e, &format!("```json\n{ok}\n```")));
        for bad in [
            json!({"name": "Pierre Curie", "year": 1903, "tags": ["physics", "chemistry"], "place": {"city": "Paris"}}),
            json!({"name": "Marie Curie", "year": 1904, "tags": ["physics", "chemistry"], "place": {"city": "Paris"}}),
            json!({"name": "Marie Curie", "year": 1903, "tags": ["physics"], "place": {"city": "Paris"}}),
            json!({"name": "Marie Curie", "year": 1903, "tags": ["physics", "chemistry"]}),
        ] {
            assert!(!json_matches(&e, &bad), "{bad}");
        }
        assert!(json_matches(&json!({"n": 12}), &json!({"n": "12"})));
        assert!(!json_answer_matches(&e, "Marie Curie, 1903"));
        assert!(!json_matches(&json!({"a": ""}), &json!({"a": "x"})));
    }

    #[test]
    fn calls_match_name_and_accepted_arguments() {
        let e =
            json!({"name": "area", "arguments": {"base": [10], "height": [5], "unit": ["cm", ""]}});
        let call = |name: &str, args: Value| ToolCall {
            id: "c".into(),
            name: name.into(),
            arguments: args.to_string(),
        };
        assert!(call_matches(
            &e,
            &[call("area", json!({"base": 10, "height": 5}))]
        ));
        assert!(call_matches(
            &e,
            &[call(
                "area",
                json!({"base": 10.0, "height": "5", "unit": "CM"})
            )]
        ));
        assert!(!call_matches(
            &e,
            &[call("volume", json!({"base": 10, "height": 5}))]
        ));
        assert!(
            !call_matches(&e, &[call("area", json!({"base": 10}))]),
            "a required argument is missing"
        );
        assert!(!call_matches(
            &e,
            &[call("area", json!({"base": 10, "height": 6}))]
        ));
        assert!(
            !call_matches(
                &e,
                &[call("area", json!({"base": 10, "height": 5, "depth": 1}))]
            ),
            "an argument not expected"
        );
        assert!(!call_matches(&e, &[]));
        // Nested: an accepted object lists accepted values per field.
        let nested = json!({"name": "book", "arguments": {"room": [{"type": ["double", "twin"], "nights": [2]}]}});
        assert!(call_matches(
            &nested,
            &[call("book", json!({"room": {"type": "Twin", "nights": 2}}))]
        ));
        assert!(!call_matches(
            &nested,
            &[call(
                "book",
                json!({"room": {"type": "single", "nights": 2}})
            )]
        ));
    }
}
