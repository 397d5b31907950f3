//! The module's configuration structs, as its directives fill them: per `http` block, per
//! upstream and per location. Runtime state they point to is described in `upstream_state.rs`
//! and `shm/`.

use std::path::PathBuf;
use std::ptr;

use ngx::ffi::{
    ngx_cycle_t, ngx_http_complex_value_t, ngx_http_core_loc_conf_t, ngx_http_core_srv_conf_t,
    ngx_http_upstream_init_peer_pt, ngx_http_upstream_init_pt, ngx_http_upstream_srv_conf_t,
    ngx_msec_t, ngx_resolver_t, ngx_shm_zone_t,
};
use ngx::http::{Merge, MergeConfigError};

use crate::shm::LoadRecord;
use crate::upstream_state::{Placement, WorkerRouting};
use shift_core::api::Access;
use shift_core::directives::{CheckArgs, LabelLine, ResolvedName, ShiftArgs};
use shift_core::eject::EjectArgs;
use shift_core::slow_start::SlowStart;

/// Per-`http` state: the upstreams that use `shift`, and the shared zone of their tables.
pub struct MainConf {
    pub upstreams: Vec<*mut ngx_http_upstream_srv_conf_t>,
    /// Upstreams with another `shift_*` directive (named), to verify they also have `shift`.
    pub checked: Vec<(*mut ngx_http_upstream_srv_conf_t, &'static str)>,
    pub zone: *mut ngx_shm_zone_t,
    /// `shift_zone`, when set.
    pub zone_size: Option<usize>,
    /// This configuration's load in the zone (set by the zone's init, in the master).
    pub load: *mut LoadRecord,
    /// The cycle this configuration belongs to.
    pub cycle: *mut ngx_cycle_t,
    /// Servers with a `shift_api` location, and how their Unix-socket listeners are served.
    pub api_servers: Vec<ApiServer>,
}

/// A server with a `shift_api` location.
pub struct ApiServer {
    pub server: *mut ngx_http_core_srv_conf_t,
    /// The `shift_api` location's core conf (its `client_body_timeout` and `send_timeout`).
    pub location: *mut ngx_http_core_loc_conf_t,
    /// The connections each worker may keep open on the server's Unix-socket listeners.
    pub connections: u32,
    /// Threads of each worker that serve those listeners off the event loop (0: none).
    pub threads: u32,
    /// The location's prefix and who may use it, for those threads.
    pub prefix: String,
    pub access: Access,
}

impl Default for MainConf {
    fn default() -> Self {
        MainConf {
            upstreams: Vec::new(),
            checked: Vec::new(),
            zone: ptr::null_mut(),
            zone_size: None,
            load: ptr::null_mut(),
            cycle: ptr::null_mut(),
            api_servers: Vec::new(),
        }
    }
}

/// Per-upstream configuration (Nginx also creates one for every `server` block; those stay
/// unused): what the directives say, the balancer `shift` wraps, and the state that belongs to
/// this configuration's upstream (see `upstream_state.rs`).
pub struct UpstreamConf {
    pub shift: Option<ShiftArgs>,
    pub check: Option<CheckArgs>,
    /// `shift_slow_start`; off without it.
    pub slow_start: SlowStart,
    /// `shift_eject`; none without it.
    pub eject: Option<EjectArgs>,
    /// `shift_history`: how many changes its history keeps; `DEFAULT_HISTORY` without it.
    pub history: Option<usize>,
    pub state_path: Option<PathBuf>,
    /// Names whose addresses are peers (`shift_resolve`, or `server NAME resolve` on 1.27.3+),
    /// and the resolver that looks them up (set by `upstream_hook::init_upstream`).
    pub resolve: Vec<ResolvedName>,
    pub resolver: *mut ngx_resolver_t,
    pub resolver_timeout: ngx_msec_t,
    /// `shift_sticky KEY` and `shift_pin VALUE`, evaluated per request; null when not set.
    pub sticky: *mut ngx_http_complex_value_t,
    pub pin: *mut ngx_http_complex_value_t,
    /// `shift_label` lines.
    pub labels: Vec<LabelLine>,
    pub balancer: WrappedBalancer,
    /// Set by the zone's init in the master; read-only once workers run.
    pub placement: Placement,
    /// Each worker's own (its copy after fork).
    pub routing: WorkerRouting,
}

impl Default for UpstreamConf {
    fn default() -> Self {
        UpstreamConf {
            shift: None,
            check: None,
            slow_start: SlowStart::OFF,
            eject: None,
            history: None,
            state_path: None,
            resolve: Vec::new(),
            resolver: ptr::null_mut(),
            resolver_timeout: 0,
            sticky: ptr::null_mut(),
            pin: ptr::null_mut(),
            labels: Vec::new(),
            balancer: WrappedBalancer::default(),
            placement: Placement::default(),
            routing: WorkerRouting::default(),
        }
    }
}

/// The balancer `shift` wraps: round robin, or what `keepalive` put before it.
#[derive(Default)]
pub struct WrappedBalancer {
    pub init_upstream: ngx_http_upstream_init_pt,
    pub init_peer: ngx_http_upstream_init_peer_pt,
    /// Set once `upstream_hook::init_upstream` ran; another balancer written after `shift`
    /// would have replaced it.
    pub hooked: bool,
}

impl Merge for UpstreamConf {
    fn merge(&mut self, _prev: &Self) -> Result<(), MergeConfigError> {
        Ok(())
    }
}

/// Per-location state: whether this location serves the admin API, and for whom.
#[derive(Default)]
pub struct LocationConf {
    pub api: Option<ApiConf>,
}

pub struct ApiConf {
    /// Who may read and write.
    pub access: Access,
    /// The location's own prefix, stripped from request paths.
    pub prefix: String,
}

impl Merge for LocationConf {
    fn merge(&mut self, _prev: &Self) -> Result<(), MergeConfigError> {
        // The API is served only where `shift_api` is written, never inherited.
        Ok(())
    }
}
