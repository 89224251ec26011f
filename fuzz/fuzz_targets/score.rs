//! The eval answer scorer on arbitrary model text, gold answers, aliases and choices
//! (fields separated by NUL bytes): never a panic.
#![no_main]
use edgecascade::Kind;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Some((&k, rest)) = data.split_first() else {
        return;
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
    let _ = edgecascade::eval::score::is_correct(kind, &got, &answer, &aliases, &choices);
    let _ = edgecascade::eval::score::extract(kind, &got, &choices);
    let _ = edgecascade::eval::score::normalize(&got);
});
