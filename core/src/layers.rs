//! The one-way rule, checked: every top-level module sits in a layer and may name only modules
//! in layers below its own (modules of one row are peers and do not name each other). A new
//! module must be placed in the table; a `crate::` path that climbs fails this test with the
//! file and the line.

use std::collections::BTreeMap;
use std::path::Path;

/// Bottom to top. Modules in one row are peers that do not name each other.
const LAYERS: &[&[&str]] = &[
    // Leaves: shared helpers that import nothing of the crate.
    &["panics", "net", "stats", "logging"],
    // Every error type, as data.
    &["error"],
    // Plain data: requests, responses, events.
    &["types"],
    // Confidence signals and the calibrated model over them.
    &["signal"],
    // The config file's types.
    &["config"],
    // Prices, budgets, the ledger.
    &["cost"],
    // The model manager and tool definitions.
    &["models", "tools"],
    // The tiers: llama.cpp and the OpenAI-compatible client.
    &["engine"],
    // Decisions: the router and the cascade.
    &["policy"],
    // The public runtime that ties the tiers and the policy together.
    &["runtime"],
    // Offline evaluation and calibration (the `eval` feature).
    &["eval"],
];

fn layer_of(module: &str) -> Option<usize> {
    LAYERS.iter().position(|row| row.contains(&module))
}

/// Each `crate::name` a Rust source names outside comments, with its line number; for a group
/// (`use crate::{a::X, b}`, over any number of lines) each of its top-level names.
fn named_modules(src: &str) -> Vec<(usize, String)> {
    let code: String = src
        .lines()
        .map(|l| l.split("//").next().unwrap_or(""))
        .collect::<Vec<_>>()
        .join("\n");
    let ident = |s: &str| -> String {
        s.trim_start()
            .chars()
            .take_while(|c| c.is_alphanumeric() || *c == '_')
            .collect()
    };
    let line_at = |at: usize| code[..at].matches('\n').count() + 1;
    let mut out = Vec::new();
    let mut from = 0;
    while let Some(found) = code[from..].find("crate::") {
        let at = from + found + "crate::".len();
        from = at;
        if !code[at..].starts_with('{') {
            out.push((line_at(at), ident(&code[at..])));
            continue;
        }
        // A group: split on the commas at depth one.
        let (mut depth, mut start) = (0usize, at + 1);
        for (i, c) in code[at..].char_indices() {
            let i = at + i;
            match c {
                '{' => depth += 1,
                '}' | ',' if depth == 1 => {
                    let name = ident(&code[start..i]);
                    if !name.is_empty() {
                        let lead = code[start..i].len() - code[start..i].trim_start().len();
                        out.push((line_at(start + lead), name));
                    }
                    start = i + 1;
                    if c == '}' {
                        break;
                    }
                }
                '}' => depth -= 1,
                _ => {}
            }
        }
    }
    out
}

fn sources(dir: &Path, out: &mut Vec<std::path::PathBuf>) {
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            sources(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

#[test]
fn modules_depend_one_way() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut files = Vec::new();
    sources(&root, &mut files);
    files.sort();
    let mut climbs = Vec::new();
    let mut edges: BTreeMap<String, BTreeMap<String, usize>> = BTreeMap::new();
    for file in &files {
        let rel = file.strip_prefix(&root).unwrap();
        let top = rel.iter().next().unwrap().to_string_lossy();
        let top = top.trim_end_matches(".rs").to_owned();
        // The crate root, and the test-only checks of its shape.
        if matches!(top.as_str(), "lib" | "layers" | "surface") {
            continue;
        }
        let own = layer_of(&top).unwrap_or_else(|| {
            panic!(
                "module `{top}` ({}) is in no layer of LAYERS",
                rel.display()
            )
        });
        let src = std::fs::read_to_string(file).unwrap();
        for (line, name) in named_modules(&src) {
            if name == top || name == "self" {
                continue;
            }
            *edges
                .entry(top.clone())
                .or_default()
                .entry(name.clone())
                .or_default() += 1;
            match layer_of(&name) {
                Some(l) if l < own => {}
                Some(_) => climbs.push(format!(
                    "{}:{line}: `{top}` names `{name}`, which is not below it",
                    rel.display()
                )),
                None => climbs.push(format!(
                    "{}:{line}: `crate::{name}` is not a module of LAYERS (name the module, not a \
                     re-export at the crate root)",
                    rel.display()
                )),
            }
        }
    }
    assert!(climbs.is_empty(), "{}", climbs.join("\n"));
    // The check sees real edges (a parser that found nothing would pass vacuously).
    assert!(edges["runtime"].contains_key("policy"), "{edges:?}");
    assert!(edges["engine"].contains_key("error"), "{edges:?}");
    assert!(
        edges.values().map(BTreeMap::len).sum::<usize>() > 20,
        "{edges:?}"
    );
}

#[test]
fn the_check_sees_a_climb() {
    let src = "use crate::{config::Config, runtime};\n\
               let x = crate::eval::run(); // crate::net\n\
               use crate::{\n    cost::{now_s, Ledger},\n    tools,\n};\n";
    let found = named_modules(src);
    let names: Vec<_> = found.iter().map(|(l, n)| (*l, n.as_str())).collect();
    assert_eq!(
        names,
        [
            (1, "config"),
            (1, "runtime"),
            (2, "eval"),
            (4, "cost"),
            (5, "tools")
        ]
    );
}
