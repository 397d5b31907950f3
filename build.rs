//! Makes the Nginx binary and the module the integration tests and benchmarks use known to them,
//! so that none of them hard-codes a `target/` path.
//!
//! - `SHIFT_VENDORED_NGINX`: the Nginx that `nginx-sys` built from the `nginx-src` crate (the
//!   module is compiled against the same source, so the two always match).
//! - `SHIFT_MODULE_PATH`: where Cargo puts `libngx_http_shift_module.so` for this profile. Build
//!   it with `cargo build -p nginx-shift-module` (the test command does); the harness says so
//!   when it is missing.
//!
//! Both can be overridden at run time with `SHIFT_NGINX` / `SHIFT_MODULE`, e.g. to run the tests
//! against a distribution's Nginx and a module built for it.

use std::env;
use std::path::PathBuf;

fn main() {
    println!("cargo::rerun-if-env-changed=DEP_NGINX_BUILD_DIR");
    let build_dir = env::var("DEP_NGINX_BUILD_DIR")
        .expect("nginx-sys did not report its build directory (DEP_NGINX_BUILD_DIR)");
    let nginx = PathBuf::from(build_dir).join("nginx");
    println!("cargo::rustc-env=SHIFT_VENDORED_NGINX={}", nginx.display());

    // OUT_DIR is <target>/<profile>/build/<pkg>-<hash>/out; the module lands in <target>/<profile>.
    let out_dir = PathBuf::from(env::var("OUT_DIR").expect("OUT_DIR"));
    let profile_dir = out_dir
        .ancestors()
        .nth(3)
        .expect("OUT_DIR has the usual depth");
    let module = profile_dir.join("libngx_http_shift_module.so");
    println!("cargo::rustc-env=SHIFT_MODULE_PATH={}", module.display());
}
