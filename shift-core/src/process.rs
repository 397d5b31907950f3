//! Which processes still run. The zone's bookkeeping is keyed by worker processes: a lock left
//! by a crashed writer is taken over, the requests a dead worker had in flight stop counting,
//! and a configuration load is freed once no process of it is left. A pid alone can be reused
//! by an unrelated process, and a dead worker stays a zombie until the master reaps it, so a
//! process is identified by its pid and start time and a zombie counts as gone.
//!
//! Every one of those actions is harmful when taken for a process that still runs (a lock
//! broken mid-write, a live worker's record freed), so the judgement errs towards "alive": a
//! process is gone only when the kernel says there is no such pid, or when `/proc` shows a
//! zombie or a later process under the same pid. A `/proc` that cannot be read (a busy worker
//! out of file descriptors, `hidepid=2`, systemd's `ProtectProc=invisible`, where workers
//! cannot see the root master) proves nothing either way.

use std::fs;
use std::io;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
#[cfg(debug_assertions)]
use std::sync::OnceLock;

use nix::errno::Errno;
use nix::sys::signal::kill;
use nix::unistd::Pid;

/// A process, told apart from a later one that reuses its pid.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ProcessId {
    pub pid: u32,
    /// Clock ticks after boot at which it started (`/proc/PID/stat`, field 22).
    pub start_time: u64,
}

/// What `/proc/PID/stat` says: the state letter, parent pid and start time.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Stat {
    pub state: char,
    pub parent: u32,
    pub start_time: u64,
}

/// Bits of a pid in a [`ProcessId::token`]: Linux's pids stay below 2^22 (`pid_max`).
const PID_BITS: u32 = 22;

fn parse_stat(text: &str) -> Option<Stat> {
    // The command name is in parentheses and may hold spaces and parentheses: the fields after
    // the last closing one are the state (field 3), the parent (4) … the start time (22).
    let (_, rest) = text.rsplit_once(')')?;
    let fields: Vec<&str> = rest.split_whitespace().collect();
    Some(Stat {
        state: fields.first()?.chars().next()?,
        parent: fields.get(1)?.parse().ok()?,
        start_time: fields.get(19)?.parse().ok()?,
    })
}

/// `/proc/PID/stat`, or why it could not be read.
fn stat(pid: u32) -> io::Result<Stat> {
    #[cfg(debug_assertions)]
    if proc_hidden_for_tests(pid) {
        return Err(io::Error::from_raw_os_error(nix::libc::ENOENT));
    }
    let text = fs::read_to_string(format!("/proc/{pid}/stat"))?;
    parse_stat(&text).ok_or_else(|| io::Error::new(io::ErrorKind::InvalidData, "unparsable stat"))
}

/// Debug builds only: with `SHIFT_TEST_HIDE_PROC=1` in the environment, other processes'
/// `/proc` entries read as missing, as under `hidepid=2` (the integration tests set it through
/// Nginx's `env` directive).
#[cfg(debug_assertions)]
fn proc_hidden_for_tests(pid: u32) -> bool {
    static HIDDEN: OnceLock<bool> = OnceLock::new();
    *HIDDEN.get_or_init(|| std::env::var_os("SHIFT_TEST_HIDE_PROC").is_some_and(|v| v == "1"))
        && pid != std::process::id()
}

/// Whether signal 0 found the pid: only "no such process" means it is not there (EPERM: it is,
/// under another user).
fn pid_exists(pid: u32) -> bool {
    let Ok(raw) = i32::try_from(pid) else {
        return false;
    };
    raw > 0 && kill(Pid::from_raw(raw), None) != Err(Errno::ESRCH)
}

/// The judgement itself, from what the kernel said: whether the pid exists, its `/proc` stat
/// (or the error reading it), and the start time the process had when it was recorded (`None`
/// when only its pid is known).
pub fn judge(exists: bool, stat: &io::Result<Stat>, start_time: Option<u64>) -> bool {
    if !exists {
        return false;
    }
    match stat {
        // Unreadable: the pid exists, and nothing shows it is another process.
        Err(_) => true,
        Ok(stat) => {
            !matches!(stat.state, 'Z' | 'X' | 'x')
                && start_time.is_none_or(|start| start == stat.start_time)
        }
    }
}

impl ProcessId {
    /// The process `pid` as it runs now, if `/proc` shows it.
    pub fn of(pid: u32) -> Option<ProcessId> {
        let stat = stat(pid).ok()?;
        Some(ProcessId {
            pid,
            start_time: stat.start_time,
        })
    }

    /// This process, read once per process (a forked child reads its own): its own `/proc`
    /// entry is always visible, and a read that fails (no file descriptor left) is retried at
    /// the next call.
    pub fn current() -> Option<ProcessId> {
        static OWN_PID: AtomicU32 = AtomicU32::new(0);
        static OWN_START: AtomicU64 = AtomicU64::new(0);
        let pid = std::process::id();
        if OWN_PID.load(Ordering::Acquire) == pid {
            return Some(ProcessId {
                pid,
                start_time: OWN_START.load(Ordering::Relaxed),
            });
        }
        let own = ProcessId::of(pid)?;
        OWN_START.store(own.start_time, Ordering::Relaxed);
        OWN_PID.store(pid, Ordering::Release);
        Some(own)
    }

    /// Whether this very process still runs (not a zombie, not a later one with its pid);
    /// "yes" when that cannot be told.
    pub fn is_running(&self) -> bool {
        judge(pid_exists(self.pid), &stat(self.pid), Some(self.start_time))
    }

    /// A first look, one `kill(pid, 0)` and no file read: false once the kernel has no such
    /// pid. A pid taken again by another process, or a zombie, still reads as running here;
    /// [`is_running`](Self::is_running) tells those apart.
    pub fn may_be_running(&self) -> bool {
        pid_exists(self.pid)
    }

    /// One word for a lock: the pid in the low bits, the start time above them.
    pub fn token(&self) -> u64 {
        (self.start_time << PID_BITS) | u64::from(self.pid)
    }

    /// The process a [`token`](Self::token) names.
    pub fn from_token(token: u64) -> ProcessId {
        ProcessId {
            pid: (token & ((1 << PID_BITS) - 1)) as u32,
            start_time: token >> PID_BITS,
        }
    }
}

/// This process's lock token ([`ProcessId::token`]); its pid alone when its start time cannot
/// be read (then only the pid tells it apart).
pub fn own_token() -> u64 {
    ProcessId::current().map_or(u64::from(std::process::id()), |own| own.token())
}

/// Whether the holder of a lock token still runs: the write lock's test before it takes over a
/// lock left by a crashed worker. A token without a start time is judged by its pid.
pub fn token_alive(token: u64) -> bool {
    let process = ProcessId::from_token(token);
    let start = (process.start_time != 0).then_some(process.start_time);
    judge(pid_exists(process.pid), &stat(process.pid), start)
}

/// Whether process `pid` still runs: the test before the zone's own lock, which Nginx keys by
/// pid alone, is taken over from a process that died holding it.
pub fn process_alive(pid: u32) -> bool {
    judge(pid_exists(pid), &stat(pid), None)
}

/// The running children of `parent`: from each of its threads' `/proc/PID/task/TID/children`
/// where the kernel has them, else by reading every process's parent.
pub fn children_of(parent: u32) -> Vec<u32> {
    let listed: Option<Vec<u32>> =
        fs::read_dir(format!("/proc/{parent}/task"))
            .ok()
            .and_then(|tasks| {
                let mut pids = Vec::new();
                for task in tasks {
                    let text = fs::read_to_string(task.ok()?.path().join("children")).ok()?;
                    pids.extend(
                        text.split_whitespace()
                            .filter_map(|pid| pid.parse::<u32>().ok()),
                    );
                }
                Some(pids)
            });
    let mut children: Vec<u32> = match listed {
        Some(pids) => pids,
        None => fs::read_dir("/proc")
            .into_iter()
            .flatten()
            .filter_map(|entry| entry.ok()?.file_name().to_str()?.parse::<u32>().ok())
            .filter(|&pid| stat(pid).is_ok_and(|stat| stat.parent == parent))
            .collect(),
    };
    children.retain(|&pid| process_alive(pid));
    children.sort_unstable();
    children
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_reaped_process_is_not_alive() {
        assert!(process_alive(std::process::id()));
        let mut child = std::process::Command::new("true").spawn().unwrap();
        let pid = child.id();
        child.wait().unwrap();
        assert!(!process_alive(pid));
    }

    #[test]
    fn a_zombie_is_not_running() {
        let mut child = std::process::Command::new("true").spawn().unwrap();
        let id = ProcessId::of(child.id()).expect("just started");
        // Not reaped yet: a zombie once it exits.
        let became_zombie = (0..200).any(|_| {
            std::thread::sleep(std::time::Duration::from_millis(5));
            !id.is_running()
        });
        assert!(
            became_zombie,
            "an exited, unreaped child still counts as running"
        );
        assert!(!process_alive(id.pid));
        child.wait().unwrap();
    }

    #[test]
    fn a_process_is_told_apart_from_one_that_reuses_its_pid() {
        let me = ProcessId::current().unwrap();
        assert!(me.is_running());
        let older = ProcessId {
            start_time: me.start_time.wrapping_sub(1),
            ..me
        };
        assert!(!older.is_running());
    }

    fn stat_of(state: char, start_time: u64) -> io::Result<Stat> {
        Ok(Stat {
            state,
            parent: 1,
            start_time,
        })
    }

    #[test]
    fn only_a_missing_pid_a_zombie_or_another_start_time_mean_gone() {
        let hidden = || Err(io::Error::from_raw_os_error(nix::libc::ENOENT));
        let no_files = || Err(io::Error::from_raw_os_error(nix::libc::EMFILE));
        let denied = || Err(io::Error::from_raw_os_error(nix::libc::EACCES));
        // The kernel knows no such pid: gone, whatever /proc says.
        assert!(!judge(false, &hidden(), Some(5)));
        assert!(!judge(false, &stat_of('S', 5), None));
        // The pid exists but /proc cannot be read (hidepid, out of descriptors): alive.
        for unreadable in [hidden(), no_files(), denied()] {
            assert!(judge(true, &unreadable, Some(5)));
            assert!(judge(true, &unreadable, None));
        }
        assert!(judge(true, &stat_of('S', 5), Some(5)));
        assert!(judge(true, &stat_of('R', 9), None));
        assert!(!judge(true, &stat_of('Z', 5), Some(5)), "a zombie");
        assert!(!judge(true, &stat_of('S', 6), Some(5)), "a later process");
    }

    #[test]
    fn a_token_carries_pid_and_start_time() {
        let me = ProcessId::current().unwrap();
        assert_eq!(ProcessId::from_token(me.token()), me);
        assert!(token_alive(me.token()));
        assert!(token_alive(own_token()));
        let older = ProcessId {
            start_time: me.start_time.wrapping_sub(1),
            ..me
        };
        assert!(!token_alive(older.token()), "the pid, reused");
        // A bare pid (no start time known) is judged by the pid alone.
        assert!(token_alive(u64::from(me.pid)));
    }

    #[test]
    fn lists_running_children() {
        let mut child = std::process::Command::new("sleep")
            .arg("5")
            .spawn()
            .unwrap();
        assert!(children_of(std::process::id()).contains(&child.id()));
        child.kill().unwrap();
        child.wait().unwrap();
        assert!(!children_of(std::process::id()).contains(&child.id()));
    }
}
