//! FFI: the content handler of `shift_api` locations.

use ngx::ffi::{ngx_http_request_t, ngx_int_t};

/// Serves the admin API. Not implemented yet: answers 501 with a JSON error.
pub extern "C" fn handle(r: *mut ngx_http_request_t) -> ngx_int_t {
    let _ = r;
    ngx::http::HTTPStatus::NOT_IMPLEMENTED.0 as ngx_int_t
}
