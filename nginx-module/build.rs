//! Version cfgs for the Nginx the module is built against (nginx-sys reports its version):
//! `ngx_server_resolve` when the `server` line has `resolve` (1.27.3 and later).

fn main() {
    println!("cargo::rustc-check-cfg=cfg(ngx_server_resolve)");
    println!("cargo::rerun-if-env-changed=DEP_NGINX_VERSION_NUMBER");
    let version: u64 = std::env::var("DEP_NGINX_VERSION_NUMBER")
        .ok()
        .and_then(|version| version.parse().ok())
        .unwrap_or(0);
    if version >= 1_027_003 {
        println!("cargo::rustc-cfg=ngx_server_resolve");
    }
}
