//! One region's PostgreSQL 15: Debian's binaries, `initdb` into the region's state folder, its own
//! port, TCP on loopback only, the regional migrations applied.
//!
//! PostgreSQL refuses to run as root, and CI machines run as root: in that case the data folder is
//! handed to the `postgres` system user (created by Debian's package) and the server runs as that
//! user, while its pid stays ours to manage.

use crate::error::{Result, StackError};
use crate::process::{self, Lifetime};
use ledger_core::RegionId;
use ledger_schema::ClaimError;
use sqlx::Connection;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command};
use std::time::{Duration, Instant};

/// Role the services connect as.
pub const USER: &str = "ledger";
/// Its password: a local development stack on loopback, never a deployed secret.
pub const PASSWORD: &str = "ledger";
/// The regional database.
pub const DATABASE: &str = "ledger";
/// Connections per server: every test gets its own database and pool, and one test process shares
/// one server, so this is well above a default of 100.
pub const CONNECTIONS_MAX: u32 = 300;
/// How long a fresh server may take to accept connections.
pub const READY_TIMEOUT: Duration = Duration::from_secs(60);

/// One PostgreSQL server of ours.
#[derive(Debug, Clone)]
pub struct PgServer {
    /// Debian's binaries.
    pub bin_dir: PathBuf,
    /// The data folder (`PGDATA`).
    pub data_dir: PathBuf,
    /// TCP port on 127.0.0.1.
    pub port: u16,
    /// Server output.
    pub log: PathBuf,
}

/// The uid and gid to run as when we are root; `None` when we are not.
fn run_as() -> Result<Option<(u32, u32)>> {
    if !nix::unistd::Uid::effective().is_root() {
        return Ok(None);
    }
    match nix::unistd::User::from_name("postgres") {
        Ok(Some(user)) => Ok(Some((user.uid.as_raw(), user.gid.as_raw()))),
        _ => Err(StackError::MissingBinary {
            what: "the `postgres` system user (PostgreSQL refuses to run as root)",
            path: PathBuf::from("/etc/passwd"),
            fix: "install Debian's `postgresql` package, which creates it",
        }),
    }
}

/// Lets the `postgres` user reach `dir` by adding the traverse bit to every ancestor that lacks it.
/// Nothing else changes: no read permission is granted on any ancestor.
fn ensure_traversable(dir: &Path) -> Result<()> {
    for ancestor in dir.ancestors().skip(1) {
        if ancestor.as_os_str().is_empty() {
            continue;
        }
        let meta = std::fs::metadata(ancestor).map_err(StackError::io(ancestor))?;
        let mode = meta.permissions().mode();
        if mode & 0o001 == 0 {
            let perms = std::fs::Permissions::from_mode(mode | 0o001);
            std::fs::set_permissions(ancestor, perms).map_err(StackError::io(ancestor))?;
        }
    }
    Ok(())
}

fn chown(path: &Path, owner: Option<(u32, u32)>) -> Result<()> {
    if let Some((uid, gid)) = owner {
        std::os::unix::fs::chown(path, Some(uid), Some(gid)).map_err(StackError::io(path))?;
    }
    Ok(())
}

impl PgServer {
    /// Fails when Debian's PostgreSQL 15 binaries are missing.
    pub fn check_binaries(bin_dir: &Path) -> Result<()> {
        for (what, name) in [("PostgreSQL 15 (initdb)", "initdb"), ("PostgreSQL 15 (postgres)", "postgres")] {
            let path = bin_dir.join(name);
            if !path.is_file() {
                return Err(StackError::MissingBinary {
                    what,
                    path,
                    fix: "install it with `apt-get install -y postgresql` (Debian's PostgreSQL 15)",
                });
            }
        }
        Ok(())
    }

    /// Creates the data folder with `initdb` unless it already holds a PostgreSQL 15 cluster.
    pub fn init(&self) -> Result<()> {
        Self::check_binaries(&self.bin_dir)?;
        if self.has_cluster()? {
            return Ok(());
        }
        self.init_fresh()
    }

    /// Whether the data folder holds a PostgreSQL 15 cluster: `false` when it is missing or empty,
    /// an error when it holds anything else.
    pub fn has_cluster(&self) -> Result<bool> {
        let version_file = self.data_dir.join("PG_VERSION");
        if version_file.exists() {
            let version = std::fs::read_to_string(&version_file).map_err(StackError::io(&version_file))?;
            if version.trim() != "15" {
                return Err(StackError::CorruptState {
                    path: self.data_dir.clone(),
                    detail: format!("it holds a PostgreSQL {} cluster, not 15", version.trim()),
                });
            }
            return Ok(true);
        }
        if self.data_dir.exists() {
            let non_empty = std::fs::read_dir(&self.data_dir).map_err(StackError::io(&self.data_dir))?.next().is_some();
            if non_empty {
                return Err(StackError::CorruptState {
                    path: self.data_dir.clone(),
                    detail: "not empty, yet no PG_VERSION: not a PostgreSQL data folder".into(),
                });
            }
        }
        Ok(false)
    }

    fn init_fresh(&self) -> Result<()> {
        let owner = run_as()?;
        std::fs::create_dir_all(&self.data_dir).map_err(StackError::io(&self.data_dir))?;
        std::fs::set_permissions(&self.data_dir, std::fs::Permissions::from_mode(0o700))
            .map_err(StackError::io(&self.data_dir))?;
        if owner.is_some() {
            ensure_traversable(&self.data_dir)?;
        }
        chown(&self.data_dir, owner)?;
        let pwfile = self.data_dir.with_extension("initdb-password");
        std::fs::write(&pwfile, PASSWORD).map_err(StackError::io(&pwfile))?;
        chown(&pwfile, owner)?;

        let mut cmd = Command::new(self.bin_dir.join("initdb"));
        cmd.args(self.initdb_args(&pwfile));
        self.as_owner(&mut cmd, owner);
        process::log_to(&mut cmd, &self.log)?;
        let status = cmd.status().map_err(StackError::io(self.bin_dir.join("initdb")));
        let _ = std::fs::remove_file(&pwfile);
        let status = status?;
        if !status.success() {
            // A half-made cluster would be "corrupt" on the next run: leave nothing behind.
            let _ = std::fs::remove_dir_all(&self.data_dir);
            return Err(StackError::CommandFailed {
                what: "initdb".into(),
                detail: format!("{status}: {}", process::last_line(&self.log)),
                log: self.log.clone(),
            });
        }
        Ok(())
    }

    fn as_owner(&self, cmd: &mut Command, owner: Option<(u32, u32)>) {
        use std::os::unix::process::CommandExt;
        if let Some((uid, gid)) = owner {
            cmd.uid(uid).gid(gid);
            cmd.env("HOME", &self.data_dir);
        }
    }

    /// Starts the server; returns at once (see [`PgServer::wait_ready`]).
    pub fn start(&self, lifetime: Lifetime) -> Result<Child> {
        let owner = run_as()?;
        let mut cmd = Command::new(self.bin_dir.join("postgres"));
        cmd.args(self.server_args());
        self.as_owner(&mut cmd, owner);
        process::log_to(&mut cmd, &self.log)?;
        process::spawn(cmd, lifetime, "postgres")
    }

    /// `initdb`'s arguments, the password read from `pwfile`. Shared with the test harness's
    /// containers, which run the same `initdb` inside an image.
    pub fn initdb_args(&self, pwfile: &Path) -> Vec<String> {
        let mut args = vec!["-D".to_owned(), self.data_dir.display().to_string()];
        args.extend(
            ["-U", USER, "--auth=scram-sha-256", "-E", "UTF8", "--no-locale", "--no-instructions"].map(str::to_owned),
        );
        args.push(format!("--pwfile={}", pwfile.display()));
        args
    }

    /// The server's arguments: data folder, port and every setting. Shared with the test harness's
    /// containers, so a PostgreSQL in a container runs exactly as a local one.
    pub fn server_args(&self) -> Vec<String> {
        let mut args =
            vec!["-D".to_owned(), self.data_dir.display().to_string(), "-p".to_owned(), self.port.to_string()];
        for setting in [
            "listen_addresses=127.0.0.1".to_owned(),
            // TCP only: the default socket folder may not exist or be writable on a CI machine.
            "unix_socket_directories=".to_owned(),
            format!("max_connections={CONNECTIONS_MAX}"),
            // Durability is the point of the ledger: never trade it away, even locally.
            "fsync=on".to_owned(),
            "synchronous_commit=on".to_owned(),
            "full_page_writes=on".to_owned(),
            // Full-page images were a fifth of the WAL under load; compressed, the WAL flush that
            // every acknowledged transfer waits for has less to write.
            "wal_compression=lz4".to_owned(),
            "shared_buffers=128MB".to_owned(),
            "log_min_messages=warning".to_owned(),
        ] {
            args.push("-c".to_owned());
            args.push(setting);
        }
        args
    }

    /// A connection URL for `database` on this server.
    pub fn url(&self, database: &str) -> String {
        format!("postgres://{USER}:{PASSWORD}@127.0.0.1:{}/{database}", self.port)
    }

    /// The marker that identifies this server's pid (see [`process::is_ours_and_alive`]).
    pub fn marker(&self) -> String {
        self.data_dir.display().to_string()
    }

    /// Waits until the server accepts a login, failing early if `pid` dies.
    pub async fn wait_ready(&self, pid: u32) -> Result<()> {
        let started = Instant::now();
        let url = self.url("postgres");
        loop {
            match sqlx::PgConnection::connect(&url).await {
                Ok(conn) => {
                    let _ = conn.close().await;
                    return Ok(());
                }
                Err(e) => {
                    let dead = !process::is_ours_and_alive(pid, &self.marker());
                    if dead || started.elapsed() > READY_TIMEOUT {
                        return Err(StackError::NotReady {
                            what: format!("PostgreSQL on port {}", self.port),
                            waited_s: started.elapsed().as_secs(),
                            detail: if dead {
                                format!("the server exited: {}", process::last_line(&self.log))
                            } else {
                                e.to_string()
                            },
                            log: self.log.clone(),
                        });
                    }
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            }
        }
    }

    /// Creates `database` unless it exists, then applies the regional migrations to it.
    pub async fn prepare_database(&self, database: &str) -> Result<()> {
        self.create_database(database).await?;
        let url = self.url(database);
        // A one-connection pool rather than a bare connection: the migrator's future is then `Send`,
        // so regions can be prepared on parallel tasks.
        let pool = sqlx::postgres::PgPoolOptions::new()
            .max_connections(1)
            .connect(&url)
            .await
            .map_err(|source| StackError::Postgres { url: url.clone(), source })?;
        ledger_schema::MIGRATOR.run(&pool).await.map_err(|source| StackError::Migrate { url: url.clone(), source })?;
        pool.close().await;
        Ok(())
    }

    /// Creates `database` unless it exists.
    pub async fn create_database(&self, database: &str) -> Result<()> {
        let admin_url = self.url("postgres");
        let pg_err = |url: &str| {
            let url = url.to_owned();
            move |source| StackError::Postgres { url, source }
        };
        let mut admin = sqlx::PgConnection::connect(&admin_url).await.map_err(pg_err(&admin_url))?;
        let exists: bool = sqlx::query_scalar("SELECT EXISTS (SELECT 1 FROM pg_database WHERE datname = $1)")
            .bind(database)
            .fetch_one(&mut admin)
            .await
            .map_err(pg_err(&admin_url))?;
        if !exists {
            // Identifiers cannot be bound as parameters; callers pass names we generated.
            let quoted = database.replace('"', "\"\"");
            sqlx::query(sqlx::AssertSqlSafe(format!("CREATE DATABASE \"{quoted}\"")))
                .execute(&mut admin)
                .await
                .map_err(pg_err(&admin_url))?;
        }
        let _ = admin.close().await;
        Ok(())
    }

    /// Records which region the regional database belongs to, refusing a database of another region.
    pub async fn claim_region(&self, database: &str, region: &RegionId) -> Result<()> {
        let url = self.url(database);
        let pool = sqlx::postgres::PgPoolOptions::new()
            .max_connections(1)
            .connect(&url)
            .await
            .map_err(|source| StackError::Postgres { url: url.clone(), source })?;
        let claimed = ledger_schema::claim_region(&pool, region).await;
        pool.close().await;
        claimed.map_err(|e| match e {
            ClaimError::Db(source) => StackError::Postgres { url, source },
            ClaimError::WrongRegion { expected, found } => StackError::CorruptState {
                path: self.data_dir.clone(),
                detail: format!("its database belongs to region {found}, not {expected}"),
            },
        })
    }
}
