//! Test models and a shared runtime, for the integration binary and the lean suite.
#![allow(dead_code)]

use std::path::PathBuf;
use std::sync::{Arc, OnceLock};

use edgecascade::{Config, Runtime};

pub fn models_dir() -> PathBuf {
    std::env::var_os("EDGECASCADE_MODELS")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../models"))
}

pub fn model_path(file: &str, fetch_name: &str) -> PathBuf {
    let p = models_dir().join(file);
    assert!(
        p.exists(),
        "test model {} is missing: run scripts/fetch_models.py {fetch_name}",
        p.display()
    );
    p
}

pub fn smollm2() -> PathBuf {
    model_path("smollm2-135m-instruct-q4_1.gguf", "smollm2")
}

pub fn config_for(model: PathBuf) -> Config {
    let mut c = Config::default();
    c.local.model = Some(model);
    c.local.n_ctx = Some(1024);
    c
}

/// One shared SmolLM2 runtime for the tests that need no special config (loading is the slow
/// part), with two slots so parallel tests do not queue behind each other.
pub fn shared() -> Arc<Runtime> {
    static RT: OnceLock<Arc<Runtime>> = OnceLock::new();
    RT.get_or_init(|| {
        let mut c = config_for(smollm2());
        c.local.parallel = 2;
        Arc::new(Runtime::new(c).expect("load SmolLM2"))
    })
    .clone()
}
