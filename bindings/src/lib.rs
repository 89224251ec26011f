//! EdgeCascade's FFI: UniFFI wrappers over the `edgecascade` core, and the one native library
//! (`cdylib`/`staticlib`) the Kotlin and Swift SDKs load. Thin by rule: no logic here beyond
//! error mapping. The full surface arrives with the mobile SDK issue.

uniffi::setup_scaffolding!();

/// The version of the native library.
#[uniffi::export]
pub fn edgecascade_version() -> String {
    env!("CARGO_PKG_VERSION").to_owned()
}
