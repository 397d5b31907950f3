//! FFI: the directives that steer a request to a chosen peer — `shift_sticky KEY` and
//! `shift_pin VALUE` (complex values, compiled here and evaluated per request by `steering`),
//! and `shift_label SERVER LABEL`. Runs at configuration time in the master (or `nginx -t`).

use std::ffi::{c_char, c_void};
use std::mem::MaybeUninit;

use ngx::core::{Pool, Status, NGX_CONF_ERROR, NGX_CONF_OK};
use ngx::ffi::{
    ngx_command_t, ngx_conf_t, ngx_http_compile_complex_value, ngx_http_compile_complex_value_t,
    ngx_http_complex_value_t, ngx_str_t,
};

use crate::conf_ext::{is_duplicate, ConfExt};
use crate::ngx_module::upstream_directive;
use shift_core::directives;

/// `shift_sticky KEY;`
pub extern "C" fn set_shift_sticky(
    cf: *mut ngx_conf_t,
    _cmd: *mut ngx_command_t,
    conf: *mut c_void,
) -> *mut c_char {
    set_complex(cf, conf, Steer::Sticky)
}

/// `shift_pin VALUE;`
pub extern "C" fn set_shift_pin(
    cf: *mut ngx_conf_t,
    _cmd: *mut ngx_command_t,
    conf: *mut c_void,
) -> *mut c_char {
    set_complex(cf, conf, Steer::Pin)
}

#[derive(Clone, Copy)]
enum Steer {
    Sticky,
    Pin,
}

/// `shift_label SERVER LABEL;` (checked against the upstream's servers once it is parsed, in
/// `upstream_hook::init_upstream`).
pub extern "C" fn set_shift_label(
    cf: *mut ngx_conf_t,
    _cmd: *mut ngx_command_t,
    conf: *mut c_void,
) -> *mut c_char {
    // SAFETY: Nginx calls directive handlers with a valid cf and this module's main conf.
    let found = unsafe { upstream_directive(cf, conf, directives::parse_shift_label) };
    let (cf, parsed, main, uscf, ours) = match found {
        Ok(found) => found,
        Err(rc) => return rc,
    };
    if ours.labels.iter().any(|line| line.server == parsed.server) {
        return cf.error(&format!(
            "\"{}\" is labelled twice in upstream \"{}\"",
            parsed.server, uscf.host
        ));
    }
    ours.labels.push(parsed);
    main.checked.push((uscf, "shift_label"));
    NGX_CONF_OK
}

/// Compiles the directive's one argument as a complex value into its field.
fn set_complex(cf: *mut ngx_conf_t, conf: *mut c_void, steer: Steer) -> *mut c_char {
    type Parse = fn(&[&str]) -> Result<(), directives::DirectiveError>;
    let (directive, parse): (&str, Parse) = match steer {
        Steer::Sticky => ("shift_sticky", directives::parse_shift_sticky),
        Steer::Pin => ("shift_pin", directives::parse_shift_pin),
    };
    // SAFETY: Nginx calls directive handlers with a valid cf and this module's main conf.
    let found = unsafe { upstream_directive(cf, conf, parse) };
    let (cf, (), main, uscf, ours) = match found {
        Ok(found) => found,
        Err(rc) => return rc,
    };
    let slot = match steer {
        Steer::Sticky => &mut ours.sticky,
        Steer::Pin => &mut ours.pin,
    };
    if !slot.is_null() {
        return is_duplicate();
    }
    // SAFETY: the configuration's pool, alive as long as the configuration.
    let pool = unsafe { Pool::from_ngx_pool(cf.pool) };
    let value = pool.calloc_type::<ngx_http_complex_value_t>();
    if value.is_null() {
        return NGX_CONF_ERROR;
    }
    // SAFETY: while a directive is parsed, `args` holds its words; the second is its value, in
    // the configuration's pool like the compiled value that refers to it.
    let word: *mut ngx_str_t = unsafe { (*cf.args).elts.cast::<ngx_str_t>().add(1) };
    // SAFETY: all-zero is the documented start of a compile request (`ngx_memzero` in Nginx).
    let mut compile: ngx_http_compile_complex_value_t =
        unsafe { MaybeUninit::zeroed().assume_init() };
    compile.cf = cf;
    compile.value = word;
    compile.complex_value = value;
    // SAFETY: `compile` is filled as Nginx's own directives fill it; errors are logged by Nginx.
    if unsafe { ngx_http_compile_complex_value(&mut compile) } != Status::NGX_OK.0 {
        return NGX_CONF_ERROR;
    }
    *slot = value;
    main.checked.push((uscf, directive));
    NGX_CONF_OK
}
