//! The admin API client: HTTP over the Unix socket Nginx serves `shift_api` on.
//!
//! Each request is one HTTP/1.1 exchange on a connection of its own, made with hyper's
//! connection API rather than a general HTTP client: a `shiftctl set` is a process that sends
//! one request, and a reqwest client (its pool, proxies, redirects and layers) took about
//! 0.35 ms more to set up and send it (BENCHMARKS.md, "Switch latency", 2026-12-03).

use std::path::{Path, PathBuf};
use std::time::Duration;

use http_body_util::{BodyExt, Full};
use hyper::body::Bytes;
use hyper::Method;
use hyper_util::rt::TokioIo;
use percent_encoding::{utf8_percent_encode, AsciiSet, NON_ALPHANUMERIC};
use tokio::net::UnixStream;

use shift_wire::{
    ApiError, NewPeer, PatchApplied, PeerRemoval, Upstream, UpstreamHistory, UpstreamList,
    UpstreamPatch,
};

/// What can go wrong talking to one Nginx.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error(
        "cannot reach Nginx at {socket} ({reason}): is Nginx running with shift_api on that \
         socket? (set it with --socket or SHIFT_SOCKET)"
    )]
    Unreachable { socket: PathBuf, reason: String },
    #[error("Nginx at {socket} answered {status}: {error}")]
    Api {
        socket: PathBuf,
        status: u16,
        error: ApiError,
    },
    #[error(
        "{socket} answered {status} with a body that is not the shift API's: is it the socket of \
         a shift_api location (and --prefix its prefix)? The answer was: {body}"
    )]
    Unexpected {
        socket: PathBuf,
        status: u16,
        body: String,
    },
    #[error(
        "\"{name}\" is not an upstream name: it may not be empty, \".\" or \"..\", nor hold \
         \"/\", \"?\", \"#\", \"%\", spaces or control characters"
    )]
    BadName { name: String },
}

impl ClientError {
    pub fn is_unreachable(&self) -> bool {
        matches!(self, ClientError::Unreachable { .. })
    }

    /// The API's error code (e.g. `conflict`), if the API answered one.
    pub fn api_code(&self) -> Option<&str> {
        match self {
            ClientError::Api { error, .. } => Some(&error.error),
            _ => None,
        }
    }
}

/// The innermost error: "No such file or directory (os error 2)" rather than an HTTP client's
/// layers.
pub(crate) fn root_cause(error: &(dyn std::error::Error + 'static)) -> String {
    let mut cause = error;
    while let Some(source) = cause.source() {
        cause = source;
    }
    cause.to_string()
}

/// How long one request may take, from connecting to the end of the answer.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);

/// One request to the API: its method, its path under the prefix (with any query) and its JSON
/// body.
struct Call {
    method: Method,
    path: String,
    body: Option<Vec<u8>>,
}

impl Call {
    fn get(path: String) -> Call {
        Call {
            method: Method::GET,
            path,
            body: None,
        }
    }

    fn with_json(method: Method, path: String, body: &impl serde::Serialize) -> Call {
        Call {
            method,
            path,
            body: Some(serde_json::to_vec(body).expect("API request bodies serialize")),
        }
    }
}

/// One Nginx's admin API.
#[derive(Debug, Clone)]
pub struct AdminClient {
    socket: PathBuf,
    prefix: String,
}

impl AdminClient {
    pub fn new(socket: &Path, prefix: &str) -> AdminClient {
        let mut prefix = prefix.to_string();
        if !prefix.starts_with('/') {
            prefix.insert(0, '/');
        }
        if !prefix.ends_with('/') {
            prefix.push('/');
        }
        AdminClient {
            socket: socket.to_path_buf(),
            prefix,
        }
    }

    pub fn socket(&self) -> &Path {
        &self.socket
    }

    pub async fn upstreams(&self) -> Result<UpstreamList, ClientError> {
        self.send(&Call::get("upstreams".to_string())).await
    }

    pub async fn upstream(&self, name: &str) -> Result<Upstream, ClientError> {
        self.send(&Call::get(upstream_path(name)?)).await
    }

    /// `GET upstreams/NAME/history?since=GEN`: the changes it keeps after that generation.
    pub async fn history(&self, name: &str, since: u64) -> Result<UpstreamHistory, ClientError> {
        let path = format!("{}/history?since={since}", upstream_path(name)?);
        self.send(&Call::get(path)).await
    }

    /// `PATCH upstreams/NAME?full=1`: the whole upstream after the change, as the status shows
    /// it.
    pub async fn patch(&self, name: &str, patch: &UpstreamPatch) -> Result<Upstream, ClientError> {
        let path = format!("{}?full=1", upstream_path(name)?);
        self.send(&Call::with_json(Method::PATCH, path, patch))
            .await
    }

    /// `PATCH upstreams/NAME`: the new generation and the peers the patch named.
    pub async fn patch_named(
        &self,
        name: &str,
        patch: &UpstreamPatch,
    ) -> Result<PatchApplied, ClientError> {
        let path = upstream_path(name)?;
        self.send(&Call::with_json(Method::PATCH, path, patch))
            .await
    }

    /// `POST upstreams/NAME/peers?full=1`: the upstream with the new peer.
    pub async fn add_peer(&self, name: &str, peer: &NewPeer) -> Result<Upstream, ClientError> {
        let path = format!("{}/peers?full=1", upstream_path(name)?);
        self.send(&Call::with_json(Method::POST, path, peer)).await
    }

    /// `DELETE upstreams/NAME/peers/SERVER?full=1`: the removal, with the upstream without it.
    pub async fn remove_peer(&self, name: &str, server: &str) -> Result<PeerRemoval, ClientError> {
        // The brackets of an IPv6 address are escaped with the rest of the path (`request_target`);
        // Nginx decodes them.
        let path = format!("{}/peers/{server}?full=1", upstream_path(name)?);
        let call = Call {
            method: Method::DELETE,
            path,
            body: None,
        };
        self.send(&call).await
    }

    /// The Prometheus text of `GET metrics`.
    pub async fn metrics(&self) -> Result<String, ClientError> {
        match self.fetch(&Call::get("metrics".to_string())).await? {
            (200, body) => Ok(body),
            (status, body) => Err(self.failure(status, body)),
        }
    }

    /// A JSON answer of the API, decoded.
    async fn send<T: serde::de::DeserializeOwned>(&self, call: &Call) -> Result<T, ClientError> {
        let (status, body) = self.fetch(call).await?;
        if !(200..300).contains(&status) {
            return Err(self.failure(status, body));
        }
        serde_json::from_str(&body).map_err(|_| ClientError::Unexpected {
            socket: self.socket.clone(),
            status,
            body,
        })
    }

    /// The status and body of an answer, or why Nginx could not be reached. A worker of an
    /// older generation answers 503 `superseded` while a binary upgrade or a zone resize is
    /// under way (it changed nothing); the request is sent again until a newer worker answers.
    async fn fetch(&self, call: &Call) -> Result<(u16, String), ClientError> {
        let mut attempts = 0;
        loop {
            let (status, body) = tokio::time::timeout(REQUEST_TIMEOUT, self.exchange(call))
                .await
                .unwrap_or_else(|_| Err(format!("no answer within {REQUEST_TIMEOUT:?}")))
                .map_err(|reason| ClientError::Unreachable {
                    socket: self.socket.clone(),
                    reason,
                })?;
            attempts += 1;
            if status != 503 || attempts >= SUPERSEDED_RETRIES || !is_superseded(&body) {
                return Ok((status, body));
            }
            tokio::time::sleep(SUPERSEDED_PAUSE).await;
        }
    }

    /// One request on a connection of its own: the answer's status and body, or why there is
    /// none.
    async fn exchange(&self, call: &Call) -> Result<(u16, String), String> {
        let stream = UnixStream::connect(&self.socket)
            .await
            .map_err(|error| error.to_string())?;
        let (mut sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
            .await
            .map_err(|error| root_cause(&error))?;
        // The connection is driven beside the request, and closes once `sender` is dropped.
        tokio::spawn(connection);
        let mut request = hyper::Request::builder()
            .method(call.method.clone())
            .uri(request_target(&self.prefix, &call.path))
            // Nginx needs a host; on a Unix socket it means nothing.
            .header(hyper::header::HOST, "localhost");
        if call.body.is_some() {
            request = request.header(hyper::header::CONTENT_TYPE, "application/json");
        }
        let body = Full::new(Bytes::from(call.body.clone().unwrap_or_default()));
        let request = request
            .body(body)
            .map_err(|error| format!("cannot make the request: {error}"))?;
        let response = sender
            .send_request(request)
            .await
            .map_err(|error| root_cause(&error))?;
        let status = response.status().as_u16();
        let body = response
            .into_body()
            .collect()
            .await
            .map_err(|error| root_cause(&error))?
            .to_bytes();
        Ok((status, String::from_utf8_lossy(&body).into_owned()))
    }

    /// A failed answer: the API's own error, or whatever else answered on the socket.
    fn failure(&self, status: u16, body: String) -> ClientError {
        let socket = self.socket.clone();
        match serde_json::from_str::<ApiError>(&body) {
            Ok(error) => ClientError::Api {
                socket,
                status,
                error,
            },
            Err(_) => ClientError::Unexpected {
                socket,
                status,
                body,
            },
        }
    }
}

/// What a request's path has percent-encoded (Nginx decodes it): all but RFC 3986's `pchar`,
/// `/`, and the `%` of what is already escaped.
const ESCAPED_IN_PATH: &AsciiSet = &NON_ALPHANUMERIC
    .remove(b'-')
    .remove(b'.')
    .remove(b'_')
    .remove(b'~')
    .remove(b'!')
    .remove(b'$')
    .remove(b'&')
    .remove(b'\'')
    .remove(b'(')
    .remove(b')')
    .remove(b'*')
    .remove(b'+')
    .remove(b',')
    .remove(b';')
    .remove(b'=')
    .remove(b':')
    .remove(b'@')
    .remove(b'/')
    .remove(b'%');

/// The request line's target for `path` (with any query) under `prefix`: the path escaped, as
/// a URL would have it.
fn request_target(prefix: &str, path: &str) -> String {
    let (path, query) = match path.split_once('?') {
        Some((path, query)) => (path, Some(query)),
        None => (path, None),
    };
    let mut target = utf8_percent_encode(&format!("{prefix}{path}"), ESCAPED_IN_PATH).to_string();
    if let Some(query) = query {
        target.push('?');
        target.push_str(query);
    }
    target
}

/// The API path of upstream `name`. Nginx decodes `%2F` and merges `..` before the module sees
/// a path, so a name that could change the path is refused rather than encoded: `app?x`,
/// `app#x` and `x/../app` must not reach upstream `app`.
fn upstream_path(name: &str) -> Result<String, ClientError> {
    let bad = name.is_empty()
        || name == "."
        || name == ".."
        || name
            .chars()
            .any(|c| matches!(c, '/' | '?' | '#' | '%') || c.is_whitespace() || c.is_control());
    if bad {
        return Err(ClientError::BadName {
            name: name.to_string(),
        });
    }
    Ok(format!("upstreams/{name}"))
}

/// How often, and how far apart, a request answered `superseded` is sent again: up to 5 s,
/// far more than the ~100 ms old workers keep accepting after a reload.
const SUPERSEDED_RETRIES: u32 = 100;
const SUPERSEDED_PAUSE: std::time::Duration = std::time::Duration::from_millis(50);

fn is_superseded(body: &str) -> bool {
    serde_json::from_str::<ApiError>(body).is_ok_and(|error| error.error == "superseded")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn what_a_path_may_not_hold_is_escaped_and_the_query_kept() {
        assert_eq!(
            request_target("/api/", "upstreams/app<1>`x`{2}\"é\"?full=1"),
            "/api/upstreams/app%3C1%3E%60x%60%7B2%7D%22%C3%A9%22?full=1"
        );
        assert_eq!(
            request_target("/my api/", "upstreams/a/peers/%5B::1%5D:80"),
            "/my%20api/upstreams/a/peers/%5B::1%5D:80"
        );
        assert_eq!(
            request_target("/api/", "upstreams/a/peers/[::1]:80?full=1"),
            "/api/upstreams/a/peers/%5B::1%5D:80?full=1"
        );
        assert_eq!(request_target("/api/", "metrics"), "/api/metrics");
    }

    #[test]
    fn names_that_would_change_the_path_are_refused() {
        for bad in [
            "app?x", "app#x", "x/../app", "..", ".", "", "a%2Fb", "a b", "a\nb",
        ] {
            assert!(
                matches!(upstream_path(bad), Err(ClientError::BadName { .. })),
                "{bad:?}"
            );
        }
        assert_eq!(
            upstream_path("app-v2.internal_1").unwrap(),
            "upstreams/app-v2.internal_1"
        );
    }
}
