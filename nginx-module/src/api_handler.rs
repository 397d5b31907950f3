//! FFI: the content handler of `shift_api` locations. It reads the request (and a PATCH body),
//! learns the caller's uid from the Unix socket, and sends what `api::handle` answers.
//!
//! It reads and writes no bit field of `ngx_http_request_t`: since Nginx 1.29 (`in_port_t port`
//! before `count:16`) the generated bindings place those bits two positions off from where
//! gcc does, so `set_expect_tested` would set `header_sent`. Plain fields are laid out right.

use std::os::fd::BorrowedFd;

use ngx::core::{Buffer, Status};
use ngx::ffi::{
    ngx_chain_t, ngx_http_discard_request_body, ngx_http_finalize_request,
    ngx_http_read_client_request_body, ngx_http_request_t, ngx_http_send_header, ngx_int_t,
    ngx_str_t, ngx_uint_t, NGX_HTTP_HEAD, NGX_HTTP_SPECIAL_RESPONSE,
};
use ngx::http::{HttpModuleLocationConf, HttpModuleMainConf, Request};
use ngx::log::DebugMask;
use ngx::ngx_log_debug;
use nix::sys::socket::{getsockopt, sockopt::PeerCredentials};
use shift_wire::MAX_BODY_BYTES;

use crate::ngx_module::Module;
use crate::shm::{api_view, NotServing};
use shift_core::api::{self, Endpoint, Reply, Writer};
use shift_core::process::process_alive;

/// Serves the admin API.
pub extern "C" fn handle(r: *mut ngx_http_request_t) -> ngx_int_t {
    // SAFETY: Nginx calls content handlers with a valid request of this location.
    unsafe {
        if method(r) != "PATCH" {
            let rc = ngx_http_discard_request_body(r);
            if rc != Status::NGX_OK.0 {
                return rc;
            }
            return answer(r, &[]);
        }
        if (*r).headers_in.content_length_n > MAX_BODY_BYTES as i64 {
            // No "100 Continue" for a body we refuse: the 413 comes at once, as for Nginx's
            // client_max_body_size. Nginx sets `expect_tested` for that; discarding the body
            // skips the test just as well when there is no `Expect` header any more.
            (*r).headers_in.expect = std::ptr::null_mut();
            let rc = ngx_http_discard_request_body(r);
            if rc != Status::NGX_OK.0 {
                return rc;
            }
            return send(r, &api::too_large_reply());
        }
        // The body (at most MAX_BODY_BYTES, within client_body_buffer_size) is read into
        // memory; `request_body` joins its buffers.
        let rc = ngx_http_read_client_request_body(r, Some(body_read));
        if rc >= NGX_HTTP_SPECIAL_RESPONSE as ngx_int_t {
            return rc;
        }
        Status::NGX_DONE.0
    }
}

/// Called once the PATCH body is read.
extern "C" fn body_read(r: *mut ngx_http_request_t) {
    // SAFETY: Nginx calls this with the request whose body it has read into `request_body`.
    unsafe {
        let rc = match request_body(r) {
            Some(body) => answer(r, &body),
            None => send(r, &api::too_large_reply()),
        };
        ngx_http_finalize_request(r, rc);
    }
}

/// The body from memory; `None` when it is over the limit or Nginx wrote it to a file.
///
/// SAFETY: `r` is a request whose body has been read.
unsafe fn request_body(r: *mut ngx_http_request_t) -> Option<Vec<u8>> {
    let mut body = Vec::new();
    // SAFETY: per the contract; the chain and its buffers belong to the request's pool.
    unsafe {
        let request_body = (*r).request_body;
        if request_body.is_null() {
            return Some(body);
        }
        if !(*request_body).temp_file.is_null() {
            return None;
        }
        let mut link = (*request_body).bufs;
        while !link.is_null() {
            let buf = (*link).buf;
            if (*buf).in_file() != 0 {
                return None;
            }
            let len = (*buf).last.offset_from((*buf).pos) as usize;
            body.extend_from_slice(std::slice::from_raw_parts((*buf).pos, len));
            if body.len() > MAX_BODY_BYTES {
                return None;
            }
            link = (*link).next;
        }
    }
    Some(body)
}

/// Answers the request with what the API logic says.
///
/// SAFETY: `r` is a valid request of a `shift_api` location.
unsafe fn answer(r: *mut ngx_http_request_t, body: &[u8]) -> ngx_int_t {
    // SAFETY: per the contract.
    let request = unsafe { Request::from_ngx_http_request(r) };
    let Some(api_conf) = Module::location_conf(request).and_then(|loc| loc.api.as_ref()) else {
        return Status::NGX_ERROR.0;
    };
    let Some(main) = Module::main_conf(request) else {
        return Status::NGX_ERROR.0;
    };
    // The zone stays locked while this request is answered: a configuration committed meanwhile
    // waits for the change, and the change sees the last committed configuration.
    // SAFETY: per the contract.
    let (uid, path, method) = unsafe { (caller_uid(r), (*r).uri.to_string(), method(r)) };
    let view = api_view(main).and_then(|mut view| {
        if method == "PATCH" {
            view.hold_state_dirs()?;
        }
        Ok(view)
    });
    let view = match view {
        Ok(view) => view,
        // SAFETY: per the contract.
        Err(NotServing::Superseded(why)) => return unsafe { send(r, &api::superseded_reply(why)) },
        Err(NotServing::NoZone) => return Status::NGX_ERROR.0,
    };
    let endpoints: Vec<Endpoint> = view
        .upstreams
        .iter()
        .map(|upstream| Endpoint {
            table: upstream.table(),
            state_path: upstream.state_path(),
            active: &upstream.active,
        })
        .collect();

    let relative = path.strip_prefix(api_conf.prefix.as_str()).unwrap_or(&path);
    let writer = Writer {
        // SAFETY: ngx_pid is set once at process start.
        pid: unsafe { ngx::ffi::ngx_pid } as u32,
        is_alive: &process_alive,
    };
    let reply = api::handle(
        &method,
        relative,
        body,
        api_conf.access.caller(uid),
        &endpoints,
        &writer,
        Some(view.usage),
    );
    ngx_log_debug!(
        mask: DebugMask::Http,
        // SAFETY: per the contract.
        unsafe { (*(*r).connection).log },
        "shift: API {} {} from uid {:?} answered {}",
        method,
        relative,
        uid,
        reply.status
    );
    // SAFETY: per the contract.
    unsafe { send(r, &reply) }
}

/// The uid of the process at the other end of a Unix socket connection.
///
/// SAFETY: `r` is a valid request.
unsafe fn caller_uid(r: *mut ngx_http_request_t) -> Option<u32> {
    // SAFETY: the request's connection, its address and its fd are valid while it runs.
    unsafe {
        let connection = (*r).connection;
        let sockaddr = (*connection).sockaddr;
        if sockaddr.is_null() || (*sockaddr).sa_family != nix::libc::AF_UNIX as u16 {
            return None;
        }
        let fd = BorrowedFd::borrow_raw((*connection).fd);
        getsockopt(&fd, PeerCredentials)
            .ok()
            .map(|credentials| credentials.uid())
    }
}

/// SAFETY: `r` is a valid request.
unsafe fn method(r: *mut ngx_http_request_t) -> String {
    // SAFETY: per the contract.
    unsafe { (*r).method_name.to_string() }
}

/// Sends `reply` as a JSON response.
///
/// SAFETY: `r` is a valid request that has not sent its header yet.
unsafe fn send(r: *mut ngx_http_request_t, reply: &Reply) -> ngx_int_t {
    // SAFETY: per the contract; the buffer and header strings are allocated in the request's
    // pool, which outlives the response.
    unsafe {
        let request = Request::from_ngx_http_request(r);
        (*r).headers_out.status = reply.status as usize;
        (*r).headers_out.content_length_n = reply.body.len() as i64;
        let content_type = reply.content_type;
        (*r).headers_out.content_type = ngx_str_t {
            len: content_type.len(),
            data: content_type.as_ptr().cast_mut(),
        };
        (*r).headers_out.content_type_len = content_type.len();
        if let Some(allow) = reply.allow {
            if request.add_header_out("Allow", allow).is_none() {
                return Status::NGX_ERROR.0;
            }
        }
        let rc = ngx_http_send_header(r);
        // HEAD: the header only (`r->header_only`, a bit field, is read wrong since 1.29).
        let head = (*r).method == NGX_HTTP_HEAD as ngx_uint_t;
        if rc == Status::NGX_ERROR.0 || rc > Status::NGX_OK.0 || head {
            return rc;
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
        request.output_filter(&mut chain).into()
    }
}
