//! The status page: `GET {prefix}` (or `{prefix}index.html`) answers one self-contained HTML
//! page, compiled in, that reads the JSON API beside it once a second and draws each upstream's
//! peers. It is served to whoever may read the API, and its security policy lets it load nothing
//! and talk to nothing but its own origin.

use super::access::check_access;
use super::{ApiRequest, Failure, Reply};

/// The page (`status_page.html`).
pub const STATUS_PAGE: &str = include_str!("status_page.html");

/// Inline style and script only; requests to its own origin only; no frames, forms or plugins.
const HEADERS: &[(&str, &str)] = &[
    (
        "Content-Security-Policy",
        "default-src 'none'; script-src 'unsafe-inline'; style-src 'unsafe-inline'; \
         img-src data:; connect-src 'self'; base-uri 'none'; form-action 'none'; \
         frame-ancestors 'none'",
    ),
    ("Cache-Control", "no-store"),
    ("X-Content-Type-Options", "nosniff"),
];

/// The answer to a request for the page; `None` when it asks for something else.
pub fn status_page(request: &ApiRequest) -> Option<Reply> {
    if !matches!(request.path.trim_start_matches('/'), "" | "index.html") {
        return None;
    }
    let refused = match request.method {
        "GET" | "HEAD" => check_access(request.caller, false).err(),
        method => Some(Failure::method_not_allowed(method, "GET, HEAD")),
    };
    Some(match refused {
        Some(failure) => failure.into_reply(),
        None => Reply {
            status: 200,
            content_type: "text/html; charset=utf-8",
            body: STATUS_PAGE.to_string(),
            allow: None,
            headers: HEADERS,
        },
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::Caller;

    const READER: Caller = Caller {
        uid: Some(1000),
        may_read: true,
        may_write: false,
    };
    const DENIED: Caller = Caller {
        uid: Some(1001),
        may_read: false,
        may_write: false,
    };

    fn request<'a>(method: &'a str, path: &'a str, caller: Caller) -> ApiRequest<'a> {
        ApiRequest {
            method,
            path,
            args: "",
            body: &[],
            caller,
            received_ms: 0,
            pid: None,
        }
    }

    #[test]
    fn the_page_is_served_at_the_prefix_to_readers_only() {
        for path in ["", "/", "index.html"] {
            let reply = status_page(&request("GET", path, READER)).expect("the page");
            assert_eq!(reply.status, 200, "{path}");
            assert!(reply.content_type.starts_with("text/html"));
            assert!(reply.body.contains("<title>nginx-shift status</title>"));
        }
        assert!(status_page(&request("GET", "upstreams", READER)).is_none());
        assert_eq!(
            status_page(&request("GET", "", DENIED)).unwrap().status,
            403
        );
        let post = status_page(&request("POST", "", READER)).unwrap();
        assert_eq!((post.status, post.allow), (405, Some("GET, HEAD")));
    }

    #[test]
    fn the_page_is_small_and_loads_nothing_from_elsewhere() {
        assert!(STATUS_PAGE.len() < 64 * 1024, "{} bytes", STATUS_PAGE.len());
        // No address of another origin, no external script, style or image (its icon is an
        // empty `data:` one, so that the browser asks for none).
        assert!(!STATUS_PAGE.contains("://"));
        assert_eq!(STATUS_PAGE.matches("<link").count(), 1);
        assert!(STATUS_PAGE.contains(r#"<link rel="icon" href="data:,">"#));
        for external in [" src=", "@import", "url("] {
            assert!(!STATUS_PAGE.contains(external), "{external}");
        }
    }
}
