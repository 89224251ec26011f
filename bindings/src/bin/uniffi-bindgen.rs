//! UniFFI's generator, pinned to the workspace's uniffi version. Generate in library mode:
//! `uniffi-bindgen generate --library target/release/libedgecascade_ffi.so --language kotlin
//! --out-dir out/kotlin`.

fn main() {
    uniffi::uniffi_bindgen_main();
}
