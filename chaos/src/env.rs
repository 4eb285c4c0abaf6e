//! Where the environment is described: a Terraform root module's outputs (`terraform output
//! -json`, one output per key of `.devstack/env.json`) or that file itself.

use ledgerctl::Manifest;
use std::path::Path;
use std::process::Command;

/// The environment could not be read.
#[derive(Debug, thiserror::Error)]
pub enum EnvError {
    /// `terraform` could not run or failed.
    #[error("terraform output in {dir}: {detail}")]
    Terraform {
        /// The module's folder.
        dir: String,
        /// What went wrong.
        detail: String,
    },
    /// The description is not an environment.
    #[error("the environment description is unusable: {0}")]
    Shape(String),
    /// The manifest file could not be read.
    #[error(transparent)]
    Manifest(#[from] ledgerctl::StackError),
}

/// The project's Terraform CLI configuration (the provider mirror in `.cache`), written by
/// `scripts/terraform-checks.sh`; the machine's own points at a file that does not exist.
fn cli_config() -> Option<std::path::PathBuf> {
    let path = ledgerctl::config::repo_root().join(".cache").join("terraform").join("cli.tfrc");
    path.is_file().then_some(path)
}

/// Reads the outputs of the Terraform environment in `dir`.
pub fn from_terraform(dir: &Path) -> Result<Manifest, EnvError> {
    let fail = |detail: String| EnvError::Terraform { dir: dir.display().to_string(), detail };
    let mut cmd = Command::new(std::env::var_os("TERRAFORM").unwrap_or_else(|| "terraform".into()));
    cmd.arg(format!("-chdir={}", dir.display())).args(["output", "-json"]);
    if let Some(cfg) = cli_config() {
        cmd.env("TF_CLI_CONFIG_FILE", cfg);
    }
    let out = cmd.output().map_err(|e| fail(e.to_string()))?;
    if !out.status.success() {
        return Err(fail(String::from_utf8_lossy(&out.stderr).trim().to_owned()));
    }
    let outputs: serde_json::Map<String, serde_json::Value> =
        serde_json::from_slice(&out.stdout).map_err(|e| fail(e.to_string()))?;
    manifest_from_outputs(outputs)
}

/// The manifest that `terraform output -json`'s values make (`{"key": {"value": ...}}`).
pub fn manifest_from_outputs(outputs: serde_json::Map<String, serde_json::Value>) -> Result<Manifest, EnvError> {
    let values: serde_json::Map<String, serde_json::Value> = outputs
        .into_iter()
        .filter_map(|(k, v)| v.get("value").cloned().filter(|v| !v.is_null()).map(|v| (k, v)))
        .collect();
    if !values.contains_key("regions") {
        return Err(EnvError::Shape("no regions: is the environment applied?".into()));
    }
    let manifest: Manifest =
        serde_json::from_value(serde_json::Value::Object(values)).map_err(|e| EnvError::Shape(e.to_string()))?;
    if manifest.api_key.is_none() {
        return Err(EnvError::Shape("no api_key".into()));
    }
    Ok(manifest)
}

/// Reads a manifest file (`.devstack/env.json`).
pub fn from_file(path: &Path) -> Result<Manifest, EnvError> {
    Manifest::load(path)?.ok_or_else(|| EnvError::Shape(format!("{} does not exist", path.display())))
}
