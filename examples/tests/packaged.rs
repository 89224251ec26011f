//! The x86-64 Linux binary ships with llama.cpp's CPU variants as shared libraries (ADR 0006):
//! it finds them beside itself, with no `LD_LIBRARY_PATH`, also when copied elsewhere with its
//! libraries; it says which variant it picked; a forced variant (the AVX2 one, the baseline
//! one) runs too, as it would on an older CPU.
#![cfg(all(target_arch = "x86_64", target_os = "linux"))]
#![allow(missing_docs)]

#[allow(dead_code)]
mod common;
use common::smollm2 as model;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

/// `models verify` through `exe`, with no library path from cargo and `env` set.
fn verify(exe: &Path, env: &[(&str, &str)]) -> Output {
    let mut c = Command::new(exe);
    c.env_remove("LD_LIBRARY_PATH")
        .env_remove("EDGECASCADE_BACKENDS_DIR")
        .env_remove("EDGECASCADE_CPU_VARIANT")
        .args(["models", "verify"])
        .arg(model());
    for (k, v) in env {
        c.env(k, v);
    }
    c.output().expect("run edgecascade")
}

/// The variant and the library it came from, as `verify` reports them.
fn backend(o: &Output) -> (String, PathBuf) {
    let out = String::from_utf8_lossy(&o.stdout);
    assert!(
        o.status.success(),
        "{out}\n{}",
        String::from_utf8_lossy(&o.stderr)
    );
    let rest = out
        .split_once("CPU backend: ")
        .unwrap_or_else(|| panic!("no CPU backend in: {out}"))
        .1;
    let (name, rest) = rest.split_once(" (").expect("variant (path)");
    let path = rest.split_once(')').expect("closing parenthesis").0;
    (name.to_owned(), PathBuf::from(path))
}

#[test]
fn the_binary_finds_its_cpu_variants_beside_it_and_runs_any_of_them() {
    let built = PathBuf::from(env!("CARGO_BIN_EXE_edgecascade"));
    let (picked, lib) = backend(&verify(&built, &[]));
    let variants_dir = if lib.is_dir() {
        lib.clone()
    } else {
        lib.parent().unwrap().to_path_buf()
    };
    eprintln!("picked {picked} from {}", variants_dir.display());

    // Copied elsewhere with its libraries: it uses the copies.
    let dist = tempfile::tempdir().unwrap();
    let exe = dist.path().join("edgecascade");
    std::fs::copy(&built, &exe).unwrap();
    let mut copied = Vec::new();
    for dir in [built.parent().unwrap(), variants_dir.as_path()] {
        for e in std::fs::read_dir(dir).unwrap().flatten() {
            let name = e.file_name().to_string_lossy().into_owned();
            if name.starts_with("lib") && name.ends_with(".so") {
                std::fs::copy(e.path(), dist.path().join(&name)).unwrap();
                copied.push(name);
            }
        }
    }
    assert!(
        copied.iter().any(|n| n.starts_with("libggml-cpu-")),
        "no CPU variants to copy: {copied:?}"
    );
    let (again, from) = backend(&verify(&exe, &[]));
    assert_eq!(again, picked);
    assert!(
        from.starts_with(dist.path().canonicalize().unwrap()),
        "loaded {} instead of the copy beside the binary",
        from.display()
    );

    // The AVX2 variant and the x86-64 baseline run on this CPU as on an older one.
    for v in ["haswell", "x64"] {
        let (name, _) = backend(&verify(&exe, &[("EDGECASCADE_CPU_VARIANT", v)]));
        assert_eq!(name, v);
    }
    // A variant that does not exist is a clear error naming those that do.
    let o = verify(&exe, &[("EDGECASCADE_CPU_VARIANT", "pentium")]);
    assert!(!o.status.success());
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(err.contains("pentium") && err.contains("haswell"), "{err}");
}
