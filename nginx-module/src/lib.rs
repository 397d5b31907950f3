//! nginx-shift's Nginx module: runtime-controlled upstream weights and an admin API.
//!
//! The FFI lives in a few named modules (`ngx_module`, `shm`, `upstream_hook`, `api_handler`,
//! `health_probe`); they are
//! left out of unit-test builds, which have no Nginx to link against. Everything else is safe Rust
//! tested with `cargo test -p nginx-shift-module`.

pub mod api;
pub mod directives;
pub mod health;
pub mod metrics;
pub mod state_file;
pub mod table;

#[cfg(not(test))]
mod api_handler;
#[cfg(not(test))]
mod health_probe;
#[cfg(not(test))]
mod ngx_module;
#[cfg(not(test))]
mod shm;
#[cfg(not(test))]
mod upstream_hook;
