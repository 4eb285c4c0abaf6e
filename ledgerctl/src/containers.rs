//! `ledgerctl up --containers`: the same stack, each part a container of the local images
//! (`scripts/containers.sh up` builds `ledger/postgres:15` and `ledger/kafka:<version>`,
//! `scripts/containers.sh images` our services' `ledger/<service>:<git short commit>`).
//!
//! Only *how* a part is launched differs from the process mode: [`crate::stack::Stack`] computes
//! the same arguments and writes the same configuration files, and the command it would run as a
//! process runs instead as `sh -c 'exec <command> >> <its log> 2>&1'` in a container on the host
//! network (so every port is the process mode's, on loopback), with the state folder's paths
//! bind-mounted at the same paths (so configuration paths and logs stay valid, and `ledgerctl logs`
//! reads the same files). The container's main process is a host process too: its pid, recorded in
//! the manifest, carries the same marker on its command line, so `status` and the readiness waits
//! work unchanged. Stopping goes through the engine (`docker kill -s <signal>`), starting again
//! replaces the container (`docker rm -f`, `docker run`), `down` removes them.
//!
//! The Docker CLI, not an API client: six commands, and its version negotiation is the engine's.

use crate::error::{Result, StackError};
use crate::process;
use nix::sys::signal::Signal;
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

/// Debian's PostgreSQL 15 binaries inside `ledger/postgres:15`.
pub const PG_BIN_DIR: &str = "/usr/lib/postgresql/15/bin";
/// The Java launcher inside `ledger/kafka`.
pub const JAVA: &str = "/usr/bin/java";
/// Our services' images: `ledger/<name>:<tag>`, the binary at `/usr/local/bin/<name>`.
pub const SERVICES: [&str; 4] = ["region-node", "replicator", "router", "reconcile"];
/// Every container of a stack carries its state folder under this label (what `down` removes).
pub const STATE_LABEL: &str = "ledger.state-dir";
/// How long a started container's main process may take to become the command (the runtime's
/// own init runs first, then `sh`).
const EXEC_TIMEOUT: Duration = Duration::from_secs(20);

/// The images a stack runs, recorded in the manifest.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Images {
    /// `ledger/postgres:15`.
    pub postgres: String,
    /// `ledger/kafka:<kafka/pom.xml's version>`.
    pub kafka: String,
    /// The tag of `ledger/region-node`, `ledger/replicator`, `ledger/router` and `ledger/reconcile`.
    pub services_tag: String,
}

impl Images {
    /// The images for the Kafka version `pom` names and our services tagged `services_tag`
    /// (default: the git short commit, `-dirty` with uncommitted changes, as
    /// `scripts/containers.sh images` tags them).
    pub fn new(pom: &Path, services_tag: Option<String>) -> Result<Self> {
        let services_tag = match services_tag {
            Some(tag) => tag,
            None => git_tag(&crate::config::repo_root())?,
        };
        Ok(Self {
            postgres: "ledger/postgres:15".into(),
            kafka: format!("ledger/kafka:{}", kafka_version(pom)?),
            services_tag,
        })
    }

    /// The image of one of [`SERVICES`].
    pub fn service(&self, name: &str) -> String {
        format!("ledger/{name}:{}", self.services_tag)
    }

    /// The binary of one of [`SERVICES`] inside its image.
    pub fn service_bin(name: &str) -> PathBuf {
        PathBuf::from(format!("/usr/local/bin/{name}"))
    }

    fn all(&self) -> Vec<String> {
        let mut all = vec![self.postgres.clone(), self.kafka.clone()];
        all.extend(SERVICES.iter().map(|s| self.service(s)));
        all
    }
}

/// What the manifest records of a stack in containers.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ContainersEntry {
    /// The images.
    pub images: Images,
    /// The engine they run on, as `DOCKER_HOST` named it at `up` (empty: the CLI's default).
    #[serde(default)]
    pub docker_host: String,
    /// Every container of the stack, by name.
    pub names: Vec<String>,
}

/// The version `kafka/pom.xml` names (the `ledger/kafka` image's tag).
pub fn kafka_version(pom: &Path) -> Result<String> {
    let text = std::fs::read_to_string(pom).map_err(StackError::io(pom))?;
    text.split_once("<kafka.version>")
        .and_then(|(_, rest)| rest.split_once("</kafka.version>"))
        .map(|(v, _)| v.trim().to_owned())
        .ok_or_else(|| StackError::Config(format!("{} names no <kafka.version>", pom.display())))
}

/// The git short commit of `repo`, `-dirty` when tracked files have uncommitted changes.
fn git_tag(repo: &Path) -> Result<String> {
    let git = |args: &[&str]| -> Result<String> {
        let out = Command::new("git").arg("-C").arg(repo).args(args).output().map_err(StackError::io("git"))?;
        if !out.status.success() {
            return Err(StackError::Config(format!(
                "`git {}` failed in {} ({}): pass --image-tag",
                args.join(" "),
                repo.display(),
                String::from_utf8_lossy(&out.stderr).trim()
            )));
        }
        Ok(String::from_utf8_lossy(&out.stdout).trim().to_owned())
    };
    let commit = git(&["rev-parse", "--short", "HEAD"])?;
    let dirty = !git(&["status", "--porcelain", "--untracked-files=no"])?.is_empty();
    Ok(if dirty { format!("{commit}-dirty") } else { commit })
}

fn engine() -> String {
    std::env::var("DOCKER_HOST").unwrap_or_default()
}

/// Runs `docker args`; its standard output, or [`StackError::Docker`].
fn docker(args: &[&str], what: &str) -> Result<String> {
    let out = match Command::new("docker").args(args).output() {
        Ok(out) => out,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            return Err(StackError::MissingBinary {
                what: "the docker CLI",
                path: PathBuf::from("docker"),
                fix: "install Debian's docker.io (`scripts/containers.sh up` does)",
            });
        }
        Err(e) => return Err(StackError::Io { path: PathBuf::from("docker"), source: e }),
    };
    if !out.status.success() {
        return Err(StackError::Docker {
            what: what.to_owned(),
            detail: String::from_utf8_lossy(&out.stderr).trim().lines().last().unwrap_or("no output").to_owned(),
        });
    }
    Ok(String::from_utf8_lossy(&out.stdout).trim().to_owned())
}

/// Fails unless the engine `DOCKER_HOST` names answers and holds every image.
pub fn check(images: &Images) -> Result<()> {
    if let Err(e) = docker(&["version", "--format", "{{.Server.Version}}"], "docker version") {
        let detail = match e {
            StackError::Docker { detail, .. } => detail,
            other => return Err(other),
        };
        return Err(StackError::NoEngine { docker_host: engine(), detail });
    }
    let missing: Vec<String> = images
        .all()
        .into_iter()
        .filter(|i| docker(&["image", "inspect", "--format", "{{.Id}}", i], i).is_err())
        .collect();
    if !missing.is_empty() {
        return Err(StackError::MissingImages { docker_host: engine(), images: missing.join(", ") });
    }
    Ok(())
}

/// One word for `sh`, whatever it contains.
pub fn sh_quote(word: &str) -> String {
    format!("'{}'", word.replace('\'', r"'\''"))
}

/// `cmd` (program and arguments) as one line for `sh`.
pub fn sh_command(cmd: &Command) -> String {
    std::iter::once(cmd.get_program())
        .chain(cmd.get_args())
        .map(|w| sh_quote(&w.to_string_lossy()))
        .collect::<Vec<_>>()
        .join(" ")
}

/// `exec <cmd> >> <log> 2>&1`: the command becomes the container's main process, its output
/// appended to the same log file as the process mode's.
pub fn exec_logged(cmd: &Command, log: &Path) -> String {
    format!("exec {} >> {} 2>&1", sh_command(cmd), sh_quote(&log.display().to_string()))
}

/// A container to run: `sh -c <script>` in `image` on the host network.
#[derive(Debug, Clone)]
pub struct ContainerSpec {
    /// Its name (unique on the engine: it carries the part's port).
    pub name: String,
    /// The image.
    pub image: String,
    /// Host folders mounted at the same path inside.
    pub mounts: Vec<PathBuf>,
    /// `uid:gid` to run as; `None`: the image's user.
    pub user: Option<String>,
    /// What `docker stop` sends.
    pub stop_signal: Signal,
    /// `/dev/shm` in MiB, when the default 64 is too small (PostgreSQL).
    pub shm_mb: Option<u32>,
    /// The shell script; it ends by `exec`ing the part's command.
    pub script: String,
    /// The stack's state folder (a label).
    pub state_dir: PathBuf,
}

/// `uid:gid` of this process: our services and Kafka run as whoever runs `ledgerctl`, as processes
/// do, so the files they write in the state folder are that user's.
pub fn current_user() -> String {
    format!("{}:{}", nix::unistd::Uid::effective().as_raw(), nix::unistd::Gid::effective().as_raw())
}

/// Replaces any container of that name by a new one running `spec`, and returns the host pid of
/// its main process once that process carries `marker` on its command line (`sh -c` with the
/// script, then the command). Fails when it exits first, naming its log.
pub fn run(spec: &ContainerSpec, marker: &str, log: &Path) -> Result<u32> {
    remove(&spec.name);
    let label = format!("{STATE_LABEL}={}", spec.state_dir.display());
    let mut args: Vec<String> = ["run", "-d", "--name", &spec.name, "--network", "host", "--label", &label]
        .into_iter()
        .map(String::from)
        .collect();
    args.extend(["--stop-signal".into(), spec.stop_signal.as_str().into(), "--entrypoint".into(), "/bin/sh".into()]);
    if let Some(user) = &spec.user {
        args.extend(["--user".into(), user.clone()]);
    }
    if let Some(mb) = spec.shm_mb {
        args.extend(["--shm-size".into(), format!("{mb}m")]);
    }
    for m in &spec.mounts {
        args.extend(["--volume".into(), format!("{0}:{0}", m.display())]);
    }
    args.extend([spec.image.clone(), "-c".into(), spec.script.clone()]);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    docker(&args, &format!("docker run {}", spec.name))?;
    let started = Instant::now();
    loop {
        let state = docker(&["inspect", "--format", "{{.State.Running}} {{.State.Pid}}", &spec.name], &spec.name)?;
        let (running, pid) = state.split_once(' ').unwrap_or(("false", "0"));
        let pid: u32 = pid.parse().unwrap_or(0);
        if running == "true" && pid > 0 && process::is_ours_and_alive(pid, marker) {
            return Ok(pid);
        }
        if running != "true" || started.elapsed() > EXEC_TIMEOUT {
            let output = docker(&["logs", "--tail", "5", &spec.name], &spec.name).unwrap_or_default();
            return Err(StackError::NotReady {
                what: format!("container {}", spec.name),
                waited_s: started.elapsed().as_secs(),
                detail: format!(
                    "{}: {}",
                    if running == "true" { "its command never started" } else { "it exited" },
                    if output.is_empty() { process::last_line(log) } else { output.replace('\n', " | ") }
                ),
                log: log.to_path_buf(),
            });
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Sends `signal` to the container's main process through the engine, waits up to `grace` for it
/// to go, then SIGKILL. Acts only while `pid` is ours (see [`process::is_ours_and_alive`]); returns
/// whether it was running. The container stays, stopped (see [`remove`]).
pub fn stop(name: &str, pid: u32, marker: &str, signal: Signal, grace: Duration) -> bool {
    if !process::is_ours_and_alive(pid, marker) {
        return false;
    }
    let gone = |within: Duration| {
        let deadline = Instant::now() + within;
        while Instant::now() < deadline {
            if !process::is_ours_and_alive(pid, marker) {
                return true;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        !process::is_ours_and_alive(pid, marker)
    };
    let _ = docker(&["kill", "--signal", signal.as_str(), name], name);
    if !gone(grace) {
        let _ = docker(&["kill", "--signal", "SIGKILL", name], name);
        gone(Duration::from_secs(5));
    }
    true
}

/// Removes the container (running or not) and its anonymous volumes; nothing when there is none.
pub fn remove(name: &str) {
    let _ = docker(&["rm", "--force", "--volumes", name], name);
}

/// Removes every container labelled with `state_dir` (what an interrupted `up` may have left
/// unrecorded); returns their names.
pub fn remove_all_of(state_dir: &Path) -> Vec<String> {
    let filter = format!("label={STATE_LABEL}={}", state_dir.display());
    let Ok(names) = docker(&["ps", "--all", "--filter", &filter, "--format", "{{.Names}}"], "docker ps") else {
        return Vec::new();
    };
    let names: Vec<String> = names.lines().map(str::to_owned).filter(|n| !n.is_empty()).collect();
    for name in &names {
        remove(name);
    }
    names
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_command_is_one_quoted_line_that_execs_into_its_log() {
        let mut cmd = Command::new("/usr/local/bin/region-node");
        cmd.arg("--config").arg("/state/it's/node.toml");
        assert_eq!(
            exec_logged(&cmd, Path::new("/state/node.log")),
            r"exec '/usr/local/bin/region-node' '--config' '/state/it'\''s/node.toml' >> '/state/node.log' 2>&1"
        );
    }
}
