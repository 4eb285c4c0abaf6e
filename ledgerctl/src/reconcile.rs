//! The reconcile service of the local stack: its database (on the first region's PostgreSQL, as the
//! cloud gives it an Aurora of its own), its development staff (a resolver and an approver, with
//! passwords and API tokens written to `env.json`), and its process.

use crate::error::{Result, StackError};
use crate::manifest::StaffEntry;
use crate::process::{self, Lifetime};
use reconcile::case::Role;
use std::path::{Path, PathBuf};
use std::process::{Child, Command};

/// The reconcile service's database name on the first region's instance.
pub const DATABASE: &str = "reconcile";

/// The development staff `up` creates: (username, role).
pub const DEV_STAFF: [(&str, Role); 2] = [("resolver", Role::Resolver), ("approver", Role::Approver)];

/// The reconcile process of ours.
#[derive(Debug, Clone)]
pub struct ReconcileProcess {
    /// The `reconcile` binary.
    pub bin: PathBuf,
    /// Its state folder (config and log).
    pub dir: PathBuf,
    /// HTTP port on 127.0.0.1.
    pub port: u16,
    /// Its database.
    pub database_url: String,
    /// Every region: (name, node URL, Kafka bootstrap).
    pub regions: Vec<(String, String, String)>,
    /// The nodes' key with the reconcile scope.
    pub node_key: String,
    /// Where spans go (Jaeger's OTLP/gRPC); empty: nowhere.
    pub otlp_endpoint: String,
    /// Its output.
    pub log: PathBuf,
}

/// The default `reconcile` binary: next to the running `ledgerctl`.
pub fn default_bin() -> PathBuf {
    std::env::current_exe().map(|exe| exe.with_file_name("reconcile")).unwrap_or_else(|_| PathBuf::from("reconcile"))
}

impl ReconcileProcess {
    fn config_path(&self) -> PathBuf {
        self.dir.join("reconcile.toml")
    }

    /// The marker that identifies its pid.
    pub fn marker(&self) -> String {
        self.config_path().display().to_string()
    }

    /// Fails when the binary is missing.
    pub fn check_binary(bin: &Path) -> Result<()> {
        if bin.is_file() {
            return Ok(());
        }
        Err(StackError::MissingBinary {
            what: "the reconcile service",
            path: bin.to_path_buf(),
            fix: "build it with `cargo build -p reconcile` (./dev up does) or set LEDGER_RECONCILE_BIN",
        })
    }

    /// Starts the service; returns at once.
    pub fn start(&self, lifetime: Lifetime) -> Result<Child> {
        Self::check_binary(&self.bin)?;
        let mut cmd = self.command()?;
        process::log_to(&mut cmd, &self.log)?;
        process::spawn(cmd, lifetime, "reconcile")
    }

    /// Writes the configuration and returns the command that runs the service on it.
    pub fn command(&self) -> Result<Command> {
        std::fs::create_dir_all(&self.dir).map_err(StackError::io(&self.dir))?;
        let mut toml = format!(
            "# Written by ledgerctl up.\nhttp_addr = \"127.0.0.1:{}\"\ndatabase_url = {:?}\nnode_api_key = {:?}\notlp_endpoint = {:?}\n",
            self.port, self.database_url, self.node_key, self.otlp_endpoint
        );
        for (name, url, bootstrap) in &self.regions {
            toml.push_str(&format!(
                "\n[[regions]]\nname = {name:?}\napi_url = {url:?}\nkafka_bootstrap = {bootstrap:?}\n"
            ));
        }
        let path = self.config_path();
        std::fs::write(&path, toml).map_err(StackError::io(&path))?;
        let mut cmd = Command::new(&self.bin);
        cmd.arg("--config").arg(&path).arg("serve");
        for (key, _) in std::env::vars().filter(|(k, _)| k.starts_with("RECONCILE_")) {
            cmd.env_remove(key);
        }
        Ok(cmd)
    }

    /// Waits until `/healthz` answers, failing early if `pid` dies.
    pub async fn wait_ready(&self, pid: u32) -> Result<()> {
        crate::node::wait_until_serving(self.port, "/healthz", pid, &self.marker(), "the reconcile service", &self.log)
            .await
    }
}

fn random_password() -> String {
    format!("dev-{}", uuid::Uuid::new_v4().simple())
}

/// Migrates the service's database and makes sure the development staff exist with the passwords
/// and tokens `known` lists (new ones are made for those missing). Returns the staff to record.
pub async fn prepare(database_url: &str, known: &[StaffEntry]) -> Result<Vec<StaffEntry>> {
    let pg_err = |e: String| StackError::Config(format!("the reconcile database {database_url}: {e}"));
    let pool = reconcile::connect(database_url).await.map_err(|e| pg_err(e.to_string()))?;
    let mut staff = Vec::new();
    for (username, role) in DEV_STAFF {
        let entry = match known.iter().find(|s| s.username == username && s.role == role.as_str()) {
            Some(s) => s.clone(),
            None => StaffEntry {
                username: username.into(),
                password: random_password(),
                role: role.as_str().into(),
                token: String::new(),
            },
        };
        reconcile::auth::put_staff(&pool, username, role, &entry.password).await.map_err(|e| pg_err(e.to_string()))?;
        let token_known = !entry.token.is_empty()
            && reconcile::auth::bearer(&pool, &entry.token).await.map_err(|e| pg_err(e.to_string()))?.is_some();
        let token = if token_known {
            entry.token.clone()
        } else {
            reconcile::auth::issue_token(&pool, username, role, "ledgerctl up")
                .await
                .map_err(|e| pg_err(e.to_string()))?
        };
        staff.push(StaffEntry { token, ..entry });
    }
    pool.close().await;
    Ok(staff)
}

/// Recomputes the audit chain of the stack's reconcile database.
pub async fn verify_audit(database_url: &str) -> Result<reconcile::audit::Verdict> {
    let pool = reconcile::connect(database_url)
        .await
        .map_err(|e| StackError::Config(format!("the reconcile database {database_url}: {e}")))?;
    reconcile::audit::verify(&pool)
        .await
        .map_err(|e| StackError::Config(format!("the reconcile database {database_url}: {e}")))
}
