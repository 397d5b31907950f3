//! Active health checks, the parts that need no Nginx: the rise/fall state machine, what a probe
//! sends, and how its answer is judged. The FFI prober (`health_probe`) does the I/O.

use shift_wire::Health;

use crate::directives::CheckArgs;

/// Why a probe failed. Fits in one `u64` so the shared table can hold it in an atomic.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ProbeError {
    ConnectRefused,
    /// Another connect error, with its errno.
    ConnectFailed(i32),
    Timeout,
    /// A read or write error, with its errno.
    Io(i32),
    /// The peer closed the connection before a whole status line.
    Closed,
    /// The answer was not HTTP.
    BadResponse,
    /// A status code outside `status=`.
    Status(u16),
    /// The body lacks the `body=` text.
    BodyMismatch,
    /// The peer accepted the connection, then reset it.
    Reset,
}

impl ProbeError {
    pub fn encode(self) -> u64 {
        let (code, detail): (u64, u32) = match self {
            ProbeError::ConnectRefused => (1, 0),
            ProbeError::ConnectFailed(errno) => (2, errno as u32),
            ProbeError::Timeout => (3, 0),
            ProbeError::Io(errno) => (4, errno as u32),
            ProbeError::Closed => (5, 0),
            ProbeError::BadResponse => (6, 0),
            ProbeError::Status(status) => (7, status as u32),
            ProbeError::BodyMismatch => (8, 0),
            ProbeError::Reset => (9, 0),
        };
        code << 32 | detail as u64
    }

    /// The inverse of `encode`; 0 (no error) and unknown codes give `None`.
    pub fn decode(value: u64) -> Option<ProbeError> {
        let detail = value as u32;
        Some(match value >> 32 {
            1 => ProbeError::ConnectRefused,
            2 => ProbeError::ConnectFailed(detail as i32),
            3 => ProbeError::Timeout,
            4 => ProbeError::Io(detail as i32),
            5 => ProbeError::Closed,
            6 => ProbeError::BadResponse,
            7 => ProbeError::Status(detail as u16),
            8 => ProbeError::BodyMismatch,
            9 => ProbeError::Reset,
            _ => return None,
        })
    }

    /// How the API and the error log say it.
    pub fn describe(self) -> String {
        match self {
            ProbeError::ConnectRefused => "connect refused".into(),
            ProbeError::ConnectFailed(errno) => format!("connect failed ({})", errno_text(errno)),
            ProbeError::Timeout => "timeout".into(),
            ProbeError::Io(errno) => format!("i/o error ({})", errno_text(errno)),
            ProbeError::Closed => "connection closed before a response".into(),
            ProbeError::BadResponse => "invalid HTTP response".into(),
            ProbeError::Status(status) => format!("status {status}"),
            ProbeError::BodyMismatch => "body lacks the expected text".into(),
            ProbeError::Reset => "reset after connect".into(),
        }
    }

    /// A socket error by its errno. A connection reset can only come after the connect
    /// succeeded, whichever call reports it.
    pub fn from_socket_errno(errno: i32, connecting: bool) -> ProbeError {
        match nix::errno::Errno::from_raw(errno) {
            nix::errno::Errno::ECONNRESET => ProbeError::Reset,
            nix::errno::Errno::ECONNREFUSED => ProbeError::ConnectRefused,
            _ if connecting => ProbeError::ConnectFailed(errno),
            _ => ProbeError::Io(errno),
        }
    }
}

fn errno_text(errno: i32) -> String {
    nix::errno::Errno::from_raw(errno).desc().to_string()
}

/// Consecutive results of one peer's checks.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Tally {
    pub fails: u32,
    pub passes: u32,
}

/// The health after one more result: `fails` failures in a row make a peer unhealthy, `passes`
/// passes in a row make it healthy; in between it keeps what it had.
pub fn judge(
    current: Health,
    tally: Tally,
    passed: bool,
    fails_needed: u32,
    passes_needed: u32,
) -> (Health, Tally) {
    if passed {
        let tally = Tally {
            fails: 0,
            passes: tally.passes.saturating_add(1),
        };
        let health = if tally.passes >= passes_needed {
            Health::Healthy
        } else {
            current
        };
        (health, tally)
    } else {
        let tally = Tally {
            fails: tally.fails.saturating_add(1),
            passes: 0,
        };
        let health = if tally.fails >= fails_needed {
            Health::Unhealthy
        } else {
            current
        };
        (health, tally)
    }
}

/// The request an HTTP check sends. HTTP/1.0 with `Connection: close`, so the peer ends the
/// answer by closing.
pub fn http_request(args: &CheckArgs, default_host: &str) -> Vec<u8> {
    let host = args.host.as_deref().unwrap_or(default_host);
    format!(
        "GET {} HTTP/1.0\r\nHost: {host}\r\nUser-Agent: nginx-shift-check\r\n\
         Connection: close\r\nAccept: */*\r\n\r\n",
        args.uri
    )
    .into_bytes()
}

/// The most of an answer a check reads; what fits decides.
pub const MAX_RESPONSE_BYTES: usize = 16 * 1024;

/// Judges an HTTP answer read so far. `complete` says the peer closed (or the buffer is full).
/// `None` means more bytes are needed to decide.
pub fn judge_http(
    response: &[u8],
    complete: bool,
    args: &CheckArgs,
) -> Option<Result<(), ProbeError>> {
    let Some(line_end) = find(response, b"\r\n") else {
        return if complete || response.len() > 1024 {
            Some(Err(if response.is_empty() {
                ProbeError::Closed
            } else {
                ProbeError::BadResponse
            }))
        } else {
            None
        };
    };
    let status = parse_status_line(&response[..line_end]);
    let Some(status) = status else {
        return Some(Err(ProbeError::BadResponse));
    };
    if !args
        .status
        .iter()
        .any(|&(low, high)| (low..=high).contains(&status))
    {
        return Some(Err(ProbeError::Status(status)));
    }
    let Some(expected) = &args.body else {
        return Some(Ok(()));
    };
    let body_start = find(response, b"\r\n\r\n").map(|at| at + 4);
    match body_start {
        Some(start) if find(&response[start..], expected.as_bytes()).is_some() => Some(Ok(())),
        _ if complete => Some(Err(ProbeError::BodyMismatch)),
        _ => None,
    }
}

fn parse_status_line(line: &[u8]) -> Option<u16> {
    let line = std::str::from_utf8(line).ok()?;
    let mut words = line.split(' ');
    if !words.next()?.starts_with("HTTP/1.") {
        return None;
    }
    let code = words.next()?;
    if code.len() != 3 {
        return None;
    }
    code.parse()
        .ok()
        .filter(|status| (100..=599).contains(status))
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack
        .windows(needle.len())
        .position(|window| window == needle)
}

/// Writes `port` into a socket address (`struct sockaddr` bytes) of family AF_INET or
/// AF_INET6, where the port sits at the same offset: a check's `port=`. Other families (Unix
/// sockets) are left as they are.
pub fn with_port(address: &mut [u8], port: u16) {
    let family = address
        .get(..2)
        .map(|bytes| u16::from_ne_bytes([bytes[0], bytes[1]]));
    let inet = [nix::libc::AF_INET as u16, nix::libc::AF_INET6 as u16];
    if family.is_some_and(|family| inet.contains(&family)) && address.len() >= 4 {
        address[2..4].copy_from_slice(&port.to_be_bytes());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rise_and_fall_need_consecutive_results() {
        let (mut health, mut tally) = (Health::Unchecked, Tally::default());
        for _ in 0..2 {
            (health, tally) = judge(health, tally, true, 3, 3);
            assert_eq!(health, Health::Unchecked);
        }
        (health, tally) = judge(health, tally, true, 3, 3);
        assert_eq!(health, Health::Healthy);
        (health, tally) = judge(health, tally, false, 3, 3);
        (health, tally) = judge(health, tally, false, 3, 3);
        // A pass in between resets the failure count.
        (health, tally) = judge(health, tally, true, 3, 3);
        assert_eq!(
            (health, tally),
            (
                Health::Healthy,
                Tally {
                    fails: 0,
                    passes: 1
                }
            )
        );
        for _ in 0..3 {
            (health, tally) = judge(health, tally, false, 3, 3);
        }
        assert_eq!(health, Health::Unhealthy);
    }

    #[test]
    fn the_first_failure_of_an_unchecked_peer_counts() {
        assert_eq!(
            judge(Health::Unchecked, Tally::default(), false, 1, 2).0,
            Health::Unhealthy
        );
    }

    #[test]
    fn a_check_port_goes_into_inet_addresses_only() {
        let family = |family: i32| (family as u16).to_ne_bytes();
        let mut inet = [0u8; 16];
        inet[..2].copy_from_slice(&family(nix::libc::AF_INET));
        inet[2..4].copy_from_slice(&8000u16.to_be_bytes());
        with_port(&mut inet, 9000);
        assert_eq!(u16::from_be_bytes([inet[2], inet[3]]), 9000);

        let mut inet6 = [0u8; 28];
        inet6[..2].copy_from_slice(&family(nix::libc::AF_INET6));
        with_port(&mut inet6, 9001);
        assert_eq!(u16::from_be_bytes([inet6[2], inet6[3]]), 9001);

        let mut unix = [0u8; 110];
        unix[..2].copy_from_slice(&family(nix::libc::AF_UNIX));
        unix[2..6].copy_from_slice(b"/run");
        with_port(&mut unix, 9002);
        assert_eq!(&unix[2..6], b"/run", "a Unix socket path is left alone");
    }

    #[test]
    fn errors_round_trip_through_their_encoding() {
        for error in [
            ProbeError::ConnectRefused,
            ProbeError::ConnectFailed(113),
            ProbeError::Timeout,
            ProbeError::Io(104),
            ProbeError::Closed,
            ProbeError::BadResponse,
            ProbeError::Status(503),
            ProbeError::BodyMismatch,
            ProbeError::Reset,
        ] {
            assert_eq!(ProbeError::decode(error.encode()), Some(error));
        }
        // A reset is one whichever call reports it; other errnos keep their phase.
        for connecting in [true, false] {
            assert_eq!(
                ProbeError::from_socket_errno(104, connecting),
                ProbeError::Reset
            );
        }
        assert_eq!(
            ProbeError::from_socket_errno(113, true),
            ProbeError::ConnectFailed(113)
        );
        assert_eq!(ProbeError::from_socket_errno(32, false), ProbeError::Io(32));
        assert_eq!(ProbeError::Reset.describe(), "reset after connect");
        assert_eq!(ProbeError::decode(0), None);
        assert_eq!(ProbeError::Status(503).describe(), "status 503");
    }

    fn args(status: Vec<(u16, u16)>, body: Option<&str>) -> CheckArgs {
        CheckArgs {
            status,
            body: body.map(str::to_string),
            ..CheckArgs::default()
        }
    }

    #[test]
    fn http_answers_are_judged_by_status_and_body() {
        let plain = args(vec![(200, 399)], None);
        assert_eq!(
            judge_http(b"HTTP/1.1 200 OK\r\n", false, &plain),
            Some(Ok(()))
        );
        assert_eq!(
            judge_http(b"HTTP/1.1 503 Busy\r\n\r\n", true, &plain),
            Some(Err(ProbeError::Status(503)))
        );
        assert_eq!(judge_http(b"HTTP/1.1 20", false, &plain), None);
        assert_eq!(judge_http(b"", true, &plain), Some(Err(ProbeError::Closed)));
        assert_eq!(
            judge_http(b"SSH-2.0-OpenSSH\r\n", false, &plain),
            Some(Err(ProbeError::BadResponse))
        );

        let with_body = args(vec![(200, 200)], Some("ready"));
        assert_eq!(
            judge_http(b"HTTP/1.1 200 OK\r\n\r\nnot yet", false, &with_body),
            None
        );
        assert_eq!(
            judge_http(b"HTTP/1.1 200 OK\r\n\r\nnot yet", true, &with_body),
            Some(Err(ProbeError::BodyMismatch))
        );
        assert_eq!(
            judge_http(
                b"HTTP/1.1 200 OK\r\nX: y\r\n\r\nall ready",
                false,
                &with_body
            ),
            Some(Ok(()))
        );
    }

    #[test]
    fn the_request_names_uri_and_host() {
        let args = CheckArgs {
            uri: "/api/users/".into(),
            ..CheckArgs::default()
        };
        let request = String::from_utf8(http_request(&args, "app")).unwrap();
        assert!(
            request.starts_with("GET /api/users/ HTTP/1.0\r\nHost: app\r\n"),
            "{request}"
        );
        assert!(request.ends_with("\r\n\r\n"));
    }
}
