//! The public API, listed: every item an outside crate can name (modules, types, functions,
//! constants, re-exports, public fields and methods), read from the sources with `syn` and
//! compared with `core/public-api.txt`. A change to the surface shows up as a diff in this
//! test; make it deliberate with `EDGECASCADE_BLESS=1 cargo test -p edgecascade --lib surface`.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use syn::{Attribute, Item, Visibility};

fn is_pub(v: &Visibility) -> bool {
    matches!(v, Visibility::Public(_))
}

/// `None` for `#[cfg(test)]` code; else the features the item needs (`[eval]`), if any.
fn gate(attrs: &[Attribute]) -> Option<String> {
    let mut features = Vec::new();
    for a in attrs.iter().filter(|a| a.path().is_ident("cfg")) {
        let text = match &a.meta {
            syn::Meta::List(l) => l.tokens.to_string(),
            _ => continue,
        };
        if text
            .split(|c: char| !c.is_alphanumeric() && c != '_')
            .any(|w| w == "test")
        {
            return None;
        }
        for part in text.split("feature").skip(1) {
            if let Some(name) = part.split('"').nth(1) {
                features.push(name.to_owned());
            }
        }
    }
    Some(if features.is_empty() {
        String::new()
    } else {
        format!(" [{}]", features.join(","))
    })
}

struct Walk {
    lines: BTreeSet<String>,
    /// Inherent methods, by the name of their type, from every module (public or not).
    methods: Vec<(String, String, String)>,
    types: BTreeSet<String>,
}

fn file_of(dir: &Path, name: &str, attrs: &[Attribute]) -> PathBuf {
    for a in attrs.iter().filter(|a| a.path().is_ident("path")) {
        if let syn::Meta::NameValue(nv) = &a.meta {
            if let syn::Expr::Lit(syn::ExprLit {
                lit: syn::Lit::Str(s),
                ..
            }) = &nv.value
            {
                // Relative to the declaring file's own directory: `dir` itself for a `mod.rs`,
                // its parent for `name.rs` (whose submodules live in `name/`).
                let declaring_file_dir = if dir.with_extension("rs").is_file() {
                    dir.parent().unwrap()
                } else {
                    dir
                };
                return declaring_file_dir.join(s.value());
            }
        }
    }
    let flat = dir.join(format!("{name}.rs"));
    if flat.exists() {
        flat
    } else {
        dir.join(name).join("mod.rs")
    }
}

fn use_names(tree: &syn::UseTree, prefix: &str, out: &mut Vec<String>) {
    match tree {
        syn::UseTree::Path(p) => use_names(&p.tree, &format!("{prefix}{}::", p.ident), out),
        syn::UseTree::Name(n) => out.push(format!("{prefix}{}", n.ident)),
        syn::UseTree::Rename(r) => out.push(format!("{prefix}{} as {}", r.ident, r.rename)),
        syn::UseTree::Glob(_) => out.push(format!("{prefix}*")),
        syn::UseTree::Group(g) => {
            for t in &g.items {
                use_names(t, prefix, out);
            }
        }
    }
}

/// An item's visibility, attributes, kind and name (`None`: an item the listing skips).
fn head(item: &Item) -> Option<(&syn::Visibility, &[syn::Attribute], &'static str, String)> {
    Some(match item {
        Item::Fn(i) => (&i.vis, &i.attrs, "fn", i.sig.ident.to_string()),
        Item::Struct(i) => (&i.vis, &i.attrs, "struct", i.ident.to_string()),
        Item::Enum(i) => (&i.vis, &i.attrs, "enum", i.ident.to_string()),
        Item::Trait(i) => (&i.vis, &i.attrs, "trait", i.ident.to_string()),
        Item::Const(i) => (&i.vis, &i.attrs, "const", i.ident.to_string()),
        Item::Static(i) => (&i.vis, &i.attrs, "static", i.ident.to_string()),
        Item::Type(i) => (&i.vis, &i.attrs, "type", i.ident.to_string()),
        Item::Mod(i) => (&i.vis, &i.attrs, "mod", i.ident.to_string()),
        Item::Use(i) => (&i.vis, &i.attrs, "use", String::new()),
        _ => return None,
    })
}

impl Walk {
    /// `public`: whether `path` can be named from outside the crate.
    fn items(&mut self, items: &[Item], path: &str, dir: &Path, public: bool, gated: &str) {
        for item in items {
            if let Item::Impl(i) = item {
                self.inherent_methods(i, gated);
                continue;
            }
            let Some((vis, attrs, kind, name)) = head(item) else {
                continue;
            };
            let Some(g) = gate(attrs) else { continue };
            let g = format!("{gated}{g}");
            let visible = public && is_pub(vis);
            if let Item::Mod(m) = item {
                self.module(m, &format!("{path}::{name}"), dir, visible, &g);
            } else if visible {
                self.visible(item, path, kind, &name, &g);
            }
        }
    }

    /// The public methods of an inherent `impl` (trait impls are the trait's surface).
    fn inherent_methods(&mut self, i: &syn::ItemImpl, gated: &str) {
        let Some(g) = gate(&i.attrs) else { return };
        if i.trait_.is_some() {
            return;
        }
        let syn::Type::Path(tp) = &*i.self_ty else {
            return;
        };
        let ty = tp.path.segments.last().unwrap().ident.to_string();
        for f in &i.items {
            if let syn::ImplItem::Fn(f) = f {
                if let (true, Some(fg)) = (is_pub(&f.vis), gate(&f.attrs)) {
                    let g = format!("{gated}{g}{fg}");
                    self.methods.push((ty.clone(), f.sig.ident.to_string(), g));
                }
            }
        }
    }

    /// A module, inline or in its own file, walked with its visibility.
    fn module(&mut self, m: &syn::ItemMod, sub: &str, dir: &Path, visible: bool, g: &str) {
        let name = m.ident.to_string();
        if visible {
            self.lines.insert(format!("mod {sub}{g}"));
        }
        if let Some((_, inline)) = &m.content {
            return self.items(inline, sub, &dir.join(&name), visible, g);
        }
        let file = file_of(dir, &name, &m.attrs);
        let src =
            std::fs::read_to_string(&file).unwrap_or_else(|e| panic!("{}: {e}", file.display()));
        let parsed = syn::parse_file(&src).unwrap_or_else(|e| panic!("{}: {e}", file.display()));
        let sub_dir = if file.ends_with("mod.rs") {
            file.parent().unwrap().to_owned()
        } else {
            file.with_extension("")
        };
        self.items(&parsed.items, sub, &sub_dir, visible, g);
    }

    /// The lines of one item that can be named from outside the crate.
    fn visible(&mut self, item: &Item, path: &str, kind: &str, name: &str, g: &str) {
        match item {
            Item::Use(u) => {
                let mut names = Vec::new();
                use_names(&u.tree, "", &mut names);
                for n in names {
                    self.lines.insert(format!("use {path}::{{{n}}}{g}"));
                    let last = n.rsplit(' ').next().unwrap().rsplit("::").next().unwrap();
                    self.types.insert(last.to_owned());
                }
            }
            Item::Struct(s) => {
                self.lines.insert(format!("struct {path}::{name}{g}"));
                self.types.insert(name.to_owned());
                for f in s.fields.iter().filter(|f| is_pub(&f.vis)) {
                    if let (Some(id), Some(fg)) = (&f.ident, gate(&f.attrs)) {
                        self.lines
                            .insert(format!("field {path}::{name}.{id}{g}{fg}"));
                    }
                }
            }
            Item::Enum(e) => {
                self.lines.insert(format!("enum {path}::{name}{g}"));
                self.types.insert(name.to_owned());
                for v in &e.variants {
                    if let Some(vg) = gate(&v.attrs) {
                        let id = &v.ident;
                        self.lines
                            .insert(format!("variant {path}::{name}::{id}{g}{vg}"));
                    }
                }
            }
            Item::Trait(t) => {
                self.lines.insert(format!("trait {path}::{name}{g}"));
                for i in &t.items {
                    if let syn::TraitItem::Fn(f) = i {
                        let id = &f.sig.ident;
                        self.lines.insert(format!("fn {path}::{name}::{id}{g}"));
                    }
                }
            }
            _ => {
                self.lines.insert(format!("{kind} {path}::{name}{g}"));
                self.types.insert(name.to_owned());
            }
        }
    }
}

/// The listing, and the number of names at the crate root.
fn surface() -> (Vec<String>, usize) {
    let src_dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let lib = syn::parse_file(&std::fs::read_to_string(src_dir.join("lib.rs")).unwrap()).unwrap();
    let mut w = Walk {
        lines: BTreeSet::new(),
        methods: Vec::new(),
        types: BTreeSet::new(),
    };
    w.items(&lib.items, "edgecascade", &src_dir, true, "");
    // Names at the root: its modules and items, its re-exports, and for a glob re-export
    // (`pub use types::*`) the items of that module.
    let mut root = 0;
    for l in &w.lines {
        let (kind, path) = l.split_once(' ').unwrap();
        let path = path.split(' ').next().unwrap();
        if kind == "use" {
            let Some(inner) = path
                .strip_prefix("edgecascade::{")
                .and_then(|p| p.strip_suffix('}'))
            else {
                continue;
            };
            root += match inner.strip_suffix("::*") {
                Some(module) => {
                    let prefix = format!("edgecascade::{module}::");
                    w.lines
                        .iter()
                        .filter_map(|l| l.split_once(' '))
                        .filter(|(k, p)| {
                            !matches!(*k, "field" | "variant" | "method")
                                && p.strip_prefix(&prefix)
                                    .is_some_and(|rest| !rest.contains("::"))
                        })
                        .count()
                }
                None => 1,
            };
        } else if !matches!(kind, "field" | "variant") && path.matches("::").count() == 1 {
            root += 1;
        }
    }
    for (ty, method, g) in std::mem::take(&mut w.methods) {
        if w.types.contains(&ty) {
            w.lines.insert(format!("method {ty}::{method}{g}"));
        }
    }
    (w.lines.into_iter().collect(), root)
}

#[test]
fn the_public_api_is_the_listed_one() {
    let (lines, root) = surface();
    let text = format!(
        "# The public API of the edgecascade crate (core/src/surface.rs writes it).\n\
         # Names at the crate root: {root}\n{}\n",
        lines.join("\n")
    );
    let file = Path::new(env!("CARGO_MANIFEST_DIR")).join("public-api.txt");
    if std::env::var_os("EDGECASCADE_BLESS").is_some() {
        std::fs::write(&file, &text).unwrap();
        return;
    }
    let kept = std::fs::read_to_string(&file).unwrap_or_default();
    let old: BTreeSet<&str> = kept.lines().collect();
    let new: BTreeSet<&str> = text.lines().collect();
    let added: Vec<_> = new.difference(&old).collect();
    let removed: Vec<_> = old.difference(&new).collect();
    assert!(
        added.is_empty() && removed.is_empty(),
        "the public API changed (bless it with EDGECASCADE_BLESS=1 if that is meant):\n\
         added:\n  {}\nremoved:\n  {}",
        added
            .iter()
            .map(|s| s.to_string())
            .collect::<Vec<_>>()
            .join("\n  "),
        removed
            .iter()
            .map(|s| s.to_string())
            .collect::<Vec<_>>()
            .join("\n  ")
    );
}

#[test]
fn the_listing_sees_what_an_app_uses() {
    let (lines, root) = surface();
    for want in [
        "struct edgecascade::runtime::Runtime",
        "method Runtime::chat",
        "use edgecascade::{runtime::Runtime}",
        "variant edgecascade::types::Route::Escalated",
    ] {
        assert!(lines.iter().any(|l| l == want), "{want} not in the listing");
    }
    // Test code and crate-private items are not surface.
    assert!(!lines.iter().any(|l| ["::tests", "::layers", "::surface"]
        .iter()
        .any(|m| l.contains(m))));
    assert!(root > 5);
}
