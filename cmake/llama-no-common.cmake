# Included by CMake right after llama.cpp's top-level project() (CMAKE_PROJECT_llama.cpp_INCLUDE,
# set in .cargo/config.toml). ADR 0009.
#
# llama-cpp-2 depends on llama-cpp-sys-2 with its default features, so llama-cpp-sys-2's
# `common` feature is always on and it builds llama.cpp's `common` library (argument parsing,
# chat parsers, downloads, a Jinja engine) and cpp-httplib with it: 294 of about 790 CPU-seconds
# of the llama.cpp build, measured per file. We call nothing in it: our sampling loop uses only
# `LlamaSampler::accept`, whose `llama_rs_sampler_accept` wrapper calls llama.cpp's core. The
# linker drops the wrapper's other functions (--gc-sections), so nothing refers to the library.
#
# Linux only, where the tests prove that every binary, test and the FFI library link and run
# without it. Other targets (Android, iOS, macOS) keep llama-cpp-sys-2's build, untested here.
# CMake configures once per build folder: changing this in a warm target needs
# `cargo clean -p llama-cpp-sys-2`.
if(CMAKE_SYSTEM_NAME STREQUAL "Linux")
  set(LLAMA_BUILD_COMMON OFF CACHE BOOL "llama: build common utils library" FORCE)
  message(STATUS "edgecascade: llama.cpp's common library is not built (ADR 0009)")
endif()
