//! FFI: the Nginx module definition, its callbacks and the directive handlers (the structs they
//! fill are in `conf.rs`).
//!
//! Everything here runs at configuration time in the master process (or `nginx -t`).

use std::ffi::{c_char, c_void};
use std::path::PathBuf;
use std::ptr;

use ngx::core::{Status, NGX_CONF_ERROR, NGX_CONF_OK};
use ngx::ffi::{
    ngx_command_t, ngx_conf_t, ngx_cycle_t, ngx_http_module_t, ngx_http_upstream_init_round_robin,
    ngx_http_upstream_srv_conf_t, ngx_int_t, ngx_module_t, ngx_uint_t, NGX_CONF_1MORE,
    NGX_CONF_ANY, NGX_CONF_TAKE1, NGX_CONF_TAKE2, NGX_HTTP_LOC_CONF, NGX_HTTP_LOC_CONF_OFFSET,
    NGX_HTTP_MAIN_CONF, NGX_HTTP_MAIN_CONF_OFFSET, NGX_HTTP_MODULE, NGX_HTTP_UPS_CONF,
};
use ngx::http::{
    HttpModule, HttpModuleLocationConf, HttpModuleMainConf, HttpModuleServerConf,
    NgxHttpCoreModule, NgxHttpUpstreamModule,
};
use ngx::ngx_string;
use nix::unistd::{Uid, User};

use crate::conf::{ApiConf, ApiServer, LocationConf, MainConf, UpstreamConf};
use crate::conf_ext::{is_duplicate, ConfExt};
use crate::shm;
use shift_core::api::Access;
use shift_core::directives::{self, Principal, Readers};
use shift_core::state_file;

/// Resolves `shift_api` principals to uids (user names through the system's user database).
fn resolve(principals: &[Principal]) -> Result<Vec<u32>, String> {
    principals
        .iter()
        .map(|principal| match principal {
            Principal::Uid(uid) => Ok(*uid),
            Principal::User(name) => match User::from_name(name) {
                Ok(Some(user)) => Ok(user.uid.as_raw()),
                Ok(None) => Err(format!(
                    "unknown user \"{name}\" in \"shift_api\" directive"
                )),
                Err(err) => Err(format!("cannot look up user \"{name}\": {err}")),
            },
        })
        .collect()
}

pub struct Module;

impl HttpModule for Module {
    fn module() -> &'static ngx_module_t {
        // SAFETY: the module struct is a static that Nginx only mutates while loading the module,
        // before any of our callbacks run.
        unsafe { &*ptr::addr_of!(ngx_http_shift_module) }
    }

    unsafe extern "C" fn postconfiguration(cf: *mut ngx_conf_t) -> ngx_int_t {
        // SAFETY: Nginx calls postconfiguration with the configuration it parsed.
        let cf = unsafe { &mut *cf };
        let Some(main) = Module::main_conf(cf) else {
            return Status::NGX_ERROR.0;
        };
        for &(uscf, directive) in &main.checked {
            // SAFETY: the upstream pointers were taken from this same configuration.
            let uscf = unsafe { &*uscf };
            if Module::server_conf(uscf).is_none_or(|conf| conf.shift.is_none()) {
                cf.error(&format!(
                    "\"{directive}\" in upstream \"{}\" needs \"shift\" in the same upstream",
                    uscf.host
                ));
                return Status::NGX_ERROR.0;
            }
        }
        for server in main.api_servers.iter().filter(|server| server.threads > 0) {
            // SAFETY: servers of this configuration, whose location trees Nginx built before
            // postconfiguration.
            if let Some(message) = unsafe { crate::api_thread::not_alone(server) } {
                cf.error(&message);
                return Status::NGX_ERROR.0;
            }
        }
        if !main.zone.is_null() {
            // SAFETY: round robin built every upstream's peers before postconfiguration.
            let peers = unsafe { shm::peer_count(&main.upstreams) };
            // Twice over: a configuration that resizes a ring holds the old and the new one for
            // a moment, and an upstream a reload dropped keeps its own until its loads go.
            let history: usize = 2 * main
                .upstreams
                .iter()
                // SAFETY: as above.
                .filter_map(|&uscf| unsafe { Module::server_conf(&*uscf) })
                .map(|conf| {
                    shift_core::lifecycle::history_bytes(
                        conf.history
                            .unwrap_or(shift_core::directives::DEFAULT_HISTORY),
                    )
                })
                .sum::<usize>();
            let needed = shift_core::lifecycle::zone_size(main.upstreams.len(), peers, history);
            shm::set_zone_size(main, main.zone_size.unwrap_or(needed));
        }
        for &uscf in &main.upstreams {
            // SAFETY: as above.
            let uscf = unsafe { &*uscf };
            if !Module::server_conf(uscf).is_some_and(|conf| conf.balancer.hooked) {
                cf.error(&format!(
                    "upstream \"{}\" uses another load balancing method after \"shift\"; \
                     \"shift\" works with the default round robin only",
                    uscf.host
                ));
                return Status::NGX_ERROR.0;
            }
        }
        Status::NGX_OK.0
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

static mut COMMANDS: [ngx_command_t; 12] = [
    ngx_command_t {
        name: ngx_string!("shift"),
        type_: (NGX_HTTP_UPS_CONF | NGX_CONF_ANY) as ngx_uint_t,
        set: Some(set_shift),
        conf: NGX_HTTP_MAIN_CONF_OFFSET,
        offset: 0,
        post: ptr::null_mut(),
    },
    ngx_command_t {
        name: ngx_string!("shift_check"),
        type_: (NGX_HTTP_UPS_CONF | NGX_CONF_ANY) as ngx_uint_t,
        set: Some(set_shift_check),
        conf: NGX_HTTP_MAIN_CONF_OFFSET,
        offset: 0,
        post: ptr::null_mut(),
    },
    ngx_command_t {
        name: ngx_string!("shift_slow_start"),
        type_: (NGX_HTTP_UPS_CONF | NGX_CONF_1MORE) as ngx_uint_t,
        set: Some(set_shift_slow_start),
        conf: NGX_HTTP_MAIN_CONF_OFFSET,
        offset: 0,
        post: ptr::null_mut(),
    },
    ngx_command_t {
        name: ngx_string!("shift_eject"),
        type_: (NGX_HTTP_UPS_CONF | NGX_CONF_ANY) as ngx_uint_t,
        set: Some(set_shift_eject),
        conf: NGX_HTTP_MAIN_CONF_OFFSET,
        offset: 0,
        post: ptr::null_mut(),
    },
    ngx_command_t {
        name: ngx_string!("shift_history"),
        type_: (NGX_HTTP_UPS_CONF | NGX_CONF_ANY) as ngx_uint_t,
        set: Some(set_shift_history),
        conf: NGX_HTTP_MAIN_CONF_OFFSET,
        offset: 0,
        post: ptr::null_mut(),
    },
    ngx_command_t {
        name: ngx_string!("shift_resolve"),
        type_: (NGX_HTTP_UPS_CONF | NGX_CONF_1MORE) as ngx_uint_t,
        set: Some(set_shift_resolve),
        conf: NGX_HTTP_MAIN_CONF_OFFSET,
        offset: 0,
        post: ptr::null_mut(),
    },
    ngx_command_t {
        name: ngx_string!("shift_sticky"),
        type_: (NGX_HTTP_UPS_CONF | NGX_CONF_TAKE1) as ngx_uint_t,
        set: Some(crate::steering_conf::set_shift_sticky),
        conf: NGX_HTTP_MAIN_CONF_OFFSET,
        offset: 0,
        post: ptr::null_mut(),
    },
    ngx_command_t {
        name: ngx_string!("shift_pin"),
        type_: (NGX_HTTP_UPS_CONF | NGX_CONF_TAKE1) as ngx_uint_t,
        set: Some(crate::steering_conf::set_shift_pin),
        conf: NGX_HTTP_MAIN_CONF_OFFSET,
        offset: 0,
        post: ptr::null_mut(),
    },
    ngx_command_t {
        name: ngx_string!("shift_label"),
        type_: (NGX_HTTP_UPS_CONF | NGX_CONF_TAKE2) as ngx_uint_t,
        set: Some(crate::steering_conf::set_shift_label),
        conf: NGX_HTTP_MAIN_CONF_OFFSET,
        offset: 0,
        post: ptr::null_mut(),
    },
    ngx_command_t {
        name: ngx_string!("shift_zone"),
        type_: (NGX_HTTP_MAIN_CONF | NGX_CONF_TAKE1) as ngx_uint_t,
        set: Some(set_shift_zone),
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
    init_module: Some(init_module),
    init_process: Some(init_process),
    exit_process: Some(exit_process),
    ..ngx_module_t::default()
};

/// `init_module`, in the master once the configuration can no longer fail: commits its state
/// (the error log says if that went wrong; failing here would make Nginx exit) and caps the API
/// listeners.
unsafe extern "C" fn init_module(cycle: *mut ngx_cycle_t) -> ngx_int_t {
    // SAFETY: Nginx calls init_module with the cycle it commits.
    unsafe {
        shm::commit_cycle(cycle);
        // Every time, with no servers when this configuration has no `http` block: what an
        // earlier one claimed points into a cycle that is about to be freed.
        let api_servers = Module::main_conf(&*cycle).map_or(&[][..], |main| &main.api_servers);
        // Before the cap, which replaces the listeners' handler that tells them apart.
        crate::api_thread::claim(cycle, api_servers);
        crate::api_listener::cap(cycle, api_servers);
    }
    Status::NGX_OK.0
}

/// `init_process`, in each worker: registers it in the zone, then starts its health probes.
unsafe extern "C" fn init_process(cycle: *mut ngx_cycle_t) -> ngx_int_t {
    // SAFETY: Nginx calls init_process with the worker's initialised cycle.
    unsafe {
        if let Some(main) = Module::main_conf(&*cycle) {
            shm::register_worker(cycle, main);
        }
        // Cache managers and loaders run this too; only workers probe.
        if ngx::ffi::ngx_process == ngx::ffi::NGX_PROCESS_HELPER as ngx::ffi::ngx_uint_t {
            return Status::NGX_OK.0;
        }
        crate::api_thread::start(cycle);
        crate::worker_tick::start(cycle);
        crate::drain_close::start(cycle);
        crate::health_probe::start_probes(cycle)
    }
}

/// `exit_process`, in each worker as it exits: its API threads answer no more requests.
unsafe extern "C" fn exit_process(_cycle: *mut ngx_cycle_t) {
    crate::api_thread::stop();
}

/// The directive's arguments parsed by `parse`; `Err` is what the handler returns (the error is
/// logged with the file and line).
pub(crate) fn parse_directive<T>(
    cf: &mut ngx_conf_t,
    parse: fn(&[&str]) -> Result<T, directives::DirectiveError>,
) -> Result<T, *mut c_char> {
    match cf.args().map(|args| parse(&args)) {
        Ok(Ok(parsed)) => Ok(parsed),
        Ok(Err(err)) => Err(cf.error(&err.to_string())),
        Err(msg) => Err(cf.error(&msg)),
    }
}

/// What an upstream directive handler starts from: the configuration being parsed, its parsed
/// arguments, this module's main conf, and the enclosing upstream's own conf and this module's
/// conf for it. `Err` is what the handler returns (the error is logged).
///
/// SAFETY: `cf` is the configuration being parsed inside an `upstream` block, and `conf` this
/// module's main conf (NGX_HTTP_MAIN_CONF_OFFSET), as Nginx passes them to a directive handler.
pub(crate) unsafe fn upstream_directive<'a, T>(
    cf: *mut ngx_conf_t,
    conf: *mut c_void,
    parse: fn(&[&str]) -> Result<T, directives::DirectiveError>,
) -> Result<
    (
        &'a mut ngx_conf_t,
        T,
        &'a mut MainConf,
        &'a mut ngx_http_upstream_srv_conf_t,
        &'a mut UpstreamConf,
    ),
    *mut c_char,
> {
    // SAFETY: per the contract; both live as long as the configuration.
    let (cf, main) = unsafe { (&mut *cf, &mut *conf.cast::<MainConf>()) };
    let parsed = parse_directive(cf, parse)?;
    let uscf = NgxHttpUpstreamModule::server_conf_mut(cf).ok_or(NGX_CONF_ERROR)?;
    let ours = Module::server_conf_mut(cf).ok_or(NGX_CONF_ERROR)?;
    Ok((cf, parsed, main, uscf, ours))
}

extern "C" fn set_shift(
    cf: *mut ngx_conf_t,
    _cmd: *mut ngx_command_t,
    conf: *mut c_void,
) -> *mut c_char {
    // SAFETY: Nginx calls directive handlers with a valid cf and this module's main conf.
    let found = unsafe { upstream_directive(cf, conf, directives::parse_shift) };
    let (cf, parsed, main, uscf, ours) = match found {
        Ok(found) => found,
        Err(rc) => return rc,
    };
    if ours.shift.is_some() {
        return is_duplicate();
    }
    if uscf.peer.init_upstream.is_some() {
        return cf.error(
            "\"shift\" must come before \"keepalive\" in an upstream, and works with the \
             default round robin only (no least_conn, hash, ip_hash or random)",
        );
    }
    // SAFETY: `cf` is the configuration being parsed.
    if unsafe { shm::add_zone(cf, main) }.is_err() {
        return NGX_CONF_ERROR;
    }
    // Like Nginx's own paths, a relative one is taken from the prefix.
    // SAFETY: the cycle being configured is valid while its configuration is parsed.
    let prefix = PathBuf::from(unsafe { (*cf.cycle).prefix }.to_string());
    ours.state_path = parsed
        .state_path
        .as_ref()
        .map(|path| state_file::resolve(std::path::Path::new(path), &prefix));
    main.cycle = cf.cycle;
    ours.shift = Some(parsed);
    ours.balancer.init_upstream = Some(ngx_http_upstream_init_round_robin);
    uscf.peer.init_upstream = Some(crate::upstream_hook::init_upstream);
    main.upstreams.push(uscf);
    NGX_CONF_OK
}

extern "C" fn set_shift_zone(
    cf: *mut ngx_conf_t,
    _cmd: *mut ngx_command_t,
    conf: *mut c_void,
) -> *mut c_char {
    // SAFETY: Nginx calls directive handlers with a valid cf, and `conf` is this module's main
    // conf (NGX_HTTP_MAIN_CONF_OFFSET).
    let (cf, main) = unsafe { (&mut *cf, &mut *conf.cast::<MainConf>()) };
    if main.zone_size.is_some() {
        return is_duplicate();
    }
    match parse_directive(cf, directives::parse_shift_zone) {
        Ok(size) => main.zone_size = Some(size),
        Err(rc) => return rc,
    }
    NGX_CONF_OK
}

extern "C" fn set_shift_check(
    cf: *mut ngx_conf_t,
    _cmd: *mut ngx_command_t,
    conf: *mut c_void,
) -> *mut c_char {
    // SAFETY: Nginx calls directive handlers with a valid cf and this module's main conf.
    let found = unsafe { upstream_directive(cf, conf, directives::parse_shift_check) };
    let (_, parsed, main, uscf, ours) = match found {
        Ok(found) => found,
        Err(rc) => return rc,
    };
    if ours.check.is_some() {
        return is_duplicate();
    }
    ours.check = Some(parsed);
    main.checked.push((uscf, "shift_check"));
    NGX_CONF_OK
}

extern "C" fn set_shift_slow_start(
    cf: *mut ngx_conf_t,
    _cmd: *mut ngx_command_t,
    conf: *mut c_void,
) -> *mut c_char {
    // SAFETY: Nginx calls directive handlers with a valid cf and this module's main conf.
    let found = unsafe { upstream_directive(cf, conf, directives::parse_shift_slow_start) };
    let (_, parsed, main, uscf, ours) = match found {
        Ok(found) => found,
        Err(rc) => return rc,
    };
    if ours.slow_start.is_on() {
        return is_duplicate();
    }
    ours.slow_start = parsed;
    main.checked.push((uscf, "shift_slow_start"));
    NGX_CONF_OK
}

extern "C" fn set_shift_eject(
    cf: *mut ngx_conf_t,
    _cmd: *mut ngx_command_t,
    conf: *mut c_void,
) -> *mut c_char {
    // SAFETY: Nginx calls directive handlers with a valid cf and this module's main conf.
    let found = unsafe { upstream_directive(cf, conf, directives::parse_shift_eject) };
    let (_, parsed, main, uscf, ours) = match found {
        Ok(found) => found,
        Err(rc) => return rc,
    };
    if ours.eject.is_some() {
        return is_duplicate();
    }
    ours.eject = Some(parsed);
    main.checked.push((uscf, "shift_eject"));
    NGX_CONF_OK
}

extern "C" fn set_shift_history(
    cf: *mut ngx_conf_t,
    _cmd: *mut ngx_command_t,
    conf: *mut c_void,
) -> *mut c_char {
    // SAFETY: Nginx calls directive handlers with a valid cf and this module's main conf.
    let found = unsafe { upstream_directive(cf, conf, directives::parse_shift_history) };
    let (_, parsed, main, uscf, ours) = match found {
        Ok(found) => found,
        Err(rc) => return rc,
    };
    if ours.history.is_some() {
        return is_duplicate();
    }
    ours.history = Some(parsed);
    main.checked.push((uscf, "shift_history"));
    NGX_CONF_OK
}

extern "C" fn set_shift_resolve(
    cf: *mut ngx_conf_t,
    _cmd: *mut ngx_command_t,
    conf: *mut c_void,
) -> *mut c_char {
    // SAFETY: Nginx calls directive handlers with a valid cf and this module's main conf.
    let found = unsafe { upstream_directive(cf, conf, directives::parse_shift_resolve) };
    let (cf, parsed, main, uscf, ours) = match found {
        Ok(found) => found,
        Err(rc) => return rc,
    };
    if ours
        .resolve
        .iter()
        .any(|name| name.name_port() == parsed.name_port())
    {
        return cf.error(&format!(
            "\"{}\" is resolved twice in upstream \"{}\"",
            parsed.name_port(),
            uscf.host
        ));
    }
    if ours.resolve.is_empty() {
        // SAFETY: `cf` is the configuration being parsed, `uscf` its upstream.
        if let Err(message) = unsafe { crate::resolver::add_placeholder(cf, uscf) } {
            return cf.error(&message);
        }
    }
    ours.resolve.push(parsed);
    main.checked.push((uscf, "shift_resolve"));
    NGX_CONF_OK
}

extern "C" fn set_shift_api(
    cf: *mut ngx_conf_t,
    _cmd: *mut ngx_command_t,
    conf: *mut c_void,
) -> *mut c_char {
    // SAFETY: Nginx calls directive handlers with a valid cf, and `conf` is this module's
    // location conf (NGX_HTTP_LOC_CONF_OFFSET).
    let (cf, loc) = unsafe { (&mut *cf, &mut *conf.cast::<LocationConf>()) };
    if loc.api.is_some() {
        return is_duplicate();
    }
    let args = match parse_directive(cf, directives::parse_shift_api) {
        Ok(args) => args,
        Err(rc) => return rc,
    };
    let writers = match &args.writers {
        Some(writers) => resolve(writers),
        // Root and whoever runs the master (the one parsing this config).
        None => Ok(vec![0, Uid::effective().as_raw()]),
    };
    let readers = match &args.readers {
        Readers::Writers => Ok(Some(Vec::new())),
        Readers::Any => Ok(None),
        Readers::List(readers) => resolve(readers).map(Some),
    };
    let (writers, readers) = match (writers, readers) {
        (Ok(writers), Ok(readers)) => (writers, readers),
        (Err(msg), _) | (_, Err(msg)) => return cf.error(&msg),
    };
    let (Some(clcf), Some(main), Some(server)) = (
        NgxHttpCoreModule::location_conf_mut(cf),
        Module::main_conf_mut(cf),
        NgxHttpCoreModule::server_conf_mut(cf),
    ) else {
        return NGX_CONF_ERROR;
    };
    let prefix = clcf.name.to_string();
    clcf.handler = Some(crate::api_handler::handle);
    let access = Access { writers, readers };
    main.api_servers.push(ApiServer {
        server,
        location: std::ptr::from_mut(clcf),
        connections: args.connections,
        threads: args.threads,
        prefix: prefix.clone(),
        access: access.clone(),
    });
    loc.api = Some(ApiConf { access, prefix });
    NGX_CONF_OK
}
