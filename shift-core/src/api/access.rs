//! Who may use the API: the caller's uid (from SO_PEERCRED on the Unix socket) against
//! `shift_api writers=` and `readers=`.

use super::Failure;

/// What the caller may do, from its uid and the `shift_api` allow-lists.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Caller {
    /// The caller's uid from SO_PEERCRED; `None` when the socket has no peer credentials.
    pub uid: Option<u32>,
    pub may_read: bool,
    pub may_write: bool,
}

/// Who may use the API: `shift_api writers=` and `readers=`, resolved to uids.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Access {
    /// Uids that may change state (and read it).
    pub writers: Vec<u32>,
    /// Uids that may read besides the writers; `None` means anyone.
    pub readers: Option<Vec<u32>>,
}

impl Access {
    /// What the caller with `uid` (from SO_PEERCRED; `None` without it) may do.
    pub fn caller(&self, uid: Option<u32>) -> Caller {
        let may_write = uid.is_some_and(|uid| self.writers.contains(&uid));
        let may_read = may_write
            || match &self.readers {
                None => true,
                Some(readers) => uid.is_some_and(|uid| readers.contains(&uid)),
            };
        Caller {
            uid,
            may_read,
            may_write,
        }
    }
}

pub(super) fn check_access(caller: Caller, writing: bool) -> Result<(), Failure> {
    let allowed = if writing {
        caller.may_write
    } else {
        caller.may_read
    };
    if allowed {
        return Ok(());
    }
    let action = if writing { "change" } else { "read" };
    let detail = match caller.uid {
        Some(uid) => format!(
            "uid {uid} may not {action} upstreams; allow it with \"shift_api writers=...\" \
             or \"readers=...\""
        ),
        None => "the caller's uid is unknown (no SO_PEERCRED): serve shift_api on a \
                 \"listen unix:\" socket"
            .to_string(),
    };
    Err(Failure::new(403, "forbidden", detail))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn access_follows_the_writer_and_reader_lists() {
        let writers_only = Access {
            writers: vec![0, 33],
            readers: Some(Vec::new()),
        };
        let root = writers_only.caller(Some(0));
        assert!(root.may_read && root.may_write);
        let stranger = writers_only.caller(Some(1000));
        assert!(!stranger.may_read && !stranger.may_write);
        assert!(!writers_only.caller(None).may_read, "no uid, no access");

        let readers = Access {
            writers: vec![0],
            readers: Some(vec![1000]),
        };
        let reader = readers.caller(Some(1000));
        assert!(reader.may_read && !reader.may_write);
        let anyone = Access {
            writers: vec![0],
            readers: None,
        };
        assert!(anyone.caller(Some(4242)).may_read);
        assert!(anyone.caller(None).may_read, "readers=any needs no uid");
        assert!(!anyone.caller(Some(4242)).may_write);
    }
}
