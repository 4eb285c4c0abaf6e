//! Starting and stopping engine processes by pid, safely.
//!
//! A pid alone is not an identity: after a reboot or a long time it may belong to another program.
//! Every process we start therefore carries a marker (its state folder) on its command line, and we
//! only signal a pid whose `/proc/<pid>/cmdline` still contains that marker.

use crate::error::{Result, StackError};
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use std::fs::OpenOptions;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::sync::{Mutex, OnceLock};
use std::time::{Duration, Instant};

/// How a started process relates to the one that started it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Lifetime {
    /// Survives the launcher (`ledgerctl up` exits, the stack keeps running): own session, no tie.
    Detached,
    /// Dies with the current process, even when it is killed: for test harnesses.
    TiedToThisProcess,
}

/// Redirects a command's output to a log file, in append mode so restarts keep history.
pub fn log_to(cmd: &mut Command, log: &Path) -> Result<()> {
    let file = OpenOptions::new().create(true).append(true).open(log).map_err(StackError::io(log))?;
    let err = file.try_clone().map_err(StackError::io(log))?;
    cmd.stdin(Stdio::null()).stdout(file).stderr(err);
    Ok(())
}

/// Starts `cmd` with the given lifetime and returns the child.
pub fn spawn(mut cmd: Command, lifetime: Lifetime, what: &str) -> Result<Child> {
    match lifetime {
        Lifetime::Detached => {
            detach(&mut cmd);
            let child = cmd.spawn().map_err(|e| spawn_error(what, e))?;
            reap_when_it_exits(child.id());
            Ok(child)
        }
        Lifetime::TiedToThisProcess => spawn_tied(cmd, what),
    }
}

/// A detached child of a long-lived launcher (the chaos suite, a drill) that is killed stays a
/// zombie until its parent waits for it, and PostgreSQL refuses to start while the pid in its lock
/// file exists, zombie or not ("Is another postmaster running?"). Callers keep only the pid, so a
/// thread waits for it instead; when the launcher exits first, init adopts and reaps it.
fn reap_when_it_exits(pid: u32) {
    let _ = std::thread::Builder::new().name(format!("reap-{pid}")).spawn(move || {
        let _ = nix::sys::wait::waitpid(Pid::from_raw(pid as i32), None);
    });
}

fn spawn_error(what: &str, source: std::io::Error) -> StackError {
    StackError::Io { path: PathBuf::from(what), source }
}

#[allow(unsafe_code)]
fn detach(cmd: &mut Command) {
    use std::os::unix::process::CommandExt;
    // SAFETY: setsid is async-signal-safe and touches no memory of the parent.
    unsafe {
        cmd.pre_exec(|| {
            nix::unistd::setsid().map_err(std::io::Error::from)?;
            Ok(())
        });
    }
}

#[allow(unsafe_code)]
fn tie_to_parent(cmd: &mut Command) {
    use std::os::unix::process::CommandExt;
    // SAFETY: prctl is async-signal-safe. It runs after any uid change std makes, which matters
    // because changing credentials clears the parent-death signal.
    unsafe {
        cmd.pre_exec(|| {
            nix::sys::prctl::set_pdeathsig(Signal::SIGKILL).map_err(std::io::Error::from)?;
            Ok(())
        });
    }
}

type SpawnRequest = (Command, mpsc::Sender<std::io::Result<Child>>);

/// The parent-death signal fires when the *thread* that forked the child exits, and test harnesses
/// run each test on its own short-lived thread. So tied children are forked by one thread that lives
/// as long as the process.
fn spawner() -> &'static Mutex<mpsc::Sender<SpawnRequest>> {
    static SPAWNER: OnceLock<Mutex<mpsc::Sender<SpawnRequest>>> = OnceLock::new();
    SPAWNER.get_or_init(|| {
        let (tx, rx) = mpsc::channel::<SpawnRequest>();
        std::thread::Builder::new()
            .name("ledger-spawner".into())
            .spawn(move || {
                for (mut cmd, reply) in rx {
                    let _ = reply.send(cmd.spawn());
                }
            })
            .expect("spawning the spawner thread");
        Mutex::new(tx)
    })
}

fn spawn_tied(mut cmd: Command, what: &str) -> Result<Child> {
    tie_to_parent(&mut cmd);
    let (reply_tx, reply_rx) = mpsc::channel();
    let sent = spawner().lock().map(|tx| tx.send((cmd, reply_tx)).is_ok()).unwrap_or(false);
    let gone = || spawn_error(what, std::io::Error::other("spawner thread is gone"));
    if !sent {
        return Err(gone());
    }
    reply_rx.recv().map_err(|_| gone())?.map_err(|e| spawn_error(what, e))
}

/// True when `pid` runs and its command line contains `marker`. Zombies count as not running.
pub fn is_ours_and_alive(pid: u32, marker: &str) -> bool {
    let Ok(cmdline) = std::fs::read(format!("/proc/{pid}/cmdline")) else {
        return false;
    };
    if let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        // The state letter follows the parenthesised command name, which may itself contain spaces.
        let state = stat.rsplit_once(") ").and_then(|(_, rest)| rest.chars().next());
        if matches!(state, Some('Z' | 'X')) {
            return false;
        }
    }
    let marker = marker.as_bytes();
    cmdline.windows(marker.len().max(1)).any(|w| w == marker)
}

/// Sends `signal`, waits up to `grace` for the process to go, then SIGKILLs it. Only acts on a pid
/// that is ours (see [`is_ours_and_alive`]); returns whether it was running.
pub fn stop(pid: u32, marker: &str, signal: Signal, grace: Duration) -> bool {
    if !is_ours_and_alive(pid, marker) {
        return false;
    }
    let target = Pid::from_raw(pid as i32);
    let _ = kill(target, signal);
    let deadline = Instant::now() + grace;
    while Instant::now() < deadline {
        if !is_ours_and_alive(pid, marker) {
            return true;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let _ = kill(target, Signal::SIGKILL);
    let deadline = Instant::now() + Duration::from_secs(5);
    while Instant::now() < deadline && is_ours_and_alive(pid, marker) {
        std::thread::sleep(Duration::from_millis(20));
    }
    true
}

/// The lowest port [`free_port`] hands out; the ones under it are left to services people run.
const PRIVATE_PORT_MIN: u16 = 16_384;

/// A loopback port nothing listens on, for a process this one is about to start (test harnesses).
///
/// Binding port 0 and letting go draws from the kernel's ephemeral range, the range it also draws
/// from for every outgoing connection and every other `bind(0)`. An engine binds its port seconds
/// later (a JVM starting), and in between the kernel may hand the same port to someone else, or to
/// the next `bind(0)` of this very process: the broker then exits on "Address already in use" (seen
/// in CI). So ports come from below the ephemeral range, which the kernel never hands out on its
/// own, walked in order from a per-process start: one process gets a port again only after walking
/// the whole range (about 16,000 ports).
pub fn free_port() -> u16 {
    static WALKED: Mutex<Option<u32>> = Mutex::new(None);
    static RANGE: OnceLock<Option<(u16, u16)>> = OnceLock::new();
    let Some(range) = *RANGE.get_or_init(private_port_range) else {
        return ephemeral_port();
    };
    let mut walked = WALKED.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
    // Spread concurrent processes (a harness and the probe it runs) over the range.
    let walked = walked.get_or_insert_with(|| std::process::id().wrapping_mul(7_919));
    next_free_port(range, walked).unwrap_or_else(ephemeral_port)
}

/// The next port of `[low, high)` after `walked` steps that binds, stepping past busy ones; `None`
/// when every port of the range is busy.
fn next_free_port((low, high): (u16, u16), walked: &mut u32) -> Option<u16> {
    let span = u32::from(high - low);
    (0..span).find_map(|_| {
        let port = low + (*walked % span) as u16;
        *walked = walked.wrapping_add(1);
        std::net::TcpListener::bind(("127.0.0.1", port)).is_ok().then_some(port)
    })
}

/// `[PRIVATE_PORT_MIN, first ephemeral port)`, or `None` when the ephemeral range starts too low
/// to leave a useful range under it.
fn private_port_range() -> Option<(u16, u16)> {
    let range = std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range").ok();
    let ephemeral_min =
        range.as_deref().and_then(|r| r.split_whitespace().next()?.parse::<u16>().ok()).unwrap_or(32_768);
    (ephemeral_min >= PRIVATE_PORT_MIN + 1_024).then_some((PRIVATE_PORT_MIN, ephemeral_min))
}

fn ephemeral_port() -> u16 {
    let listener = std::net::TcpListener::bind(("127.0.0.1", 0)).expect("binding an ephemeral loopback port");
    listener.local_addr().expect("a bound listener has an address").port()
}

/// Fails with [`StackError::PortInUse`] when nothing may bind `port` on loopback.
pub fn ensure_port_free(port: u16, what: &str) -> Result<()> {
    match std::net::TcpListener::bind(("127.0.0.1", port)) {
        Ok(_) => Ok(()),
        Err(_) => Err(StackError::PortInUse { port, what: what.to_owned() }),
    }
}

/// Polls `ready` every 100 ms until it holds, failing early when `pid` (ours by `marker`) dies and
/// after `timeout` otherwise. `what` names the process and `awaited` what `ready` checks, for the
/// error, which points at `log`.
pub async fn wait_ready<F: std::future::Future<Output = bool>>(
    what: &str,
    pid: u32,
    marker: &str,
    log: &Path,
    timeout: Duration,
    awaited: &str,
    mut ready: impl FnMut() -> F,
) -> Result<()> {
    let deadline = Instant::now() + timeout;
    loop {
        if !is_ours_and_alive(pid, marker) {
            return Err(StackError::CommandFailed {
                what: what.into(),
                detail: format!("exited: {}", last_line(log)),
                log: log.to_path_buf(),
            });
        }
        if ready().await {
            return Ok(());
        }
        if Instant::now() > deadline {
            return Err(StackError::CommandFailed {
                what: what.into(),
                detail: format!("{awaited} within {timeout:?}"),
                log: log.to_path_buf(),
            });
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// The first `ERROR` or `FATAL` line of a log4j log (`[time] LEVEL message`) with the line after it
/// when that continues the entry (an exception), for error messages: the first error is the cause,
/// the ones after it are consequences.
pub fn first_error(log: &Path) -> Option<String> {
    let text = std::fs::read_to_string(log).ok()?;
    let mut lines = text.lines();
    let first = lines.by_ref().find(|l| l.contains("] ERROR ") || l.contains("] FATAL "))?;
    match lines.next() {
        Some(next) if !next.starts_with('[') && !next.trim().is_empty() => Some(format!("{first} {}", next.trim())),
        _ => Some(first.to_owned()),
    }
}

/// The last non-empty line of a log file, for error messages.
pub fn last_line(log: &Path) -> String {
    std::fs::read_to_string(log)
        .ok()
        .and_then(|s| s.lines().rev().find(|l| !l.trim().is_empty()).map(str::to_owned))
        .unwrap_or_else(|| "no output".into())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashSet;

    #[test]
    fn free_ports_are_never_handed_out_twice_and_stay_clear_of_the_ephemeral_range() {
        let (low, high) = private_port_range().expect("this machine's ephemeral range starts at 32768");
        // Held open, as an engine holds its port: the walk must step over them, not only not repeat.
        let mut held = Vec::new();
        let mut seen = HashSet::new();
        for _ in 0..2_000 {
            let port = free_port();
            assert!((low..high).contains(&port), "{port} is outside [{low}, {high})");
            assert!(seen.insert(port), "{port} handed out twice");
            // Another process may bind it first (a CI run saw one do so): then it is held anyway.
            held.extend(std::net::TcpListener::bind(("127.0.0.1", port)).ok());
        }
    }

    #[test]
    fn the_walk_wraps_around_its_range_and_steps_past_busy_ports_until_all_are_busy() {
        // Eight ports nothing else here uses (under PRIVATE_PORT_MIN), four held by "someone else".
        let range = (15_000, 15_008);
        let others: Vec<_> =
            [15_001, 15_002, 15_005, 15_007].map(|p| std::net::TcpListener::bind(("127.0.0.1", p)).unwrap()).into();
        let mut walked = 6;
        let mut mine = Vec::new();
        let mut order = Vec::new();
        while let Some(port) = next_free_port(range, &mut walked) {
            order.push(port);
            mine.push(std::net::TcpListener::bind(("127.0.0.1", port)).unwrap());
        }
        assert_eq!(order, [15_006, 15_000, 15_003, 15_004], "from step 6, around the end, busy ones skipped");
        drop(others);
        assert_eq!(next_free_port(range, &mut walked), Some(15_005), "the walk goes on where it stopped");
    }

    #[test]
    fn the_first_error_of_a_log4j_log_is_named_with_its_exception() {
        let dir = tempfile::tempdir().unwrap();
        let log = dir.path().join("server.log");
        std::fs::write(
            &log,
            "[2026-12-01 10:44:10,001] INFO starting (kafka.server.KafkaRaftServer)\n\
             [2026-12-01 10:44:11,807] ERROR Unable to start acceptor for CONTROLLER (kafka.network.DataPlaneAcceptor)\n\
             org.apache.kafka.common.KafkaException: Socket server failed to bind to 127.0.0.1:29302: Address already in use.\n\
             \tat kafka.network.Acceptor.openServerSocket(SocketServer.scala:741)\n\
             [2026-12-01 10:44:11,832] ERROR Encountered fatal fault (ProcessTerminatingFaultHandler)\n",
        )
        .unwrap();
        let error = first_error(&log).unwrap();
        assert!(error.contains("Unable to start acceptor for CONTROLLER"), "{error}");
        assert!(error.ends_with("127.0.0.1:29302: Address already in use."), "{error}");
        std::fs::write(&log, "[2026-12-01 10:44:10,001] INFO starting\n").unwrap();
        assert_eq!(first_error(&log), None);
        assert_eq!(first_error(&dir.path().join("missing.log")), None);
    }
}
