//! Answer extraction and scoring for each answer kind, tolerant of the ways models phrase a
//! short answer ("The answer is (B).", "1,234 apples", "Yes.").

use super::Kind;
pub use crate::signal::answer::{extract, extract_number, extract_yesno, normalize};

/// One input of the `score` fuzz target, run as the fuzzer runs it: the first byte picks the
/// kind; the rest, split at NUL bytes, is the gold answer, the model's text, `|`-separated
/// aliases, then the choices. Whether the text scores as correct. For the fuzzer and its CI
/// replay, so both run the same code.
#[doc(hidden)]
pub fn score_fuzz_input(data: &[u8]) -> bool {
    let Some((&k, rest)) = data.split_first() else {
        return false;
    };
    let text = String::from_utf8_lossy(rest);
    let mut fields = text.split('\0');
    let answer = fields.next().unwrap_or_default().to_owned();
    let got = fields.next().unwrap_or_default().to_owned();
    let aliases: Vec<String> = fields
        .next()
        .unwrap_or_default()
        .split('|')
        .map(str::to_owned)
        .collect();
    let choices: Vec<String> = fields.map(str::to_owned).collect();
    let kind = Kind::ALL[usize::from(k) % Kind::ALL.len()];
    let _ = extract(kind, &got, &choices);
    let _ = normalize(&got);
    is_correct(kind, &got, &answer, &aliases, &choices)
}

/// Whether `text` answers correctly: `answer` (and any `aliases`) is the gold answer.
pub fn is_correct(
    kind: Kind,
    text: &str,
    answer: &str,
    aliases: &[String],
    choices: &[String],
) -> bool {
    let Some(got) = extract(kind, text, choices) else {
        return false;
    };
    std::iter::once(answer)
        .chain(aliases.iter().map(String::as_str))
        .any(|gold| match kind {
            Kind::Number => extract_number(gold)
                .is_some_and(|g| numbers_equal(g, got.parse().unwrap_or(f64::NAN))),
            Kind::Choice => gold
                .trim()
                .trim_matches(['(', ')', '.'])
                .eq_ignore_ascii_case(&got),
            Kind::YesNo => extract_yesno(gold) == Some(got.as_str()),
            Kind::Exact => exact_match(&got, &normalize(gold)),
        })
}

/// A normalised answer matches a normalised gold string when it equals it, or holds it as a
/// whole-word span while being at most eight words longer ("It is Paris" for "Paris"; a list
/// of ten guesses does not count).
fn exact_match(got: &str, gold: &str) -> bool {
    if gold.is_empty() {
        return false;
    }
    if got == gold {
        return true;
    }
    let (g, a): (Vec<&str>, Vec<&str>) = (got.split(' ').collect(), gold.split(' ').collect());
    g.len() <= a.len() + 8 && g.windows(a.len()).any(|w| w == a.as_slice())
}

fn numbers_equal(a: f64, b: f64) -> bool {
    (a - b).abs() <= 1e-6 * a.abs().max(b.abs()).max(1.0)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn abcd() -> Vec<String> {
        ["photosynthesis", "respiration", "digestion", "erosion"]
            .map(String::from)
            .to_vec()
    }

    #[test]
    fn choice_answers() {
        let c = abcd();
        for (text, want) in [
            ("B", Some("B")),
            ("The answer is (B).", Some("B")),
            ("(C) digestion", Some("C")),
            ("D. erosion", Some("D")),
            ("**A**", Some("A")),
            ("answer: c", Some("C")),
            ("I think the answer is B, respiration.", Some("B")),
            ("respiration", Some("B")),
            ("Respiration.", Some("B")),
            ("A cell makes energy by respiration", None),
            ("E", None), // out of range for four choices
            ("I don't know", None),
            ("", None),
        ] {
            assert_eq!(extract(Kind::Choice, text, &c).as_deref(), want, "{text:?}");
        }
        assert!(is_correct(Kind::Choice, "The answer is (B).", "B", &[], &c));
        assert!(!is_correct(
            Kind::Choice,
            "The answer is (B).",
            "C",
            &[],
            &c
        ));
    }

    #[test]
    fn number_answers() {
        for (text, want) in [
            ("42", Some(42.0)),
            ("1,234 apples", Some(1234.0)),
            ("$1,234.50", Some(1234.5)),
            ("The answer is -7.", Some(-7.0)),
            ("5 + 91 = 96", Some(96.0)),
            ("It is 3.5 meters", Some(3.5)),
            ("There are 12, 13 or 14", Some(12.0)),
            ("Answer: 1,000,000", Some(1e6)),
            ("x-3", Some(3.0)), // a hyphen after a letter is not a sign
            ("no idea", None),
        ] {
            assert_eq!(extract_number(text), want, "{text:?}");
        }
        assert!(is_correct(Kind::Number, "1,234 apples", "1234", &[], &[]));
        assert!(is_correct(Kind::Number, "96.0", "96", &[], &[]));
        assert!(!is_correct(Kind::Number, "95", "96", &[], &[]));
        assert!(is_correct(
            Kind::Number,
            "The total is $18.",
            "18",
            &[],
            &[]
        ));
    }

    #[test]
    fn yesno_answers() {
        for (text, want) in [
            ("Yes.", Some("yes")),
            ("no", Some("no")),
            ("NO, it does not", Some("no")),
            ("True", Some("yes")),
            ("I would say yes", Some("yes")),
            ("The answer is no.", Some("no")),
            ("Nobody knows", None),
            ("maybe", None),
        ] {
            assert_eq!(extract(Kind::YesNo, text, &[]).as_deref(), want, "{text:?}");
        }
        assert!(is_correct(Kind::YesNo, "Yes.", "yes", &[], &[]));
        assert!(is_correct(Kind::YesNo, "False", "no", &[], &[]));
        assert!(!is_correct(Kind::YesNo, "Yes", "no", &[], &[]));
    }

    #[test]
    fn exact_answers_with_aliases() {
        assert!(is_correct(
            Kind::Exact,
            "The Eiffel Tower.",
            "eiffel tower",
            &[],
            &[]
        ));
        assert!(is_correct(
            Kind::Exact,
            "Paris\nIt is the capital.",
            "paris",
            &[],
            &[]
        ));
        assert!(is_correct(
            Kind::Exact,
            "The answer is NYC",
            "New York City",
            &["NYC".into()],
            &[]
        ));
        assert!(!is_correct(Kind::Exact, "London", "Paris", &[], &[]));
        assert!(is_correct(Kind::Exact, "It is Paris.", "Paris", &[], &[]));
        assert!(!is_correct(Kind::Exact, "Parisian", "Paris", &[], &[]));
        assert!(!is_correct(
            Kind::Exact,
            "London, Paris, Rome, Berlin, Madrid, Lisbon, Vienna, Prague, Oslo, Bern",
            "Paris",
            &[],
            &[]
        ));
        assert!(!is_correct(Kind::Exact, "  ", "Paris", &[], &[]));
    }
}
