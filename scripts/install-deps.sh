#!/usr/bin/env bash
# Installs what the ledger needs on a Debian machine, and only what is missing, so it is fast to run
# again: PostgreSQL 15 (Debian's package), Java 17 and Maven (for the Kafka jars), a C toolchain
# and zlib for librdkafka, Rust through rustup (the toolchain itself is pinned by
# rust-toolchain.toml and fetched by cargo), Python 3 for schemathesis (the node's contract test),
# and Prometheus (Debian's package) for the local metrics and the alert checks. The Kafka jars are
# fetched by ledgerctl and the test harness on first use, from kafka/pom.xml, into .cache/kafka.
set -euo pipefail

need=()
have_pkg() { dpkg-query -W -f='${Status}' "$1" 2>/dev/null | grep -q 'install ok installed'; }
[ -x /usr/lib/postgresql/15/bin/postgres ] || need+=(postgresql)
command -v java >/dev/null || need+=(openjdk-17-jre-headless)
command -v mvn >/dev/null || need+=(maven)
command -v cc >/dev/null || need+=(build-essential)
command -v pkg-config >/dev/null || need+=(pkg-config)
have_pkg zlib1g-dev || need+=(zlib1g-dev)
command -v curl >/dev/null || need+=(curl ca-certificates)
# The Terraform checks make a throw-away certificate for the ALB listener they apply against moto.
command -v openssl >/dev/null || need+=(openssl)
# Prometheus and promtool: `ledgerctl up` runs its own prometheus process (not Debian's service),
# and ./dev test checks the alert rules and dashboards with promtool.
{ command -v prometheus >/dev/null && command -v promtool >/dev/null; } || need+=(prometheus)
# The reconcile UI's browser test: Debian's Chromium, driven by playwright-core (npm) below.
[ -x /usr/bin/chromium ] || need+=(chromium)
command -v node >/dev/null || need+=(nodejs npm)
# The node's contract test: schemathesis (PyPI) in its own virtual environment, below.
# Debian's python3 makes virtual environments only with python3-venv; another python3 on PATH
# (pyenv, say) brings its own.
case "$(command -v python3 || true)" in
  "") need+=(python3 python3-venv) ;;
  /usr/bin/python3) have_pkg python3-venv || need+=(python3-venv) ;;
esac

if [ ${#need[@]} -gt 0 ]; then
  echo "install-deps: installing ${need[*]}" >&2
  sudo=""
  [ "$(id -u)" -eq 0 ] || sudo="sudo"
  export DEBIAN_FRONTEND=noninteractive
  $sudo apt-get update -qq
  $sudo apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
fi

if ! command -v cargo >/dev/null; then
  if [ -x "$HOME/.cargo/bin/cargo" ]; then
    export PATH="$HOME/.cargo/bin:$PATH"
  else
    echo "install-deps: installing rustup" >&2
    curl -sSf https://sh.rustup.rs | sh -s -- -y --profile minimal --default-toolchain none >/dev/null
    export PATH="$HOME/.cargo/bin:$PATH"
  fi
fi

# playwright-core for the browser test, pinned by reconcile/ui-tests/package-lock.json; it drives
# the system's Chromium and never downloads a browser of its own.
if [ ! -d reconcile/ui-tests/node_modules/playwright-core ]; then
  echo "install-deps: installing playwright-core" >&2
  (cd reconcile/ui-tests && npm ci --no-audit --no-fund --loglevel=error >/dev/null)
fi

# schemathesis for region-node/tests/contract.rs, pinned, in a virtual environment under .cache (so
# it never touches the system's Python, which Debian marks externally managed); reinstalled only
# when missing or of another version.
SCHEMATHESIS_VERSION=4.32.5
if ! .cache/schemathesis/bin/schemathesis --version 2>/dev/null | grep -qx "schemathesis, version $SCHEMATHESIS_VERSION"; then
  echo "install-deps: installing schemathesis $SCHEMATHESIS_VERSION" >&2
  rm -rf .cache/schemathesis
  python3 -m venv .cache/schemathesis
  .cache/schemathesis/bin/pip install -q --disable-pip-version-check "schemathesis==$SCHEMATHESIS_VERSION" >/dev/null
fi

# Toxiproxy for the chaos suite's network faults between regions (Go module proxy; Go is on the
# machine), built once into .cache/toxiproxy/bin.
TOXIPROXY_VERSION=v2.5.0
# `go install` of a module does not stamp a version into the binary, hence the stamp file.
if [ "$(cat .cache/toxiproxy/bin/VERSION 2>/dev/null)" != "$TOXIPROXY_VERSION" ] \
   || [ ! -x .cache/toxiproxy/bin/toxiproxy-server ]; then
  command -v go >/dev/null || { echo "install-deps: Go is needed to build Toxiproxy" >&2; exit 1; }
  echo "install-deps: building toxiproxy $TOXIPROXY_VERSION" >&2
  rm -rf .cache/toxiproxy/build
  mkdir -p .cache/toxiproxy/build .cache/toxiproxy/bin
  GOBIN="$PWD/.cache/toxiproxy/build" GOFLAGS=-buildvcs=false \
    go install "github.com/Shopify/toxiproxy/v2/cmd/server@$TOXIPROXY_VERSION" \
               "github.com/Shopify/toxiproxy/v2/cmd/cli@$TOXIPROXY_VERSION"
  mv .cache/toxiproxy/build/server .cache/toxiproxy/bin/toxiproxy-server
  mv .cache/toxiproxy/build/cli .cache/toxiproxy/bin/toxiproxy-cli
  rm -rf .cache/toxiproxy/build
  echo "$TOXIPROXY_VERSION" > .cache/toxiproxy/bin/VERSION
fi

# Jaeger for the local stack's traces (ledgerctl up starts it when the binary exists), built once
# into .cache/jaeger/bin from the Go module proxy. `go install module@version` refuses a module
# whose go.mod has replace directives, as Jaeger's has, so a throw-away module under
# .cache/jaeger/src pins it as a tool and builds it from there.
JAEGER_VERSION=v1.76.0
if [ "$(cat .cache/jaeger/bin/VERSION 2>/dev/null)" != "$JAEGER_VERSION" ] \
   || [ ! -x .cache/jaeger/bin/jaeger ]; then
  command -v go >/dev/null || { echo "install-deps: Go is needed to build Jaeger" >&2; exit 1; }
  echo "install-deps: building jaeger $JAEGER_VERSION (several minutes, once)" >&2
  rm -rf .cache/jaeger/src
  mkdir -p .cache/jaeger/src .cache/jaeger/bin
  (cd .cache/jaeger/src \
    && go mod init jaeger-build >/dev/null 2>&1 \
    && GOFLAGS=-buildvcs=false go get -tool "github.com/jaegertracing/jaeger/cmd/jaeger@$JAEGER_VERSION" \
    && GOFLAGS=-buildvcs=false go build -o ../bin/jaeger github.com/jaegertracing/jaeger/cmd/jaeger)
  rm -rf .cache/jaeger/src
  echo "$JAEGER_VERSION" > .cache/jaeger/bin/VERSION
fi

# Terraform 1.7 or newer (`terraform test`, `mock_provider`) runs the environments and the checks.
# A machine without it gets OpenTofu, built from the Go module proxy (about 13 minutes on two
# cores, once: the binary is cached), under the name `terraform` on PATH for what follows.
TOFU_VERSION=v1.12.6
terraform_ok() {
  local major minor
  read -r major minor < <(terraform version 2>/dev/null | sed -n '1s/^Terraform v\([0-9]*\)\.\([0-9]*\).*/\1 \2/p')
  [ -n "${major:-}" ] && { [ "$major" -gt 1 ] || { [ "$major" -eq 1 ] && [ "$minor" -ge 7 ]; }; }
}
if ! terraform_ok; then
  if [ "$(cat .cache/tofu/VERSION 2>/dev/null)" != "$TOFU_VERSION" ] || [ ! -x .cache/tofu/bin/tofu ]; then
    command -v go >/dev/null || { echo "install-deps: no Terraform 1.7+ and no Go to build OpenTofu" >&2; exit 1; }
    echo "install-deps: no Terraform 1.7+; building OpenTofu $TOFU_VERSION (about 13 minutes)" >&2
    tofu_src=$(go mod download -json "github.com/opentofu/opentofu@$TOFU_VERSION" \
      | sed -n 's/^[[:space:]]*"Dir": "\(.*\)",$/\1/p')
    [ -d "$tofu_src" ] || { echo "install-deps: go mod download of OpenTofu $TOFU_VERSION failed" >&2; exit 1; }
    mkdir -p .cache/tofu/bin
    (cd "$tofu_src" && GOFLAGS=-buildvcs=false go build -o "$OLDPWD/.cache/tofu/bin/tofu" ./cmd/tofu)
    ln -sf tofu .cache/tofu/bin/terraform
    echo "$TOFU_VERSION" > .cache/tofu/VERSION
  fi
  export PATH="$PWD/.cache/tofu/bin:$PATH"
fi
