//! FFI: the upstream balancer hook. `shift` wraps Nginx's own round robin: Nginx builds its
//! per-worker peer list as usual, and this module steers it.

use ngx::core::Status;
use ngx::ffi::{ngx_conf_t, ngx_http_request_t, ngx_http_upstream_srv_conf_t, ngx_int_t, NGX_LOG_EMERG};
use ngx::http::HttpModuleServerConf;
use ngx::ngx_conf_log_error;

use crate::ngx_module::Module;

/// `peer.init_upstream`: lets round robin build the peers, then takes over `peer.init`.
pub extern "C" fn init_upstream(
    cf: *mut ngx_conf_t,
    uscf: *mut ngx_http_upstream_srv_conf_t,
) -> ngx_int_t {
    // SAFETY: Nginx passes a valid cf and the upstream's own srv conf.
    unsafe {
        let uscf = &mut *uscf;
        let Some(conf) = Module::server_conf_mut(uscf) else {
            return Status::NGX_ERROR.into();
        };
        let Some(original) = conf.original_init_upstream else {
            return Status::NGX_ERROR.into();
        };
        if original(cf, uscf) != Status::NGX_OK.into() {
            return Status::NGX_ERROR.into();
        }
        if !uscf.shm_zone.is_null() {
            ngx_conf_log_error!(
                NGX_LOG_EMERG,
                cf,
                "\"shift\" cannot be used with \"zone\" in upstream \"{}\": \
                 shift keeps its own shared state, remove \"zone\"",
                uscf.host
            );
            return Status::NGX_ERROR.into();
        }
        conf.original_init_peer = uscf.peer.init;
        uscf.peer.init = Some(init_peer);
        conf.hooked = true;
    }
    Status::NGX_OK.into()
}

/// `peer.init`, once per request: sets up round robin for it.
extern "C" fn init_peer(r: *mut ngx_http_request_t, uscf: *mut ngx_http_upstream_srv_conf_t) -> ngx_int_t {
    // SAFETY: Nginx passes the request being proxied and the upstream's srv conf.
    unsafe {
        let Some(conf) = Module::server_conf(&*uscf) else {
            return Status::NGX_ERROR.into();
        };
        match conf.original_init_peer {
            Some(original) => original(r, uscf),
            None => Status::NGX_ERROR.into(),
        }
    }
}
