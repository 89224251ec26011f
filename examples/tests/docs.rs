//! The docs cannot rot: every ```sh block of README.md and docs/ runs against the test model,
//! every ```toml block loads as a config, every relative link and anchor resolves, and the
//! configuration reference names every key the config types accept (and no key they refuse).
#![allow(missing_docs)]

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::Command;

use edgecascade::Config;

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// README.md and every page under docs/ (not the built book).
fn pages() -> Vec<PathBuf> {
    fn walk(dir: &Path, out: &mut Vec<PathBuf>) {
        for e in std::fs::read_dir(dir).unwrap() {
            let p = e.unwrap().path();
            if p.is_dir() && !p.ends_with("book") {
                walk(&p, out);
            } else if p.extension().is_some_and(|x| x == "md") {
                out.push(p);
            }
        }
    }
    let mut out = vec![repo().join("README.md")];
    walk(&repo().join("docs"), &mut out);
    out.sort();
    out
}

struct Block {
    page: PathBuf,
    line: usize,
    lang: String,
    body: String,
}

impl std::fmt::Display for Block {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let rel = self.page.strip_prefix(repo()).unwrap_or(&self.page);
        write!(f, "{}:{} ({})", rel.display(), self.line, self.lang)
    }
}

/// Fenced blocks (``` at the start of a line) with their language and first line.
fn blocks(page: &Path) -> Vec<Block> {
    let text = std::fs::read_to_string(page).unwrap();
    let mut out = Vec::new();
    let mut open: Option<Block> = None;
    for (i, line) in text.lines().enumerate() {
        match (&mut open, line.strip_prefix("```")) {
            (None, Some(lang)) => {
                open = Some(Block {
                    page: page.to_owned(),
                    line: i + 1,
                    lang: lang.trim().to_owned(),
                    body: String::new(),
                });
            }
            (Some(_), Some(rest)) if rest.trim().is_empty() => out.push(open.take().unwrap()),
            (Some(b), _) => {
                b.body.push_str(line);
                b.body.push('\n');
            }
            (None, None) => {}
        }
    }
    assert!(
        open.is_none(),
        "{}: a fence is never closed",
        page.display()
    );
    out
}

fn all_blocks(lang: &str) -> Vec<Block> {
    pages()
        .iter()
        .flat_map(|p| blocks(p))
        .filter(|b| b.lang == lang)
        .collect()
}

/// A folder that looks like a user's working directory after the demo: `models/` holds the test
/// model (linked, not copied), and HOME, the ledger and the model store are all inside it.
fn workdir() -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    let models = dir.path().join("models");
    std::fs::create_dir(&models).unwrap();
    let m = common::smollm2();
    std::os::unix::fs::symlink(&m, models.join(m.file_name().unwrap())).unwrap();
    dir
}

#[test]
fn every_sh_sample_runs() {
    let blocks = all_blocks("sh");
    assert!(blocks.len() >= 10, "only {} sh samples found", blocks.len());
    let bin_dir = Path::new(env!("CARGO_BIN_EXE_edgecascade"))
        .parent()
        .unwrap();
    let path = format!(
        "{}:{}",
        bin_dir.display(),
        std::env::var("PATH").unwrap_or_default()
    );
    let mut failed = Vec::new();
    for b in &blocks {
        let dir = workdir();
        let home = dir.path();
        let o = Command::new("bash")
            .args(["-euo", "pipefail", "-c", &b.body])
            .current_dir(home)
            .env("PATH", &path)
            .env("HOME", home)
            .env("XDG_DATA_HOME", home.join("data"))
            .env("EDGECASCADE_MODELS", home.join("models"))
            .env_remove("EDGECASCADE_LEDGER")
            .env_remove("EDGECASCADE_CONFIG")
            .output()
            .unwrap();
        if !o.status.success() {
            failed.push(format!(
                "{b}: {}\n{}\n{}",
                o.status,
                b.body,
                String::from_utf8_lossy(&o.stderr)
            ));
        }
    }
    println!("{} sh samples ran", blocks.len());
    assert!(failed.is_empty(), "{}", failed.join("\n---\n"));
}

#[test]
fn every_toml_sample_is_a_valid_config() {
    let blocks = all_blocks("toml");
    assert!(
        blocks.len() >= 5,
        "only {} toml samples found",
        blocks.len()
    );
    let mut failed = Vec::new();
    for b in &blocks {
        // Relative model paths in the samples mean the demo's `models/` folder.
        let dir = workdir();
        let checked = Config::from_toml(&b.body).and_then(|mut c| {
            if let Some(m) = &c.local.model {
                c.local.model = Some(dir.path().join(m));
            }
            c.validate().map(|()| c)
        });
        if let Err(e) = checked {
            failed.push(format!("{b}: {e}"));
        }
        for key in commented_keys(&b.body) {
            if let Err(e) = Config::from_toml(&key.1) {
                if e.to_string().contains("unknown field") {
                    failed.push(format!(
                        "{b}: the commented key `{}` is not one: {e}",
                        key.0
                    ));
                }
            }
        }
    }
    println!("{} toml samples loaded", blocks.len());
    assert!(failed.is_empty(), "{}", failed.join("\n"));
}

/// `# name = ...` lines inside a toml sample, each as the key and a one-key config of its table.
fn commented_keys(toml: &str) -> Vec<(String, String)> {
    let mut table = String::new();
    let mut out = Vec::new();
    for line in toml.lines() {
        let l = line.trim();
        if l.starts_with('[') {
            table = l.split('#').next().unwrap().trim().to_owned();
            continue;
        }
        let Some(rest) = l.strip_prefix('#') else {
            continue;
        };
        let rest = rest.trim();
        // `# [[router.rules]]` opens a commented table; `# key = value, key = value` lists keys.
        if rest.starts_with('[') {
            table = rest.split('#').next().unwrap().trim().to_owned();
            continue;
        }
        for part in rest.split(", ") {
            let Some((k, _)) = part.split_once(" = ") else {
                break;
            };
            let k = k.trim();
            if k.chars().all(|c| c.is_ascii_lowercase() || c == '_') && !k.is_empty() {
                // The value does not matter here, only whether the key is known.
                out.push((k.to_owned(), format!("{table}\n{k} = \"?\"\n")));
            }
        }
    }
    out
}

/// The keys a config table accepts, from its own "unknown field" error.
fn accepted_keys(table: &str) -> Vec<String> {
    let probe = format!("{table}\nzz_not_a_key = 1\n");
    let e = Config::from_toml(&probe).unwrap_err().to_string();
    let list = e
        .split("expected one of ")
        .nth(1)
        .or_else(|| e.split("expected ").nth(1))
        .unwrap_or_else(|| panic!("{table}: {e}"));
    list.split(',')
        .map(|k| k.trim().trim_matches(|c| c == '`' || c == '\n').to_owned())
        .map(|k| k.split('`').next().unwrap().to_owned())
        .filter(|k| !k.is_empty())
        .collect()
}

#[test]
fn the_configuration_reference_names_every_key() {
    let page = repo().join("docs/guide/configuration.md");
    let text = std::fs::read_to_string(&page).unwrap();
    let sections = accepted_keys("");
    assert!(sections.contains(&"local".to_owned()), "{sections:?}");
    let mut missing = Vec::new();
    for s in &sections {
        let keys = accepted_keys(&format!("[{s}]"));
        assert!(!keys.is_empty(), "[{s}]");
        if !text.contains(&format!("[{s}]")) {
            missing.push(format!("[{s}]"));
        }
        for k in keys {
            let named = [format!("{k} ="), format!("`{k}`")];
            if !named.iter().any(|n| text.contains(n.as_str())) {
                missing.push(format!("{s}.{k}"));
            }
        }
    }
    assert!(
        missing.is_empty(),
        "docs/guide/configuration.md does not name: {missing:?}"
    );
}

/// GitHub's (and mdBook's) anchor of a heading.
fn slug(heading: &str) -> String {
    heading
        .trim()
        .to_lowercase()
        .chars()
        .filter_map(|c| match c {
            ' ' => Some('-'),
            c if c.is_alphanumeric() || c == '-' || c == '_' => Some(c),
            _ => None,
        })
        .collect()
}

fn anchors(page: &Path) -> BTreeSet<String> {
    let mut seen: BTreeMap<String, usize> = BTreeMap::new();
    let mut out = BTreeSet::new();
    for (_, line) in prose(page) {
        if let Some(h) = line.strip_prefix('#') {
            let h = h.trim_start_matches('#');
            if h.starts_with(' ') {
                let base = slug(&h.replace('`', ""));
                let n = seen.entry(base.clone()).or_insert(0);
                out.insert(if *n == 0 {
                    base.clone()
                } else {
                    format!("{base}-{n}")
                });
                *n += 1;
            }
        }
    }
    out
}

/// The lines of `page` outside fenced code, numbered from 1.
fn prose(page: &Path) -> Vec<(usize, String)> {
    let text = std::fs::read_to_string(page).unwrap();
    let mut fenced = false;
    let mut out = Vec::new();
    for (i, line) in text.lines().enumerate() {
        if line.starts_with("```") {
            fenced = !fenced;
        }
        if !fenced {
            out.push((i + 1, line.to_owned()));
        }
    }
    out
}

/// `](target)` links outside code, with their line.
fn links(page: &Path) -> Vec<(usize, String)> {
    let mut out = Vec::new();
    for (n, line) in prose(page) {
        // Inline code can hold `](` of its own.
        let prose: String = line.split('`').step_by(2).collect::<Vec<_>>().join("");
        for part in prose.split("](").skip(1) {
            if let Some(end) = part.find(')') {
                out.push((n, part[..end].to_owned()));
            }
        }
    }
    out
}

#[test]
fn every_relative_link_resolves() {
    let mut broken = Vec::new();
    let mut checked = 0;
    for page in pages() {
        for (line, target) in links(&page) {
            if target.contains("://") || target.starts_with("mailto:") {
                continue;
            }
            checked += 1;
            let (file, anchor) = target.split_once('#').unwrap_or((&target, ""));
            let dest = if file.is_empty() {
                page.clone()
            } else {
                page.parent().unwrap().join(file)
            };
            let rel = page.strip_prefix(repo()).unwrap().display().to_string();
            if !dest.exists() {
                broken.push(format!("{rel}:{line}: {target} (no such file)"));
            } else if !anchor.is_empty()
                && dest.extension().is_some_and(|x| x == "md")
                && !anchors(&dest).contains(anchor)
            {
                broken.push(format!("{rel}:{line}: {target} (no such heading)"));
            }
        }
    }
    assert!(checked > 50, "only {checked} links found");
    assert!(broken.is_empty(), "{}", broken.join("\n"));
}

#[test]
fn every_guide_page_is_in_the_book() {
    let summary = std::fs::read_to_string(repo().join("docs/SUMMARY.md")).unwrap();
    let listed: BTreeSet<String> = links(&repo().join("docs/SUMMARY.md"))
        .into_iter()
        .map(|(_, t)| t)
        .collect();
    for page in pages() {
        let Ok(rel) = page.strip_prefix(repo().join("docs")) else {
            continue;
        };
        let rel = rel.display().to_string();
        if rel == "SUMMARY.md" || rel.starts_with("eval/") {
            continue;
        }
        assert!(
            listed.contains(&rel),
            "docs/{rel} is not in docs/SUMMARY.md:\n{summary}"
        );
    }
}

#[test]
fn the_checks_catch_what_they_exist_for() {
    // A broken sample, a broken config, an unknown key and a missing anchor are each seen.
    let dir = tempfile::tempdir().unwrap();
    let page = dir.path().join("p.md");
    std::fs::write(
        &page,
        "# A title\n\n[ok](#a-title) [bad](#nope)\n\n```toml\n[local]\n# threadz = 4\n```\n",
    )
    .unwrap();
    assert!(anchors(&page).contains("a-title"));
    assert!(!anchors(&page).contains("nope"));
    assert_eq!(links(&page).len(), 2);
    let b = &blocks(&page)[0];
    let keys = commented_keys(&b.body);
    assert_eq!(keys[0].0, "threadz");
    let e = Config::from_toml(&keys[0].1).unwrap_err().to_string();
    assert!(e.contains("unknown field"), "{e}");
    assert!(accepted_keys("[local]").contains(&"n_ctx".to_owned()));
    assert!(!accepted_keys("[local]").contains(&"threadz".to_owned()));
}
