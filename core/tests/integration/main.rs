//! Integration tests: real models through real llama.cpp. One binary, one module per area.
//!
//! Models come from `scripts/fetch_models.py` (EDGECASCADE_MODELS or models/). A missing model
//! fails the test with the command that fetches it: these tests never pass vacuously.

#![allow(missing_docs)]

mod bad_models;
mod batching;
mod fault_server;
mod file_host;
mod fuzz_corpus;
mod hidden;
mod local;
mod privacy;
mod probe;
mod pull;
mod remote;
mod structured;
mod tools;

// The helpers every test binary shares (the lean suite is its own binary, `tests/lean.rs`).
#[path = "../support/mod.rs"]
mod support;
pub use support::*;
