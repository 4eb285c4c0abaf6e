#!/usr/bin/env bash
# A private Docker engine and the images the containers test backend needs, with no registry:
#   scripts/containers.sh up              install docker.io and debootstrap if missing, start the
#                                         engine (or reuse it), build the engine images if missing;
#                                         the last line printed is `export DOCKER_HOST=unix://...`
#   scripts/containers.sh images [--debug]
#                                         our services' images from the release binaries (or,
#                                         with --debug, the debug ones, debug info stripped),
#                                         tagged by git commit and `latest` (the engine must be up)
#   scripts/containers.sh down [--purge]  stop every container of this engine, then the engine;
#                                         images stay for the next `up` (--purge deletes them too)
#
# Images (all from one `debootstrap --variant=minbase bookworm` root filesystem, Debian's mirror):
#   ledger/base:bookworm   minbase + ca-certificates: what our release binaries need (libc, libm,
#                          libgcc_s, libz are in minbase)
#   ledger/postgres:15     + Debian's postgresql-15, no cluster (testkit runs initdb)
#   ledger/kafka:<ver>     + openjdk-17-jre-headless and the broker jars of kafka/pom.xml in
#                          /opt/kafka/libs (the jars the local backend runs; <ver> is the pom's,
#                          4.4.0 today)
# The engine is started as the issue found it works here: no iptables, no bridge. Containers use
# the host network, so every port stays on loopback as the engines bind it.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD

# Under .state, not .devstack: `ledgerctl down --purge` deletes .devstack whole, which must not
# pull a running engine's data root away. Both are in .gitignore.
STATE=$ROOT/.state/docker
SOCK=$STATE/docker.sock
DATA=$STATE/data
# The root filesystem tarball is a download cache like the Kafka jars: rebuilt only when missing.
CACHE=$ROOT/.cache/images
BASE_TAR=$CACHE/bookworm-minbase.tar
MIRROR=http://deb.debian.org/debian
SUITE=bookworm
# The image's tag is the broker version kafka/pom.xml names (testkit reads the same pom).
KAFKA_VERSION=$(sed -n 's:.*<kafka.version>\(.*\)</kafka.version>.*:\1:p' kafka/pom.xml)
[ -n "$KAFKA_VERSION" ] || { echo "containers: kafka/pom.xml names no <kafka.version>" >&2; exit 1; }
# Bump when an image's recipe below changes: images carrying another value are rebuilt.
RECIPE=1
export DOCKER_HOST=unix://$SOCK
# The legacy builder: BuildKit wants a buildx plugin the CLI may lack, and nothing here needs it.
export DOCKER_BUILDKIT=0

log() { echo "containers: $*" >&2; }
die() { log "$*"; exit 1; }

# A unix socket path must fit sun_path (108 bytes with its NUL); containerd's lives in the exec root.
for sock in "$SOCK" "$STATE/exec/containerd/containerd.sock"; do
  [ "${#sock}" -lt 100 ] || die "socket path too long for a unix socket (${#sock} bytes): $sock; clone the repository under a shorter path"
done

install_missing() {
  local need=()
  command -v dockerd >/dev/null || need+=(docker.io)
  command -v debootstrap >/dev/null || need+=(debootstrap)
  command -v docker >/dev/null || need+=(docker.io)
  [ ${#need[@]} -eq 0 ] && return
  log "installing ${need[*]}"
  local sudo=""
  [ "$(id -u)" -eq 0 ] || sudo="sudo"
  export DEBIAN_FRONTEND=noninteractive
  $sudo apt-get update -qq
  # Where services start on install (systemd), docker.io would start the system's own engine, with
  # a bridge and iptables rules; a policy-rc.d refusing every start for the install prevents it.
  # Ours is private, on loopback.
  local policy=/usr/sbin/policy-rc.d made=""
  if [ ! -e "$policy" ]; then
    printf '#!/bin/sh\nexit 101\n' | $sudo tee "$policy" >/dev/null
    $sudo chmod +x "$policy"
    made=1
  fi
  local rc=0
  $sudo apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null || rc=$?
  [ -z "$made" ] || $sudo rm -f "$policy"
  [ "$rc" -eq 0 ] || die "apt-get install ${need[*]} failed"
}

# Runs a command showing its output only when it fails (the CLI warns on every legacy build).
quiet() {
  local out
  out=$("$@" 2>&1) || { echo "$out" >&2; die "failed: $*"; }
}

engine_answers() { docker info >/dev/null 2>&1; }

# The pid in our pid file, if that process is a dockerd of this data root (a pid alone may have been
# reused by anything since).
engine_pid() {
  local pid
  pid=$(cat "$STATE/dockerd.pid" 2>/dev/null) || return 1
  [ -n "$pid" ] && tr '\0' ' ' <"/proc/$pid/cmdline" 2>/dev/null | grep -q -- "--data-root $DATA " || return 1
  echo "$pid"
}

engine_up() {
  mkdir -p "$STATE"
  if engine_answers; then
    log "engine already running ($DOCKER_HOST)"
    return
  fi
  if ! engine_pid >/dev/null; then
    # Left by an engine that died: dockerd refuses to start over a stale pid file.
    rm -f "$STATE/dockerd.pid" "$SOCK"
    [ "$(id -u)" -eq 0 ] || die "dockerd needs root"
    log "starting dockerd (log: $STATE/dockerd.log)"
    # setsid: the engine outlives this script and is not hit by a Ctrl-C meant for a test run.
    setsid dockerd --iptables=false --ip6tables=false --bridge=none \
      --data-root "$DATA" --exec-root "$STATE/exec" --pidfile "$STATE/dockerd.pid" \
      -H "unix://$SOCK" </dev/null >>"$STATE/dockerd.log" 2>&1 &
  fi
  local i
  for i in $(seq 1 120); do
    engine_answers && return
    sleep 0.5
  done
  tail -n 20 "$STATE/dockerd.log" >&2 || true
  die "dockerd did not answer within 60 s"
}

engine_down() {
  local pid ids
  if engine_answers; then
    ids=$(docker ps -q)
    if [ -n "$ids" ]; then
      log "stopping $(echo "$ids" | wc -w) container(s)"
      # shellcheck disable=SC2086 # one id per word
      docker stop -t 10 $ids >/dev/null
    fi
    # The test harness's containers are throw-away (it never reuses one): remove them.
    ids=$(docker ps -aq --filter label=ledger.testkit.owner)
    # shellcheck disable=SC2086
    [ -z "$ids" ] || docker rm -f -v $ids >/dev/null
  fi
  if pid=$(engine_pid); then
    log "stopping dockerd (pid $pid)"
    kill -TERM "$pid"
    local i
    for i in $(seq 1 60); do
      [ -d "/proc/$pid" ] || break
      sleep 0.5
    done
    if [ -d "/proc/$pid" ]; then
      log "dockerd still running after 30 s: SIGKILL"
      kill -KILL "$pid" || true
    fi
  fi
  rm -f "$SOCK" "$STATE/dockerd.pid"
  # dockerd leaves its network namespace bind-mounted in the exec root (nsfs on exec/netns/default)
  # when it stops; left there, it makes `rm -rf` of the clone fail with "Device or resource busy".
  local mounted
  mounted=$(findmnt -rn -o TARGET | grep -F "$STATE/" | sort -r || true)
  for m in $mounted; do umount "$m" 2>/dev/null || umount -l "$m" 2>/dev/null || log "could not unmount $m"; done
}

# --- images ------------------------------------------------------------------------------------

image_current() { # tag: exists and was built by this recipe (and these inputs)
  [ "$(docker image inspect -f '{{ index .Config.Labels "ledger.recipe" }}' "$1" 2>/dev/null)" = "$2" ]
}

# Everything a derived root filesystem mounts is unmounted on any exit.
MOUNTED=()
WORK=()
cleanup() {
  local m w
  for m in "${MOUNTED[@]}"; do umount "$m" 2>/dev/null || umount -l "$m" 2>/dev/null || true; done
  for w in "${WORK[@]}"; do rm -rf "$w"; done
}
trap cleanup EXIT

# Sets `dir` to a fresh folder on the same disk as the cache, removed at exit. (Not echoed: a
# command substitution's subshell could not record it for the clean-up.)
new_work_dir() {
  mkdir -p "$CACHE"
  dir=$(mktemp -d "$CACHE/work.XXXXXX")
  WORK+=("$dir")
  # It becomes a root filesystem's `/`, which every user must be able to traverse (mktemp: 0700).
  chmod 755 "$dir"
}

# The one debootstrap: minbase, Debian's mirror and security updates, apt lists fresh (the derived
# images install from them without another download of the indexes), docs never unpacked.
base_rootfs() {
  [ -s "$BASE_TAR" ] && return
  local dir
  new_work_dir
  log "debootstrap --variant=minbase $SUITE (once; cached in $BASE_TAR)"
  debootstrap --variant=minbase "$SUITE" "$dir" "$MIRROR" >"$CACHE/debootstrap.log" 2>&1 \
    || { tail -n 20 "$CACHE/debootstrap.log" >&2; die "debootstrap failed (log: $CACHE/debootstrap.log)"; }
  cat >"$dir/etc/apt/sources.list" <<EOF
deb $MIRROR $SUITE main
deb $MIRROR $SUITE-updates main
deb http://deb.debian.org/debian-security $SUITE-security main
EOF
  cat >"$dir/etc/dpkg/dpkg.cfg.d/01-no-docs" <<'EOF'
# Images carry no documentation; licences stay.
path-exclude /usr/share/doc/*
path-include /usr/share/doc/*/copyright
path-exclude /usr/share/man/*
path-exclude /usr/share/info/*
path-exclude /usr/share/lintian/*
path-exclude /usr/share/locale/*
EOF
  cat >"$dir/etc/apt/apt.conf.d/01-small" <<'EOF'
APT::Install-Recommends "false";
APT::Install-Suggests "false";
EOF
  in_root "$dir" apt-get update -qq
  in_root "$dir" apt-get -y -qq upgrade
  in_root "$dir" apt-get clean
  umount "$dir/proc"
  rm -rf "$dir"/usr/share/doc/* "$dir"/usr/share/man/* "$dir"/usr/share/info/* "$dir"/usr/share/locale/*
  tar -C "$dir" --one-file-system --numeric-owner -cf "$BASE_TAR.partial" .
  mv "$BASE_TAR.partial" "$BASE_TAR"
}

# Runs a command in a root filesystem with /proc mounted (Java's post-install scripts run java) and
# services kept from starting (policy-rc.d).
in_root() {
  local dir=$1
  shift
  if ! mountpoint -q "$dir/proc"; then
    mount -t proc proc "$dir/proc"
    MOUNTED+=("$dir/proc")
  fi
  printf '#!/bin/sh\nexit 101\n' >"$dir/usr/sbin/policy-rc.d"
  chmod +x "$dir/usr/sbin/policy-rc.d"
  DEBIAN_FRONTEND=noninteractive LC_ALL=C chroot "$dir" "$@"
  rm -f "$dir/usr/sbin/policy-rc.d"
}

# Unpacks the base root filesystem into a work folder and installs `packages` into it.
derive() {
  local dir=$1
  shift
  tar -C "$dir" -xpf "$BASE_TAR"
  if [ $# -gt 0 ]; then
    in_root "$dir" apt-get install -y -qq "$@" >/dev/null
  fi
}

# Strips what an image never uses, then imports the folder as `tag` with the given changes.
import_rootfs() {
  local dir=$1 tag=$2 recipe=$3
  shift 3
  in_root "$dir" apt-get clean
  umount "$dir/proc"
  rm -rf "$dir"/var/lib/apt/lists/* "$dir"/var/cache/apt/* "$dir"/var/cache/debconf/*-old \
    "$dir"/var/log/* "$dir"/tmp/* "$dir"/usr/share/doc/*/changelog* "$dir"/usr/share/man/*
  local changes=(--change "LABEL ledger.recipe=$recipe" --change "LABEL ledger.built-by=scripts/containers.sh")
  local c
  for c in "$@"; do changes+=(--change "$c"); done
  tar -C "$dir" --one-file-system --numeric-owner -c . | docker import "${changes[@]}" - "$tag" >/dev/null
  log "built $tag ($(docker image inspect -f '{{ .Size }}' "$tag" | numfmt --to=iec))"
}

DEFAULT_PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin

build_base() {
  local tag=ledger/base:bookworm
  image_current "$tag" "$RECIPE" && return
  base_rootfs
  local dir
  new_work_dir
  derive "$dir" ca-certificates
  import_rootfs "$dir" "$tag" "$RECIPE" "ENV PATH=$DEFAULT_PATH"
}

build_postgres() {
  local tag=ledger/postgres:15
  image_current "$tag" "$RECIPE" && return
  base_rootfs
  local dir
  new_work_dir
  tar -C "$dir" -xpf "$BASE_TAR"
  # No default cluster: the data folder is the container's, made by initdb at its first start.
  mkdir -p "$dir/etc/postgresql-common/createcluster.d"
  echo "create_main_cluster = false" >"$dir/etc/postgresql-common/createcluster.d/no-main-cluster.conf"
  in_root "$dir" apt-get install -y -qq postgresql-15 >/dev/null
  import_rootfs "$dir" "$tag-rootfs" "$RECIPE" "ENV PATH=/usr/lib/postgresql/15/bin:$DEFAULT_PATH" \
    "USER postgres" "WORKDIR /var/lib/postgresql"
  # STOPSIGNAL SIGINT: `docker stop` is a fast shutdown, as ledgerctl's stop (SIGTERM would wait
  # for every client to disconnect). `docker import` cannot set it; a one-line build adds it.
  printf 'FROM %s\nSTOPSIGNAL SIGINT\n' "$tag-rootfs" | quiet docker build -q -t "$tag" -
  docker rmi "$tag-rootfs" >/dev/null
}

# The broker jars of kafka/pom.xml, as ledgerctl and testkit get them (ledgerctl/src/kafka.rs,
# `KafkaJars::ensure`): `mvn dependency:copy-dependencies` into .cache/kafka/libs, stamped with the
# pom it came from, under the same lock file, so all three share one cache.
kafka_jars() {
  local cache=$ROOT/.cache/kafka
  mkdir -p "$cache"
  (
    flock 9
    if [ -d "$cache/libs" ] && cmp -s kafka/pom.xml "$cache/libs.pom.xml"; then exit 0; fi
    command -v mvn >/dev/null || die "Maven is needed for the Kafka jars (scripts/install-deps.sh installs it)"
    log "fetching the Kafka jars with Maven (kafka/pom.xml)"
    local staging=$cache/libs.partial-$$
    rm -rf "$staging"
    mvn -B -f kafka/pom.xml dependency:copy-dependencies -DoutputDirectory="$staging" -DincludeScope=runtime \
      >"$cache/mvn.log" 2>&1 || { rm -rf "$staging"; grep '^\[ERROR\]' "$cache/mvn.log" >&2; die "mvn failed"; }
    rm -rf "$cache/libs"
    mv "$staging" "$cache/libs"
    cp kafka/pom.xml "$cache/libs.pom.xml"
  ) 9>"$cache/libs.lock"
  echo "$cache/libs"
}

build_kafka() {
  local tag=ledger/kafka:$KAFKA_VERSION libs recipe
  libs=$(kafka_jars)
  # The jars are part of the image: another pom is another image.
  recipe="$RECIPE-$(sha256sum kafka/pom.xml | cut -c1-16)"
  image_current "$tag" "$recipe" && return
  base_rootfs
  local dir
  new_work_dir
  tar -C "$dir" -xpf "$BASE_TAR"
  # The JRE's post-install links man pages through update-alternatives and fails without the folder.
  mkdir -p "$dir/usr/share/man/man1"
  in_root "$dir" apt-get install -y -qq openjdk-17-jre-headless >/dev/null
  mkdir -p "$dir/opt/kafka/libs" "$dir/var/lib/kafka"
  cp "$libs"/*.jar "$dir/opt/kafka/libs/"
  import_rootfs "$dir" "$tag" "$recipe" "ENV PATH=$DEFAULT_PATH" "WORKDIR /var/lib/kafka"
}

# Our services, from the binaries of `profile` (release or debug), on ledger/base:bookworm.
# `docker build` of a local FROM image needs no registry; each image adds one layer (the binary)
# to the shared base. The tests' images use the debug binaries their own build already made (a
# release build of the services takes CI's two cores over five minutes); their debug info is
# stripped, as it would be most of a 280 MB binary, and the label says which build it is.
build_services() {
  local profile=$1 commit build_flag=""
  [ "$profile" = release ] && build_flag=" --release"
  commit=$(git rev-parse --short HEAD)
  # Binaries built from uncommitted changes are not that commit's: say so in the tag.
  [ -z "$(git status --porcelain --untracked-files=no)" ] || commit="$commit-dirty"
  local bin dir
  for bin in region-node replicator router reconcile; do
    [ -x "target/$profile/$bin" ] || die "target/$profile/$bin is missing: cargo build$build_flag -p region-node -p replicator -p router -p reconcile --bins"
  done
  build_base
  for bin in region-node replicator router reconcile; do
    new_work_dir
    if [ "$profile" = release ]; then
      cp "target/release/$bin" "$dir/"
    else
      objcopy --strip-debug "target/$profile/$bin" "$dir/$bin"
    fi
    cat >"$dir/Dockerfile" <<EOF
FROM ledger/base:bookworm
COPY $bin /usr/local/bin/$bin
LABEL ledger.commit=$commit
LABEL ledger.profile=$profile
USER 65534:65534
ENTRYPOINT ["/usr/local/bin/$bin"]
EOF
    quiet docker build -q -t "ledger/$bin:$commit" -t "ledger/$bin:latest" "$dir"
    log "built ledger/$bin:$commit (and :latest) from the $profile binary"
  done
}

usage() { echo "usage: scripts/containers.sh up | images [--debug] | down [--purge]" >&2; exit 2; }
[ $# -ge 1 ] || usage
case "$1" in
  up)
    install_missing
    engine_up
    build_base
    build_postgres
    build_kafka
    echo "export DOCKER_HOST=$DOCKER_HOST"
    ;;
  images)
    engine_answers || die "the engine is not running: scripts/containers.sh up"
    case "${2:-}" in
      "") build_services release ;;
      --debug) build_services debug ;;
      *) usage ;;
    esac
    ;;
  down)
    engine_down
    if [ "${2:-}" = "--purge" ]; then
      # Whatever the engine left mounted under its root goes before the folder does.
      grep -o " $STATE/[^ ]*" /proc/mounts | sort -r | while read -r m; do umount -l "$m" || true; done
      rm -rf "$STATE"
      log "deleted $STATE (images included)"
    fi
    ;;
  *) usage ;;
esac
