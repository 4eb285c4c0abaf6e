//! Nothing the harness starts outlives the test process: not when a test panics, not when the test
//! process is killed outright.

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

fn alive(pid: u32) -> bool {
    // A zombie still has a /proc entry but runs nothing.
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .map(|s| s.rsplit_once(") ").and_then(|(_, r)| r.chars().next()).is_some_and(|c| c != 'Z' && c != 'X'))
        .unwrap_or(false)
}

fn wait_gone(pids: &[u32]) {
    let deadline = Instant::now() + Duration::from_secs(20);
    while Instant::now() < deadline && pids.iter().any(|p| alive(*p)) {
        std::thread::sleep(Duration::from_millis(100));
    }
    let left: Vec<_> = pids.iter().filter(|p| alive(**p)).collect();
    assert!(left.is_empty(), "engine processes outlived the test process: {left:?}");
}

fn start_probe(mode: &str) -> (std::process::Child, Vec<u32>) {
    let mut child = Command::new(env!("CARGO_BIN_EXE_testkit-probe"))
        .arg(mode)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("starting testkit-probe");
    let mut line = String::new();
    BufReader::new(child.stdout.as_mut().unwrap()).read_line(&mut line).unwrap();
    let pids: Vec<u32> =
        line.trim().strip_prefix("pids ").expect("pids line").split(' ').map(|p| p.parse().unwrap()).collect();
    assert!(pids.iter().all(|p| *p > 0 && alive(*p)), "the probe's engines run: {line}");
    (child, pids)
}

#[test]
fn engines_stop_when_a_test_process_panics() {
    let (mut child, pids) = start_probe("panic");
    // Its engines were seen running; now it may panic (it waits for stdin to close, or it could
    // panic and clean up before the check above looked).
    drop(child.stdin.take());
    let status = child.wait().unwrap();
    assert!(!status.success(), "the probe panicked");
    wait_gone(&pids);
}

#[test]
fn engines_stop_when_a_test_process_is_killed() {
    let (mut child, pids) = start_probe("hang");
    child.kill().unwrap(); // SIGKILL: no exit handler runs, only the parent-death signal helps
    child.wait().unwrap();
    wait_gone(&pids);
}
