//! Reading a short answer out of a model's text, for each answer kind: a choice letter, a
//! number, yes/no, or a normalised string, tolerant of the ways models phrase it ("The answer is
//! (B).", "1,234 apples", "Yes."). The cascade's calibrated signal uses it at run time (did the
//! local answer come in the expected format?); `eval` scores answers with it.

use crate::types::Kind;

/// Pulls the answer of `kind` out of a model's `text`, normalised for comparison: a letter for
/// `choice`, a number's decimal text for `number`, "yes"/"no" for `yesno`, a normalised string
/// for `exact`. `None` when the text holds no answer of that kind (a format failure).
pub fn extract(kind: Kind, text: &str, choices: &[String]) -> Option<String> {
    match kind {
        Kind::Choice => extract_choice(text, choices).map(String::from),
        Kind::Number => extract_number(text).map(format_number),
        Kind::YesNo => extract_yesno(text).map(String::from),
        Kind::Exact => {
            let t = after_marker(text).unwrap_or(text);
            let line = t.lines().map(str::trim).find(|l| !l.is_empty())?;
            let n = normalize(line);
            (!n.is_empty()).then_some(n)
        }
    }
}

fn format_number(x: f64) -> String {
    if x.fract() == 0.0 && x.abs() < 1e15 {
        format!("{}", x as i64)
    } else {
        format!("{x}")
    }
}

/// Lower case, punctuation and the articles a/an/the dropped, whitespace collapsed.
pub fn normalize(s: &str) -> String {
    let lower: String = s
        .to_lowercase()
        .chars()
        .map(|c| if c.is_alphanumeric() { c } else { ' ' })
        .collect();
    lower
        .split_whitespace()
        .filter(|w| !matches!(*w, "a" | "an" | "the"))
        .collect::<Vec<_>>()
        .join(" ")
}

/// The text after an explicit answer marker ("answer is", "answer:"), if there is one.
fn after_marker(text: &str) -> Option<&str> {
    let lower = text.to_lowercase();
    ["answer is", "answer:", "answer would be", "answer ="]
        .iter()
        .filter_map(|m| lower.rfind(m).map(|i| i + m.len()))
        .max()
        .map(|i| text[i..].trim_start_matches([' ', ':', '*']))
}

fn extract_choice<'a>(text: &str, choices: &'a [String]) -> Option<&'a str> {
    const LETTERS: [&str; 26] = [
        "A", "B", "C", "D", "E", "F", "G", "H", "I", "J", "K", "L", "M", "N", "O", "P", "Q", "R",
        "S", "T", "U", "V", "W", "X", "Y", "Z",
    ];
    let n = if choices.is_empty() {
        5
    } else {
        choices.len().min(26)
    };
    let letter = |c: char| {
        let c = c.to_ascii_uppercase();
        (c.is_ascii_uppercase() && ((c as u8 - b'A') as usize) < n)
            .then(|| LETTERS[(c as u8 - b'A') as usize])
    };
    // A letter standing alone at the start of `s`: "B", "(B)", "B.", "B) text", "**B**".
    let leading = |s: &str| {
        let s = s.trim_start_matches(|c: char| {
            c.is_whitespace() || matches!(c, '(' | '[' | '*' | '"' | '\'')
        });
        let mut it = s.chars();
        let c = it.next()?;
        let standalone = it.next().is_none_or(|d| !d.is_alphanumeric());
        // "A" is also an English article: "A cell..." is not an answer.
        let article = c == 'A'
            && s.len() > 2
            && s.as_bytes()[1] == b' '
            && s.as_bytes()[2].is_ascii_lowercase();
        if standalone && !article {
            letter(c)
        } else {
            None
        }
    };
    if let Some(rest) = after_marker(text) {
        if let Some(l) = leading(rest) {
            return Some(l);
        }
    }
    if let Some(l) = leading(text) {
        return Some(l);
    }
    // "(B)" anywhere.
    let b = text.as_bytes();
    for i in 0..b.len().saturating_sub(2) {
        if b[i] == b'(' && b[i + 2] == b')' {
            if let Some(l) = letter(b[i + 1] as char) {
                return Some(l);
            }
        }
    }
    // The text of exactly one choice (of the first 26: only they have letters).
    let t = normalize(text);
    let hits: Vec<usize> = choices
        .iter()
        .take(LETTERS.len())
        .enumerate()
        .filter(|(_, c)| {
            let c = normalize(c);
            !c.is_empty() && (t == c || t.starts_with(&format!("{c} ")))
        })
        .map(|(i, _)| i)
        .collect();
    (hits.len() == 1).then(|| LETTERS[hits[0]])
}

/// "yes" or "no" from a yes/no answer, if it gives one.
pub fn extract_yesno(text: &str) -> Option<&'static str> {
    let t = after_marker(text).unwrap_or(text).to_lowercase();
    let word = |w: &str| match w {
        "yes" | "true" | "correct" => Some("yes"),
        "no" | "false" | "incorrect" => Some("no"),
        _ => None,
    };
    let words: Vec<&str> = t
        .split(|c: char| !c.is_alphanumeric())
        .filter(|w| !w.is_empty())
        .collect();
    // The first word decides; otherwise the first yes/no anywhere.
    words
        .first()
        .and_then(|w| word(w))
        .or_else(|| words.iter().find_map(|w| word(w)))
}

/// The answer number: after an answer marker, else after the last "=", else the first number.
/// Thousands commas, currency signs, units and trailing text are ignored.
pub fn extract_number(text: &str) -> Option<f64> {
    if let Some(rest) = after_marker(text) {
        if let Some(x) = first_number(rest) {
            return Some(x);
        }
    }
    if let Some(i) = text.rfind('=') {
        if let Some(x) = first_number(&text[i + 1..]) {
            return Some(x);
        }
    }
    first_number(text)
}

fn first_number(text: &str) -> Option<f64> {
    let chars: Vec<char> = text.chars().collect();
    let mut i = 0;
    while i < chars.len() {
        if chars[i].is_ascii_digit() {
            let neg = i > 0
                && matches!(chars[i - 1], '-' | '\u{2212}')
                && (i < 2 || !chars[i - 2].is_ascii_alphanumeric());
            let mut s = String::new();
            let mut j = i;
            while j < chars.len() {
                let c = chars[j];
                if c.is_ascii_digit() {
                    s.push(c);
                } else if c == ','
                    && chars
                        .get(j + 1..j + 4)
                        .is_some_and(|g| g.iter().all(char::is_ascii_digit))
                    && chars.get(j + 4).is_none_or(|c| !c.is_ascii_digit())
                {
                    // A thousands separator: exactly three digits follow.
                } else if c == '.'
                    && chars.get(j + 1).is_some_and(char::is_ascii_digit)
                    && !s.contains('.')
                {
                    s.push('.');
                } else {
                    break;
                }
                j += 1;
            }
            let x: f64 = s.parse().ok()?;
            return Some(if neg { -x } else { x });
        }
        i += 1;
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Found by the `score` fuzzer: a choice answer matched by its text among more than 26
    /// choices indexed past the 26 letters.
    #[test]
    fn choices_past_the_alphabet_have_no_letter_and_do_not_panic() {
        let choices: Vec<String> = (0..40).map(|i| format!("option {i}")).collect();
        assert_eq!(extract(Kind::Choice, "option 32", &choices), None);
        assert_eq!(
            extract(Kind::Choice, "option 2", &choices).as_deref(),
            Some("C")
        );
    }
}
