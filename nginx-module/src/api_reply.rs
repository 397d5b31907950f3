//! FFI: sending an API answer (`shift_core::api::Reply`) as the response of a request whose
//! header has not been sent: status, content type, `Allow` and other headers, and the body in
//! one buffer.

use ngx::core::{Buffer, Status};
use ngx::ffi::{ngx_chain_t, ngx_int_t, ngx_str_t};
use ngx::http::{HTTPStatus, Method, Request};

use shift_core::api::Reply;

/// Sends `reply`; the request has not sent its header yet. Returns what the handler returns.
pub fn send(request: &mut Request, reply: &Reply) -> ngx_int_t {
    let Ok(status) = HTTPStatus::from_u16(reply.status) else {
        return Status::NGX_ERROR.0;
    };
    request.set_status(status);
    request.set_content_length_n(reply.body.len());
    let content_type = reply.content_type;
    let headers_out = &mut request.as_mut().headers_out;
    // A static string: Nginx only reads it.
    headers_out.content_type = ngx_str_t {
        len: content_type.len(),
        data: content_type.as_ptr().cast_mut(),
    };
    headers_out.content_type_len = content_type.len();
    if let Some(allow) = reply.allow {
        if request.add_header_out("Allow", allow).is_none() {
            return Status::NGX_ERROR.0;
        }
    }
    for (name, value) in reply.headers {
        if request.add_header_out(name, value).is_none() {
            return Status::NGX_ERROR.0;
        }
    }
    let rc = request.send_header();
    // HEAD: the header only (`r->header_only`, a bit field, is read wrong since 1.29, and so is
    // `Request::header_only`; `method` is a plain field).
    let head = request.method() == Method::HEAD;
    if rc == Status::NGX_ERROR || rc.0 > Status::NGX_OK.0 || head {
        return rc.0;
    }
    let Some(mut buffer) = request.pool().create_buffer_from_str(&reply.body) else {
        return Status::NGX_ERROR.0;
    };
    buffer.set_last_buf(true);
    buffer.set_last_in_chain(true);
    let mut chain = ngx_chain_t {
        buf: buffer.as_ngx_buf_mut(),
        next: std::ptr::null_mut(),
    };
    request.output_filter(&mut chain).0
}
