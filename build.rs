//! Builds the libzmq that rrmq links: ZeroMQ 4.3.4 with CURVE (encryption and authentication
//! of both ports, PROTOCOL.md §11), on libsodium.
//!
//! Why here and not in zmq-sys: `zmq-sys` 0.12 always builds libzmq without libsodium, so
//! `zmq::has("curve")` is false, and it offers no switch to change that. `.cargo/config.toml`
//! therefore overrides the `links = "zmq"` build script of zmq-sys for the Linux targets (so its
//! own libzmq is never built) and marks the override with the metadata key `built_by = "rrmq"`,
//! which arrives here as `DEP_ZMQ_BUILT_BY`. This script then builds libzmq itself with
//! `zeromq-src` (the crate zmq-sys uses, same vendored sources) against the libsodium that
//! `libsodium-sys-stable` compiled from its bundled, signature-checked tarball.
//!
//! On a target without the override, zmq-sys builds its own libzmq (no CURVE) and this script
//! only warns; a node configured with keys refuses to start there.
//!
//! Link order: the static archives this script names with `rustc-link-lib` are bundled into the
//! rrmq rlib, which comes before `zmq`/`zmq-sys` on the linker line, and a test or bench that
//! uses only the `zmq` crate does not link the rrmq rlib at all. Naming the archives again as
//! plain linker arguments puts them after every rlib of every binary, test, bench and example
//! of this package, where all references to `zmq_*` and `sodium_*` are known.

use std::env;
use std::path::PathBuf;

fn main() {
    println!("cargo:rerun-if-changed=build.rs");

    if env::var_os("DEP_ZMQ_BUILT_BY").is_none() {
        println!(
            "cargo:warning=libzmq comes from zmq-sys on this target, without CURVE: nodes \
             cannot use keys (add a [target.<triple>.zmq] override to .cargo/config.toml)"
        );
        return;
    }

    let sodium_lib = PathBuf::from(required_env("DEP_SODIUM_LIB"));
    let sodium_include = PathBuf::from(required_env("DEP_SODIUM_INCLUDE"));
    let target = required_env("TARGET");

    // In optimized builds GCC 12 reports false -Warray-bounds and -Wstringop-overflow in
    // libzmq's CURVE client (memcpy into a std::vector it has just sized; the cc crate builds
    // with -Wall -Wextra), printed as build warnings on every clean release build. The cc crate
    // reads the target-specific CXXFLAGS (which hold the eventfd defines from
    // .cargo/config.toml), so append to that one.
    if compiler_is_gcc() {
        let key = format!("CXXFLAGS_{}", target.replace('-', "_"));
        let mut flags = env::var(&key).unwrap_or_default();
        flags.push_str(" -Wno-stringop-overflow -Wno-array-bounds");
        env::set_var(&key, flags.trim_start());
    }

    zeromq_src::Build::new()
        .with_libsodium(Some(zeromq_src::LibLocation::new(
            &sodium_lib,
            &sodium_include,
        )))
        .build();

    let out_dir = PathBuf::from(required_env("OUT_DIR"));
    let zmq_archive = out_dir.join("lib").join("libzmq.a");
    let sodium_archive = sodium_lib.join("libsodium.a");
    for archive in [&zmq_archive, &sodium_archive] {
        if !archive.is_file() {
            panic!("expected static library {} is missing", archive.display());
        }
        println!("cargo:rustc-link-arg={}", archive.display());
    }
    // libzmq is C++: its runtime goes after it too (a binary that does not link the rrmq rlib
    // does not get the -lstdc++ the cc crate printed above).
    println!("cargo:rustc-link-arg=-lstdc++");
}

fn required_env(key: &str) -> String {
    env::var(key).unwrap_or_else(|_| panic!("build.rs: {key} is not set"))
}

/// Whether the C++ compiler the cc crate will use for libzmq is GCC (clang does not know every
/// GCC warning name and would warn about the flag itself).
fn compiler_is_gcc() -> bool {
    cc::Build::new().cpp(true).get_compiler().is_like_gnu()
}
