//! FFI: the content handler of `shift_api` locations. It reads the request (and a PATCH body),
//! learns the caller's uid from the Unix socket, and sends what `api::handle` answers.
//!
//! It reads and writes no bit field of `ngx_http_request_t`: since Nginx 1.29 (`in_port_t port`
//! before `count:16`) the generated bindings place those bits two positions off from where
//! gcc does, so `set_expect_tested` would set `header_sent`. Plain fields are laid out right.

use std::os::fd::BorrowedFd;

use ngx::core::Status;
use ngx::ffi::{
    ngx_http_finalize_request, ngx_http_read_client_request_body, ngx_http_request_t, ngx_int_t,
    NGX_HTTP_SPECIAL_RESPONSE,
};
use ngx::http::{HttpModuleLocationConf, HttpModuleMainConf, Request};
use ngx::log::DebugMask;
use ngx::ngx_log_debug;
use shift_wire::MAX_BODY_BYTES;

use crate::api_reply::send;
use crate::ngx_module::Module;
use shift_core::api::{self, ApiRequest};

/// Serves the admin API.
pub extern "C" fn handle(r: *mut ngx_http_request_t) -> ngx_int_t {
    // SAFETY: Nginx calls content handlers with a valid request of this location, which lives
    // until it is finalized.
    let request = unsafe { Request::from_ngx_http_request(r) };
    let Some((incoming, main)) = Incoming::of(request) else {
        return Status::NGX_ERROR.0;
    };
    // The status page (or its 405) needs no zone and no body.
    if let Some(reply) = api::status_page(&incoming.as_request(&[])) {
        let rc = request.discard_request_body();
        if rc != Status::NGX_OK {
            return rc.0;
        }
        return send(request, &reply);
    }
    // PATCH and POST have a body; nothing else of the API reads one.
    if !matches!(incoming.method.as_str(), "PATCH" | "POST") {
        // A read of every upstream is served a page per event-loop turn.
        if let Some(listing) = api::listing(&incoming.as_request(&[])) {
            return crate::api_listing::start(request, main, listing);
        }
        let rc = request.discard_request_body();
        if rc != Status::NGX_OK {
            return rc.0;
        }
        return answer_incoming(request, &incoming, main, &[]);
    }
    if request.as_ref().headers_in.content_length_n > MAX_BODY_BYTES as i64 {
        // No "100 Continue" for a body we refuse: the 413 comes at once, as for Nginx's
        // client_max_body_size. Nginx sets `expect_tested` for that; discarding the body
        // skips the test just as well when there is no `Expect` header any more.
        request.as_mut().headers_in.expect = std::ptr::null_mut();
        let rc = request.discard_request_body();
        if rc != Status::NGX_OK {
            return rc.0;
        }
        return send(request, &api::too_large_reply());
    }
    // The body (at most MAX_BODY_BYTES, within client_body_buffer_size) is read into memory;
    // `request_body` joins its buffers.
    let r: *mut ngx_http_request_t = request.into();
    // SAFETY: `r` is the valid request above; `body_read` is called with it once read.
    let rc = unsafe { ngx_http_read_client_request_body(r, Some(body_read)) };
    if rc >= NGX_HTTP_SPECIAL_RESPONSE as ngx_int_t {
        return rc;
    }
    Status::NGX_DONE.0
}

/// Called once a PATCH or POST body is read.
extern "C" fn body_read(r: *mut ngx_http_request_t) {
    // SAFETY: Nginx calls this with the request whose body it has read into `request_body`.
    let request = unsafe { Request::from_ngx_http_request(r) };
    let rc = match request_body(request) {
        Some(body) => answer(request, &body),
        None => send(request, &api::too_large_reply()),
    };
    let r: *mut ngx_http_request_t = request.into();
    // SAFETY: the request is valid and its handler is done with it.
    unsafe { ngx_http_finalize_request(r, rc) };
}

/// The body from memory; `None` when it is over the limit or Nginx wrote it to a file.
fn request_body(request: &Request) -> Option<Vec<u8>> {
    let mut body = Vec::new();
    let request_body = request.as_ref().request_body;
    if request_body.is_null() {
        return Some(body);
    }
    // SAFETY: a read body and its chain of buffers belong to the request's pool.
    let (temp_file, mut link) = unsafe { ((*request_body).temp_file, (*request_body).bufs) };
    if !temp_file.is_null() {
        return None;
    }
    while !link.is_null() {
        // SAFETY: each link of the chain and its buffer are valid until the request ends; a
        // buffer in memory holds `last - pos` bytes at `pos`.
        let (bytes, next) = unsafe {
            let buf = &*(*link).buf;
            if buf.in_file() != 0 {
                return None;
            }
            let len = buf.last.offset_from(buf.pos) as usize;
            (std::slice::from_raw_parts(buf.pos, len), (*link).next)
        };
        body.extend_from_slice(bytes);
        if body.len() > MAX_BODY_BYTES {
            return None;
        }
        link = next;
    }
    Some(body)
}

/// What the API logic needs of a request, besides its body.
struct Incoming {
    method: String,
    /// The path relative to the `shift_api` location.
    path: String,
    args: String,
    uid: Option<u32>,
    /// The caller's pid, for the history.
    pid: Option<u32>,
    caller: api::Caller,
}

impl Incoming {
    /// The request's method, path, query and caller, with its configuration.
    fn of(request: &Request) -> Option<(Incoming, &'static crate::conf::MainConf)> {
        let api_conf = Module::location_conf(request).and_then(|loc| loc.api.as_ref())?;
        let main = Module::main_conf(request)?;
        let path = request.path().to_string_lossy().into_owned();
        let path = match path.strip_prefix(api_conf.prefix.as_str()) {
            Some(relative) => relative.to_string(),
            None => path,
        };
        // SAFETY: `args` points into the request line while the request runs.
        let args = unsafe { ngx::core::NgxStr::from_ngx_str(request.as_ref().args) }
            .to_string_lossy()
            .into_owned();
        let (uid, pid) = caller_credentials(request).unzip();
        let incoming = Incoming {
            method: method_name(request),
            path,
            args,
            uid,
            pid,
            caller: api_conf.access.caller(uid),
        };
        // SAFETY: the main conf lives as long as the cycle, which outlives its requests.
        Some((incoming, unsafe { &*std::ptr::from_ref(main) }))
    }

    fn as_request<'a>(&'a self, body: &'a [u8]) -> ApiRequest<'a> {
        ApiRequest {
            method: &self.method,
            path: &self.path,
            args: &self.args,
            body,
            caller: self.caller,
            received_ms: crate::clock::unix_ms(),
            pid: self.pid,
        }
    }
}

/// Answers the request with what the API logic says.
fn answer(request: &mut Request, body: &[u8]) -> ngx_int_t {
    match Incoming::of(request) {
        Some((incoming, main)) => answer_incoming(request, &incoming, main, body),
        None => Status::NGX_ERROR.0,
    }
}

/// As `answer`, with the request's method, path and caller already read.
fn answer_incoming(
    request: &mut Request,
    incoming: &Incoming,
    main: &crate::conf::MainConf,
    body: &[u8],
) -> ngx_int_t {
    let Some(reply) = crate::api_answer::answer(main, &incoming.as_request(body)) else {
        return Status::NGX_ERROR.0;
    };
    ngx_log_debug!(
        mask: DebugMask::Http,
        request.log(),
        "shift: API {} {} from uid {:?} answered {}",
        incoming.method,
        incoming.path,
        incoming.uid,
        reply.status
    );
    send(request, &reply)
}

/// The method as the client sent it: `api::handle` names unknown ones in its 405.
fn method_name(request: &Request) -> String {
    // SAFETY: `method_name` points into the request's header buffer while it runs.
    unsafe { ngx::core::NgxStr::from_ngx_str(request.as_ref().method_name) }
        .to_string_lossy()
        .into_owned()
}

/// The uid and pid of the process at the other end of a Unix socket connection.
fn caller_credentials(request: &Request) -> Option<(u32, u32)> {
    // SAFETY: the request's connection and its address are valid while it runs.
    let (family, fd) = unsafe {
        let connection = &*request.connection();
        if connection.sockaddr.is_null() {
            return None;
        }
        ((*connection.sockaddr).sa_family, connection.fd)
    };
    if family != nix::libc::AF_UNIX as u16 {
        return None;
    }
    // SAFETY: the connection's fd stays open while the request runs.
    crate::api_answer::peer_credentials(unsafe { BorrowedFd::borrow_raw(fd) })
}
