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

/// The last non-empty line of a log file, for error messages.
pub fn last_line(log: &Path) -> String {
    std::fs::read_to_string(log)
        .ok()
        .and_then(|s| s.lines().rev().find(|l| !l.trim().is_empty()).map(str::to_owned))
        .unwrap_or_else(|| "no output".into())
}
