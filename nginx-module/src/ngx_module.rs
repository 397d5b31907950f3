//! FFI: the Nginx module definition, its configuration structs and the directive handlers.
//!
//! Everything here runs at configuration time in the master process (or `nginx -t`).

use std::ffi::{c_char, c_void};
use std::ptr;

use ngx::core::{Status, NGX_CONF_ERROR, NGX_CONF_OK};
use ngx::ffi::{
    ngx_command_t, ngx_conf_t, ngx_http_module_t, ngx_http_upstream_init_peer_pt,
    ngx_http_upstream_init_pt, ngx_http_upstream_init_round_robin, ngx_http_upstream_srv_conf_t,
    ngx_int_t, ngx_module_t, ngx_str_t, ngx_uint_t, NGX_CONF_ANY, NGX_HTTP_LOC_CONF,
    NGX_HTTP_LOC_CONF_OFFSET, NGX_HTTP_MAIN_CONF_OFFSET, NGX_HTTP_MODULE, NGX_HTTP_UPS_CONF,
    NGX_LOG_EMERG,
};
use ngx::http::{
    HttpModule, HttpModuleLocationConf, HttpModuleMainConf, HttpModuleServerConf, Merge,
    MergeConfigError, NgxHttpCoreModule, NgxHttpUpstreamModule,
};
use ngx::{ngx_conf_log_error, ngx_string};

use crate::directives::{self, ShiftApiArgs, ShiftArgs};

/// Per-`http` state: the upstreams that use `shift`.
#[derive(Default)]
pub struct MainConf {
    pub upstreams: Vec<*mut ngx_http_upstream_srv_conf_t>,
}

/// Per-upstream state (Nginx also creates one for every `server` block; those stay unused).
#[derive(Default)]
pub struct UpstreamConf {
    pub shift: Option<ShiftArgs>,
    /// The balancer `shift` wraps; only round robin is accepted today.
    pub original_init_upstream: ngx_http_upstream_init_pt,
    pub original_init_peer: ngx_http_upstream_init_peer_pt,
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
    pub args: ShiftApiArgs,
    /// The location's own prefix, stripped from request paths.
    pub prefix: String,
}

impl Merge for LocationConf {
    fn merge(&mut self, _prev: &Self) -> Result<(), MergeConfigError> {
        // The API is served only where `shift_api` is written, never inherited.
        Ok(())
    }
}

pub struct Module;

impl HttpModule for Module {
    fn module() -> &'static ngx_module_t {
        // SAFETY: the module struct is a static that Nginx only mutates while loading the module,
        // before any of our callbacks run.
        unsafe { &*ptr::addr_of!(ngx_http_shift_module) }
    }

    unsafe extern "C" fn postconfiguration(cf: *mut ngx_conf_t) -> ngx_int_t {
        // SAFETY: Nginx calls postconfiguration with a valid cf; main_conf exists for a loaded
        // module; the upstream pointers were taken from this same configuration cycle.
        unsafe {
            let Some(main) = Module::main_conf(&*cf) else {
                return Status::NGX_ERROR.into();
            };
            for &uscf in &main.upstreams {
                if !Module::server_conf(&*uscf).is_some_and(|conf| conf.hooked) {
                    ngx_conf_log_error!(
                        NGX_LOG_EMERG,
                        cf,
                        "upstream \"{}\" uses another load balancing method after \"shift\"; \
                         \"shift\" works with the default round robin only",
                        (*uscf).host
                    );
                    return Status::NGX_ERROR.into();
                }
            }
        }
        Status::NGX_OK.into()
    }
}

// SAFETY: the conf types are the ones create_*_conf allocates for this module.
unsafe impl HttpModuleMainConf for Module {
    type MainConf = MainConf;
}
// SAFETY: as above.
unsafe impl HttpModuleServerConf for Module {
    type ServerConf = UpstreamConf;
}
// SAFETY: as above.
unsafe impl HttpModuleLocationConf for Module {
    type LocationConf = LocationConf;
}

static mut COMMANDS: [ngx_command_t; 3] = [
    ngx_command_t {
        name: ngx_string!("shift"),
        type_: (NGX_HTTP_UPS_CONF | NGX_CONF_ANY) as ngx_uint_t,
        set: Some(set_shift),
        conf: NGX_HTTP_MAIN_CONF_OFFSET,
        offset: 0,
        post: ptr::null_mut(),
    },
    ngx_command_t {
        name: ngx_string!("shift_api"),
        type_: (NGX_HTTP_LOC_CONF | NGX_CONF_ANY) as ngx_uint_t,
        set: Some(set_shift_api),
        conf: NGX_HTTP_LOC_CONF_OFFSET,
        offset: 0,
        post: ptr::null_mut(),
    },
    ngx_command_t::empty(),
];

static MODULE_CTX: ngx_http_module_t = ngx_http_module_t {
    preconfiguration: None,
    postconfiguration: Some(Module::postconfiguration),
    create_main_conf: Some(Module::create_main_conf),
    init_main_conf: None,
    create_srv_conf: Some(Module::create_srv_conf),
    merge_srv_conf: Some(Module::merge_srv_conf),
    create_loc_conf: Some(Module::create_loc_conf),
    merge_loc_conf: Some(Module::merge_loc_conf),
};

#[cfg(feature = "export-modules")]
ngx::ngx_modules!(ngx_http_shift_module);

#[used]
#[allow(non_upper_case_globals)]
#[cfg_attr(not(feature = "export-modules"), no_mangle)]
pub static mut ngx_http_shift_module: ngx_module_t = ngx_module_t {
    ctx: ptr::addr_of!(MODULE_CTX) as _,
    // SAFETY: taking the address of a static does not read it.
    commands: unsafe { ptr::addr_of_mut!(COMMANDS[0]) },
    type_: NGX_HTTP_MODULE as _,
    ..ngx_module_t::default()
};

/// The directive's arguments after its name, as UTF-8, or an Nginx-style error.
///
/// SAFETY: `cf` must be the valid configuration passed to a directive handler.
unsafe fn directive_args<'a>(cf: *mut ngx_conf_t) -> Result<Vec<&'a str>, String> {
    // SAFETY: Nginx fills cf->args with the directive's words before calling its handler.
    let words: &[ngx_str_t] = unsafe { (*(*cf).args).as_slice() };
    words[1..]
        .iter()
        .map(|word| {
            word.to_str().map_err(|_| format!("parameter \"{word}\" is not valid UTF-8"))
        })
        .collect()
}

extern "C" fn set_shift(
    cf: *mut ngx_conf_t,
    _cmd: *mut ngx_command_t,
    conf: *mut c_void,
) -> *mut c_char {
    // SAFETY: Nginx calls directive handlers with a valid cf, and `conf` is this module's main
    // conf (NGX_HTTP_MAIN_CONF_OFFSET). The upstream conf is the one of the enclosing block.
    unsafe {
        let main = &mut *conf.cast::<MainConf>();
        let parsed = match directive_args(cf).map(|args| directives::parse_shift(&args)) {
            Ok(Ok(parsed)) => parsed,
            Ok(Err(err)) => return conf_error(cf, &err.to_string()),
            Err(msg) => return conf_error(cf, &msg),
        };
        let Some(uscf) = NgxHttpUpstreamModule::server_conf_mut(&*cf) else {
            return NGX_CONF_ERROR;
        };
        let Some(ours) = Module::server_conf_mut(&*cf) else {
            return NGX_CONF_ERROR;
        };
        if ours.shift.is_some() {
            return c"is duplicate".as_ptr().cast_mut();
        }
        if uscf.peer.init_upstream.is_some() {
            return conf_error(
                cf,
                "\"shift\" works with the default round robin only; \
                 remove the other load balancing method from this upstream",
            );
        }
        ours.shift = Some(parsed);
        ours.original_init_upstream = Some(ngx_http_upstream_init_round_robin);
        uscf.peer.init_upstream = Some(crate::upstream_hook::init_upstream);
        main.upstreams.push(uscf);
    }
    NGX_CONF_OK
}

extern "C" fn set_shift_api(
    cf: *mut ngx_conf_t,
    _cmd: *mut ngx_command_t,
    conf: *mut c_void,
) -> *mut c_char {
    // SAFETY: Nginx calls directive handlers with a valid cf, and `conf` is this module's
    // location conf (NGX_HTTP_LOC_CONF_OFFSET).
    unsafe {
        let loc = &mut *conf.cast::<LocationConf>();
        if loc.api.is_some() {
            return c"is duplicate".as_ptr().cast_mut();
        }
        let args = match directive_args(cf).map(|args| directives::parse_shift_api(&args)) {
            Ok(Ok(args)) => args,
            Ok(Err(err)) => return conf_error(cf, &err.to_string()),
            Err(msg) => return conf_error(cf, &msg),
        };
        let Some(clcf) = NgxHttpCoreModule::location_conf_mut(&*cf) else {
            return NGX_CONF_ERROR;
        };
        let prefix = clcf.name.to_string();
        clcf.handler = Some(crate::api_handler::handle);
        loc.api = Some(ApiConf { args, prefix });
    }
    NGX_CONF_OK
}

/// Logs `msg` at emerg level with the file and line being parsed, and fails the directive.
///
/// SAFETY: `cf` must be the valid configuration passed to a directive handler.
unsafe fn conf_error(cf: *mut ngx_conf_t, msg: &str) -> *mut c_char {
    ngx_conf_log_error!(NGX_LOG_EMERG, cf, "{}", msg);
    NGX_CONF_ERROR
}
