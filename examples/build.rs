//! The binary finds llama.cpp's shared libraries (a `cpu-variants` build) beside itself.
fn main() {
    if std::env::var("CARGO_CFG_TARGET_OS").as_deref() == Ok("linux") {
        println!("cargo:rustc-link-arg-bins=-Wl,-rpath,$ORIGIN");
        println!("cargo:rustc-link-arg-tests=-Wl,-rpath,$ORIGIN");
    }
}
