//! The wrapped command's processes beyond its process group. A command can leave its group
//! (`setsid`, a daemonising double fork); electd is a child subreaper, so when such a process's
//! parent exits it is reparented to electd instead of init. On every stop electd finds them —
//! the command's descendants while its tree is intact, and the orphans it adopted — kills them
//! with the group, and reaps the adopted ones at once.
//!
//! Processes electd starts on purpose (the command, the freeze watchdog, health checks, hooks)
//! are registered with [`own`] so they are never taken for adopted orphans.

use std::collections::{HashMap, HashSet};
use std::sync::Mutex;

use nix::sys::signal::{Signal, kill};
use nix::sys::wait::{WaitPidFlag, waitpid};
use nix::unistd::Pid;

/// Make this process a child subreaper (best effort: a failure only loses the adoption).
pub fn become_subreaper() {
    if let Err(e) = nix::sys::prctl::set_child_subreaper(true) {
        tracing::debug!(error = %e, "cannot become a child subreaper");
    }
}

static OWN: Mutex<Option<HashSet<i32>>> = Mutex::new(None);

/// Processes this one started on purpose, and that something else waits for.
pub mod own {
    use super::OWN;

    pub fn register(pid: u32) {
        let mut own = OWN.lock().unwrap_or_else(|p| p.into_inner());
        own.get_or_insert_with(Default::default).insert(pid as i32);
    }

    pub fn unregister(pid: u32) {
        let mut own = OWN.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(set) = own.as_mut() {
            set.remove(&(pid as i32));
        }
    }

    pub(super) fn contains(pid: i32) -> bool {
        let own = OWN.lock().unwrap_or_else(|p| p.into_inner());
        own.as_ref().is_some_and(|s| s.contains(&pid))
    }
}

/// One process, as /proc says.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Proc {
    pid: i32,
    ppid: i32,
    pgrp: i32,
    zombie: bool,
    /// Clock ticks after boot when it started: with the pid, who it is (pids are reused).
    start: u64,
}

/// One process's `/proc/PID/stat`, if it exists.
fn stat(pid: i32) -> Option<Proc> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // "pid (comm) state ppid pgrp ... starttime(22nd) ...": comm may hold spaces and
    // parentheses.
    let rest = stat.get(stat.rfind(')')? + 2..)?;
    let f: Vec<&str> = rest.split(' ').collect();
    Some(Proc {
        pid,
        zombie: *f.first()? == "Z",
        ppid: f.get(1)?.parse().ok()?,
        pgrp: f.get(2)?.parse().ok()?,
        start: f.get(19)?.parse().ok()?,
    })
}

fn pids() -> Vec<i32> {
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    dir.filter_map(|e| e.ok()?.file_name().to_str()?.parse::<i32>().ok())
        .collect()
}

/// Every process (best effort: one that vanishes while being read is skipped).
fn processes() -> Vec<Proc> {
    pids().into_iter().filter_map(stat).collect()
}

/// Whether `pid` exists and has not exited (a zombie has).
pub fn alive(pid: Pid) -> bool {
    stat(pid.as_raw()).is_some_and(|p| !p.zombie)
}

/// Whether `pid` is still the process that started at `start` and has not exited.
pub fn is(pid: i32, start: u64) -> bool {
    stat(pid).is_some_and(|p| !p.zombie && p.start == start)
}

/// The live processes of process group `pgid`.
pub fn group_members(pgid: i32) -> Vec<Pid> {
    processes()
        .into_iter()
        .filter(|p| p.pgrp == pgid && !p.zombie)
        .map(|p| Pid::from_raw(p.pid))
        .collect()
}

/// Whether the environment of `pid` holds exactly `entry` (`NAME=VALUE`), if this process may
/// read it.
fn env_has(pid: i32, entry: &str) -> bool {
    std::fs::read(format!("/proc/{pid}/environ"))
        .is_ok_and(|env| env.split(|b| *b == 0).any(|e| e == entry.as_bytes()))
}

/// The live processes (other than this one) whose environment holds exactly `entry`
/// (`NAME=VALUE`), among those this process may read.
#[cfg(test)]
fn with_env(entry: &str) -> Vec<Pid> {
    let me = std::process::id() as i32;
    pids()
        .into_iter()
        .filter(|&pid| pid != me && env_has(pid, entry))
        .map(Pid::from_raw)
        .filter(|p| alive(*p))
        .collect()
}

/// Everything alive of a command, from one pass over /proc (the freeze watchdog's kill, where
/// every millisecond delays the next leader): the members of process group `pgid` and the
/// descendants of its leader; each `reported` process (pid, start time) that is still the same
/// process, and its descendants; and, when `marker` (`NAME=VALUE`) is given, every process whose
/// environment holds it — read only for processes started no earlier than the command (what
/// carries its environment started after it), not for every process of the host.
pub fn command_tree(pgid: i32, reported: &[(i32, u64)], marker: Option<&str>) -> Vec<Pid> {
    let all = processes();
    let me = std::process::id() as i32;
    let mut children: HashMap<i32, Vec<i32>> = HashMap::new();
    let mut by_pid: HashMap<i32, &Proc> = HashMap::new();
    for p in &all {
        children.entry(p.ppid).or_default().push(p.pid);
        by_pid.insert(p.pid, p);
    }
    let mut out: HashSet<i32> = all
        .iter()
        .filter(|p| p.pgrp == pgid)
        .map(|p| p.pid)
        .collect();
    let mut todo = vec![pgid];
    for &(pid, start) in reported {
        if by_pid.get(&pid).is_some_and(|p| p.start == start) {
            out.insert(pid);
            todo.push(pid);
        }
    }
    let mut seen: HashSet<i32> = todo.iter().copied().collect();
    while let Some(p) = todo.pop() {
        for &c in children.get(&p).map(Vec::as_slice).unwrap_or(&[]) {
            if seen.insert(c) {
                out.insert(c);
                todo.push(c);
            }
        }
    }
    if let Some(marker) = marker {
        // The earliest start known of the command: its group leader, else what it reported.
        let since = by_pid
            .get(&pgid)
            .map(|p| p.start)
            .into_iter()
            .chain(reported.iter().map(|(_, start)| *start))
            .min();
        for p in &all {
            if p.pid != me
                && !out.contains(&p.pid)
                && since.is_none_or(|s| p.start >= s)
                && env_has(p.pid, marker)
            {
                out.insert(p.pid);
            }
        }
    }
    out.remove(&me);
    out.into_iter()
        .filter(|pid| by_pid.get(pid).is_some_and(|p| !p.zombie))
        .map(Pid::from_raw)
        .collect()
}

/// [`escapees`] with their start times, for the freeze watchdog.
pub fn escapees_with_start(leader: Pid) -> Vec<(i32, u64)> {
    walk(leader)
        .into_iter()
        .filter(|p| p.pgrp != leader.as_raw() && !p.zombie)
        .map(|p| (p.pid, p.start))
        .collect()
}

/// Every descendant of `root` (not `root` itself), whatever its group or session.
pub fn descendants(root: Pid) -> Vec<Pid> {
    walk(root)
        .into_iter()
        .map(|p| Pid::from_raw(p.pid))
        .collect()
}

/// The descendants of group leader `leader` that left its process group (`setsid`, a
/// daemonising double fork): what signalling the group misses. Members of the group are not
/// signalled twice — a command's own clean-up (a trap's `$(date)`) must not get a second stop
/// signal.
pub fn escapees(leader: Pid) -> Vec<Pid> {
    walk(leader)
        .into_iter()
        .filter(|p| p.pgrp != leader.as_raw())
        .map(|p| Pid::from_raw(p.pid))
        .collect()
}

fn walk(root: Pid) -> Vec<Proc> {
    let mut children: HashMap<i32, Vec<Proc>> = HashMap::new();
    for p in processes() {
        children.entry(p.ppid).or_default().push(p);
    }
    let mut out = Vec::new();
    let mut todo = vec![root.as_raw()];
    while let Some(p) = todo.pop() {
        for &c in children.get(&p).map(Vec::as_slice).unwrap_or(&[]) {
            out.push(c);
            todo.push(c.pid);
        }
    }
    out
}

/// This process's children, from `/proc/self/task/*/children` (cheap: no scan of every
/// process).
fn children() -> Vec<i32> {
    let Ok(tasks) = std::fs::read_dir("/proc/self/task") else {
        return Vec::new();
    };
    tasks
        .filter_map(|t| std::fs::read_to_string(t.ok()?.path().join("children")).ok())
        .flat_map(|s| {
            s.split_whitespace()
                .filter_map(|p| p.parse().ok())
                .collect::<Vec<i32>>()
        })
        .collect()
}

/// Whether `pid` is a zombie (exited, not yet reaped).
fn zombie(pid: i32) -> bool {
    stat(pid).is_some_and(|p| p.zombie)
}

/// Children of this process that it did not start on purpose: orphans it adopted as a
/// subreaper (and their descendants).
pub fn adopted() -> Vec<Pid> {
    let orphans: Vec<Pid> = children()
        .into_iter()
        .filter(|p| !own::contains(*p))
        .map(Pid::from_raw)
        .collect();
    if orphans.is_empty() {
        return orphans;
    }
    let mut all = orphans.clone();
    for o in orphans {
        all.extend(descendants(o));
    }
    all
}

/// [`adopted`] with their start times, for the freeze watchdog.
pub fn adopted_with_start() -> Vec<(i32, u64)> {
    adopted()
        .into_iter()
        .filter_map(|p| stat(p.as_raw()))
        .filter(|p| !p.zombie)
        .map(|p| (p.pid, p.start))
        .collect()
}

/// Send `signal` to each of `pids` (gone ones are skipped).
pub fn signal_all(pids: &[Pid], signal: Signal) {
    for &p in pids {
        let _ = kill(p, signal);
    }
}

/// Reap the adopted orphans that have exited; how many are left (alive or not yet reaped).
pub fn reap_adopted() -> usize {
    let mut left = 0;
    for pid in children().into_iter().filter(|p| !own::contains(*p)) {
        let reaped = zombie(pid)
            && matches!(
                waitpid(Pid::from_raw(pid), Some(WaitPidFlag::WNOHANG)),
                Ok(s) if s.pid().is_some()
            );
        if !reaped {
            left += 1;
        }
    }
    left
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn descendants_cross_sessions_and_stop_at_the_root() {
        // sh → (setsid) sh → sleep: the grandchild left the group and the session.
        use std::os::unix::process::CommandExt;
        let mut child = std::process::Command::new("sh")
            .args(["-c", "setsid sh -c 'sleep 30' & sleep 30"])
            .process_group(0)
            .spawn()
            .unwrap();
        let root = Pid::from_raw(child.id() as i32);
        let mut found = Vec::new();
        for _ in 0..100 {
            found = descendants(root);
            if found.len() >= 3 {
                break;
            }
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
        assert!(
            found.len() >= 3,
            "sleep, setsid'd sh and its sleep: {found:?}"
        );
        assert!(!found.contains(&root));
        // Only the setsid'd sh and its sleep left the group.
        let out = escapees(root);
        assert_eq!(out.len(), 2, "{out:?} of {found:?}");
        assert!(out.iter().all(|p| found.contains(p)));
        // With their start times, which tell them from a later process under the same pid.
        let timed = escapees_with_start(root);
        assert_eq!(timed.len(), 2, "{timed:?}");
        for (pid, start) in &timed {
            assert!(is(*pid, *start), "{pid}");
            assert!(
                !is(*pid, start + 1),
                "{pid}: another start time is another process"
            );
        }
        // The group holds the root and its own sleep.
        let group = group_members(root.as_raw());
        assert!(group.contains(&root) && group.len() == 2, "{group:?}");
        // The watchdog's one pass: the group, the descendants, reported processes and those
        // carrying the marker, and nothing else (an unmarked process beside it is not touched).
        let marker = format!("ELECTD_TREE_TREE={}", std::process::id());
        let (name, value) = marker.split_once('=').unwrap();
        let mut marked = std::process::Command::new("sleep")
            .arg("30")
            .env(name, value)
            .spawn()
            .unwrap();
        let mut plain = std::process::Command::new("sleep")
            .arg("30")
            .spawn()
            .unwrap();
        let (marked_pid, plain_pid) = (
            Pid::from_raw(marked.id() as i32),
            Pid::from_raw(plain.id() as i32),
        );
        let mut all = Vec::new();
        for _ in 0..100 {
            all = command_tree(root.as_raw(), &[], Some(&marker));
            if all.contains(&marked_pid) {
                break;
            }
            std::thread::sleep(std::time::Duration::from_millis(10));
        }
        for p in found.iter().chain([&root, &marked_pid]) {
            assert!(all.contains(p), "{p} missing from {all:?}");
        }
        assert!(!all.contains(&plain_pid), "{all:?}");
        assert_eq!(all.len(), found.len() + 2, "{all:?} of {found:?}");
        let reported = [(
            marked_pid.as_raw(),
            stat(marked_pid.as_raw()).unwrap().start,
        )];
        assert!(command_tree(root.as_raw(), &reported, None).contains(&marked_pid));
        let stale = [(marked_pid.as_raw(), reported[0].1 + 1)];
        assert!(!command_tree(root.as_raw(), &stale, None).contains(&marked_pid));
        for c in [&mut marked, &mut plain] {
            let _ = c.kill();
            let _ = c.wait();
        }
        signal_all(&found, Signal::SIGKILL);
        let _ = child.kill();
        let _ = child.wait();
        for p in &found {
            for _ in 0..100 {
                if !alive(*p) {
                    break;
                }
                std::thread::sleep(std::time::Duration::from_millis(10));
            }
        }
    }

    #[test]
    fn processes_are_found_by_an_entry_of_their_environment() {
        let marker = format!("ELECTD_TREE_TEST={}", std::process::id());
        let (name, value) = marker.split_once('=').unwrap();
        let mut child = std::process::Command::new("sleep")
            .arg("30")
            .env(name, value)
            .spawn()
            .unwrap();
        let pid = Pid::from_raw(child.id() as i32);
        let mut found = Vec::new();
        for _ in 0..100 {
            found = with_env(&marker);
            if !found.is_empty() {
                break;
            }
            std::thread::sleep(std::time::Duration::from_millis(10));
        }
        assert_eq!(found, vec![pid]);
        assert!(
            with_env(&format!("{marker}0")).is_empty(),
            "exact entries only"
        );
        let _ = child.kill();
        let _ = child.wait();
        assert!(!alive(pid));
    }
}
