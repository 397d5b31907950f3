//! nginx-shift's Nginx module: runtime-controlled upstream weights, active health checks and an
//! admin API. This crate is the FFI glue only, in a few named modules; the logic is safe Rust in
//! `shift-core`, tested without Nginx.

// A test build has no Nginx to link against, and nothing here to test without one
// (`cargo test --all-targets` builds it all the same, whatever `test = false` says).
#![cfg(not(test))]

mod api_answer;
mod api_handler;
mod api_listener;
mod api_listing;
mod api_reply;
mod api_thread;
mod clock;
mod conf;
mod conf_ext;
mod drain_close;
mod ejection;
mod health_probe;
mod ngx_module;
mod peer_list;
mod pool_value;
mod ramp;
mod resolver;
mod shm;
mod steering;
mod steering_conf;
mod upstream_hook;
mod upstream_state;
mod worker_routes;
mod worker_tick;
