//! Which processes still run. The zone's bookkeeping is keyed by worker pids: a lock left by a
//! crashed writer is taken over, the requests a dead worker had in flight stop counting, and a
//! configuration load is freed once no process of it is left. A pid alone can be reused by an
//! unrelated process, and a dead worker stays a zombie until the master reaps it, so a process
//! is identified by its pid and start time and a zombie counts as gone.

use std::fs;

/// A process, told apart from a later one that reuses its pid.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ProcessId {
    pub pid: u32,
    /// Clock ticks after boot at which it started (`/proc/PID/stat`, field 22).
    pub start_time: u64,
}

/// What `/proc/PID/stat` says: the state letter, parent pid and start time.
struct Stat {
    state: char,
    parent: u32,
    start_time: u64,
}

fn stat(pid: u32) -> Option<Stat> {
    let text = fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
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

impl ProcessId {
    /// The process `pid` as it runs now, if it does.
    pub fn of(pid: u32) -> Option<ProcessId> {
        let stat = stat(pid)?;
        Some(ProcessId {
            pid,
            start_time: stat.start_time,
        })
    }

    /// This process.
    pub fn current() -> Option<ProcessId> {
        ProcessId::of(std::process::id())
    }

    /// Whether this very process still runs (not a zombie, not a later one with its pid).
    pub fn is_running(&self) -> bool {
        stat(self.pid).is_some_and(|stat| {
            stat.start_time == self.start_time && !matches!(stat.state, 'Z' | 'X' | 'x')
        })
    }
}

/// Whether process `pid` still runs: the liveness test the write lock uses to take over a lock
/// left by a crashed worker. A zombie (dead, not yet reaped) does not run.
pub fn process_alive(pid: u32) -> bool {
    stat(pid).is_some_and(|stat| !matches!(stat.state, 'Z' | 'X' | 'x'))
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
            .filter(|&pid| stat(pid).is_some_and(|stat| stat.parent == parent))
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
