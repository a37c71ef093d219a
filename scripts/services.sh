#!/usr/bin/env bash
# Bring the real services that the tests use up, down, or report on them.
#
#   scripts/services.sh up       install what is missing, start what is not
#                                answering, wait until every service answers
#   scripts/services.sh down     stop what `up` started (by recorded PIDs)
#   scripts/services.sh status   say which services answer, and who started them
#
# Services, all on 127.0.0.1 (ports overridable with the variables below):
#   ClickHouse 18.16 (Debian)      native $SVC_CLICKHOUSE_PORT (9000), http $SVC_CLICKHOUSE_HTTP_PORT (8123)
#   Cosmos DB SQL-API server       https $SVC_COSMOS_PORT (8081), self-signed; npm @vercel/cosmosdb-server
#                                  behind scripts/cosmos-start.js
#   Azurite blob (npm azurite)     $SVC_AZURITE_PORT (10000), in memory
#   Redis (Debian)                 $SVC_REDIS_PORT (6379), no persistence
#   etcd (Debian)                  $SVC_ETCD_PORT (2379), peer $SVC_ETCD_PEER_PORT (2380)
#
# State (configs, data, logs, PID files) goes under $SERVICES_DIR (default
# <repo>/.services), npm packages under $NODE_DIR (default <repo>/.node); both
# are git-ignored.
#
# `up` is idempotent: a service that already answers on its port is left
# alone, whoever started it, and is not recorded, so `down` never stops it;
# when every service answers, `up` installs nothing and returns at once.
# If a service does not answer in time, `up` exits non-zero, naming it and
# printing the tail of its log. Installing needs root (or password-less sudo).
#
# When another apt-get or dpkg holds the package manager's lock, installing
# waits for it, up to $SVC_APT_LOCK_TIMEOUT seconds (300) for each apt-get
# call, then fails naming the process that holds it. scripts/services_test.sh tests that, and that
# `up` is quick and leaves running services alone.
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/.." && pwd)
SCRIPTS="$ROOT/scripts"
S=${SERVICES_DIR:-$ROOT/.services}
NODE_DIR=${NODE_DIR:-$ROOT/.node}

SVC_CLICKHOUSE_PORT=${SVC_CLICKHOUSE_PORT:-9000}
SVC_CLICKHOUSE_HTTP_PORT=${SVC_CLICKHOUSE_HTTP_PORT:-8123}
SVC_CLICKHOUSE_INTERSERVER_PORT=${SVC_CLICKHOUSE_INTERSERVER_PORT:-9009}
SVC_COSMOS_PORT=${SVC_COSMOS_PORT:-8081}
SVC_AZURITE_PORT=${SVC_AZURITE_PORT:-10000}
SVC_REDIS_PORT=${SVC_REDIS_PORT:-6379}
SVC_ETCD_PORT=${SVC_ETCD_PORT:-2379}
SVC_ETCD_PEER_PORT=${SVC_ETCD_PEER_PORT:-2380}
SVC_READY_TIMEOUT=${SVC_READY_TIMEOUT:-60} # seconds to wait for each service
SVC_APT_LOCK_TIMEOUT=${SVC_APT_LOCK_TIMEOUT:-300} # seconds apt-get waits for another's lock

COSMOS_VERSION=1.0.1
AZURITE_VERSION=3.37.0
SERVICES=(clickhouse cosmos azurite redis etcd)

log() { echo "services: $*" >&2; }
die() { log "FAIL: $*"; exit 1; }
now_ms() { echo $(($(date +%s%N) / 1000000)); }
secs_since() { # start_ms -> "1.23"
  local d=$(($(now_ms) - $1))
  printf '%d.%02d' $((d / 1000)) $((d % 1000 / 10))
}

# ---- probes: does the service answer? -------------------------------------

port_open() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

probe() {
  case $1 in
  clickhouse) curl -sf --max-time 2 "http://127.0.0.1:$SVC_CLICKHOUSE_HTTP_PORT/ping" | grep -q Ok ;;
  cosmos) curl -skf --max-time 2 -o /dev/null "https://127.0.0.1:$SVC_COSMOS_PORT/" ;;
  azurite) # an unauthenticated list is refused with 403: Azurite is up
    [ "$(curl -s --max-time 2 -o /dev/null -w '%{http_code}' "http://127.0.0.1:$SVC_AZURITE_PORT/devstoreaccount1?comp=list")" = 403 ] ;;
  redis) [ "$(redis-cli -h 127.0.0.1 -p "$SVC_REDIS_PORT" ping 2>/dev/null)" = PONG ] ;;
  etcd) ETCDCTL_API=3 etcdctl --endpoints="http://127.0.0.1:$SVC_ETCD_PORT" --command-timeout=2s endpoint health >/dev/null 2>&1 ;;
  esac
}

main_port() {
  case $1 in
  clickhouse) echo "$SVC_CLICKHOUSE_PORT" ;; cosmos) echo "$SVC_COSMOS_PORT" ;; azurite) echo "$SVC_AZURITE_PORT" ;;
  redis) echo "$SVC_REDIS_PORT" ;; etcd) echo "$SVC_ETCD_PORT" ;;
  esac
}

logfile() {
  case $1 in
  clickhouse) echo "$S/clickhouse/log/clickhouse-server.err.log" ;;
  *) echo "$S/$1/$1.log" ;;
  esac
}

# The PID `up` recorded for a service, if that process is still alive and is
# still the program we started (PIDs are reused).
our_pid() {
  local f="$S/$1.pid" p
  [ -f "$f" ] || return 1
  p=$(cat "$f")
  [ -n "$p" ] && kill -0 "$p" 2>/dev/null || return 1
  tr '\0' ' ' <"/proc/$p/cmdline" 2>/dev/null | grep -q -- "$(expected_cmd "$1")" || return 1
  echo "$p"
}

expected_cmd() {
  case $1 in
  clickhouse) echo clickhouse-server ;; cosmos) echo cosmos-start.js ;; azurite) echo azurite-blob ;;
  redis) echo redis-server ;; etcd) echo etcd ;;
  esac
}

# ---- install -------------------------------------------------------------

as_root() {
  if [ "$(id -u)" = 0 ]; then "$@"
  elif command -v sudo >/dev/null && sudo -n true 2>/dev/null; then sudo "$@"
  else die "installing needs root: $* (run as root, or install these by hand)"
  fi
}

# The commands missing here, as the Debian packages that provide them.
missing_packages() {
  command -v clickhouse-server >/dev/null || echo clickhouse-server
  command -v clickhouse-client >/dev/null || echo clickhouse-client
  command -v redis-server >/dev/null || echo redis-server
  command -v redis-cli >/dev/null || echo redis-tools
  command -v etcd >/dev/null || echo etcd-server
  command -v etcdctl >/dev/null || echo etcd-client
  command -v curl >/dev/null || echo curl
  command -v openssl >/dev/null || echo openssl
  command -v node >/dev/null || echo nodejs
  command -v npm >/dev/null || echo npm
}

# The locks apt-get and dpkg take: the frontend lock that a running apt-get
# holds throughout, dpkg's own, and those of the package lists and archives.
APT_LOCKS=(/var/lib/dpkg/lock-frontend /var/lib/dpkg/lock /var/lib/apt/lists/lock /var/cache/apt/archives/lock)

# lock_holders prints, one a line, who holds one of APT_LOCKS: "pid N (name)
# on FILE". apt and dpkg hold them as fcntl (POSIX) record locks, which
# /proc/locks lists with the holder's pid; an open-file-description lock
# (pid -1 there) is put down to the processes that have the file open.
lock_holders() {
  local f ino pid p fd
  for f in "${APT_LOCKS[@]}"; do
    [ -e "$f" ] || continue
    ino=$(stat -c %i "$f") || continue
    # "1: POSIX  ADVISORY  WRITE 1234 fe:00:398608 0 EOF"; a waiter's line
    # has "->" after the number and is skipped.
    for pid in $(awk -v ino="$ino" '$2 != "->" { n = split($6, a, ":"); if (a[n] == ino) print $5 }' /proc/locks 2>/dev/null | sort -u); do
      if [ "$pid" -gt 0 ] 2>/dev/null; then
        echo "pid $pid ($(cat "/proc/$pid/comm" 2>/dev/null || echo gone)) on $f"
      else
        for p in /proc/[0-9]*; do
          for fd in "$p"/fd/*; do
            if [ "$(readlink "$fd" 2>/dev/null)" = "$f" ]; then
              echo "pid ${p#/proc/} ($(cat "$p/comm" 2>/dev/null || echo gone)) on $f"
              break
            fi
          done
        done
      fi
    done
  done | sort -u
}

# apt_get ARGS...: apt-get ARGS as root, waiting up to SVC_APT_LOCK_TIMEOUT
# seconds in all for the locks that another apt-get or dpkg holds. apt's
# DPkg::Lock::Timeout makes it wait for dpkg's locks itself, but apt-get
# update gives up at once on the lists' lock: so a try that was locked out
# (someone holds a lock, or apt-get said so) is tried again, quietly, until
# the time is up. On failure it says who still holds a lock, if anyone does.
apt_get() {
  local holders rc deadline left err
  deadline=$(($(now_ms) + SVC_APT_LOCK_TIMEOUT * 1000))
  holders=$(lock_holders)
  if [ -n "$holders" ]; then
    log "apt-get $1: a package manager's lock is held by $(echo "$holders" | paste -sd ';' | sed 's/;/; /g'); apt-get waits for it, if it needs it, up to ${SVC_APT_LOCK_TIMEOUT}s"
  fi
  err=$(mktemp)
  while :; do
    left=$(((deadline - $(now_ms) + 999) / 1000)) # seconds, rounded up
    rc=0
    as_root apt-get -o DPkg::Lock::Timeout="$((left > 0 ? left : 0))" "$@" 2>"$err" || rc=$?
    holders=
    if [ "$rc" != 0 ]; then holders=$(lock_holders); fi
    # Locked out: someone holds a lock now, or did when apt-get tried.
    if [ "$rc" != 0 ] && { [ -n "$holders" ] || grep -qiE 'could not get lock|unable to (acquire|lock)' "$err"; } &&
      [ "$(now_ms)" -lt "$deadline" ]; then
      sleep 1
      continue
    fi
    cat "$err" >&2
    rm -f "$err"
    [ "$rc" = 0 ] && return 0
    if [ -n "$holders" ]; then
      log "apt-get $1 failed (status $rc): after waiting ${SVC_APT_LOCK_TIMEOUT}s, a package manager's lock is still held by $(echo "$holders" | paste -sd ';' | sed 's/;/; /g') (let it finish, or set SVC_APT_LOCK_TIMEOUT to wait longer)"
    fi
    return "$rc"
  done
}

install_missing() {
  local pkgs t
  mapfile -t pkgs < <(missing_packages)
  if [ ${#pkgs[@]} -gt 0 ]; then
    t=$(now_ms)
    log "apt-get install ${pkgs[*]}"
    export DEBIAN_FRONTEND=noninteractive
    apt_get update -qq || die "apt-get update failed"
    apt_get install -y -qq --no-install-recommends --no-upgrade "${pkgs[@]}" ca-certificates >/dev/null ||
      die "apt-get install ${pkgs[*]} failed"
    log "installed ${pkgs[*]} in $(secs_since "$t")s"
  fi
  install_node_packages
}

# The npm packages live in this checkout ($NODE_DIR): tests start private
# Azurite servers from them (cmd/sharedsim), so they are installed even when
# every shared service already answers, started by another checkout.
install_node_packages() {
  local t
  if ! node_pkg_ok @vercel/cosmosdb-server "$COSMOS_VERSION" || ! node_pkg_ok azurite "$AZURITE_VERSION"; then
    t=$(now_ms)
    mkdir -p "$NODE_DIR"
    log "npm install @vercel/cosmosdb-server@$COSMOS_VERSION azurite@$AZURITE_VERSION into $NODE_DIR"
    npm install --prefix "$NODE_DIR" --no-audit --no-fund --loglevel=error \
      "@vercel/cosmosdb-server@$COSMOS_VERSION" "azurite@$AZURITE_VERSION" >&2 || die "npm install failed"
    log "npm packages installed in $(secs_since "$t")s"
  fi
}

node_pkg_ok() { # name version
  local f="$NODE_DIR/node_modules/$1/package.json"
  [ -f "$f" ] && grep -q "\"version\": *\"$2\"" "$f"
}

# ---- start ---------------------------------------------------------------

# spawn NAME LOG CMD...: start CMD detached (own session, no terminal) and
# record its PID in $S/NAME.pid. The PID is written by the process itself
# just before it execs CMD, so it is the service's own.
spawn() {
  local name=$1 out=$2
  shift 2
  rm -f "$S/$name.pid"
  setsid sh -c 'echo $$ > "$0"; exec "$@"' "$S/$name.pid" "$@" >"$out" 2>&1 </dev/null &
  for _ in $(seq 1 50); do [ -s "$S/$name.pid" ] && return 0; sleep 0.02; done
  die "$name: could not start $1"
}

start_clickhouse() {
  local d="$S/clickhouse"
  mkdir -p "$d/data" "$d/log"
  cp /etc/clickhouse-server/users.xml "$d/users.xml"
  # The packaged config, with every path under $d, our ports, and 127.0.0.1 only.
  sed -e "s#/var/lib/clickhouse/#$d/data/#g" \
    -e "s#/var/log/clickhouse-server/#$d/log/#g" \
    -e "s#<http_port>8123</http_port>#<http_port>$SVC_CLICKHOUSE_HTTP_PORT</http_port>#" \
    -e "s#<tcp_port>9000</tcp_port>#<tcp_port>$SVC_CLICKHOUSE_PORT</tcp_port>\n    <listen_host>127.0.0.1</listen_host>#" \
    -e "s#<interserver_http_port>9009</interserver_http_port>#<interserver_http_port>$SVC_CLICKHOUSE_INTERSERVER_PORT</interserver_http_port>#" \
    /etc/clickhouse-server/config.xml >"$d/config.xml"
  spawn clickhouse "$d/log/stdout.log" /usr/sbin/clickhouse-server --config-file="$d/config.xml"
}

start_cosmos() {
  local d="$S/cosmos"
  mkdir -p "$d"
  if [ ! -f "$d/cert.pem" ]; then
    openssl req -x509 -newkey rsa:2048 -nodes -days 3650 -subj /CN=localhost \
      -addext "subjectAltName=IP:127.0.0.1,DNS:localhost" \
      -keyout "$d/key.pem" -out "$d/cert.pem" 2>/dev/null || die "cosmos: openssl could not make a certificate"
  fi
  COSMOS_CERT_DIR="$d" NODE_PATH="$NODE_DIR/node_modules" \
    spawn cosmos "$d/cosmos.log" node "$SCRIPTS/cosmos-start.js" "$SVC_COSMOS_PORT" 127.0.0.1
}

start_azurite() {
  local d="$S/azurite"
  mkdir -p "$d"
  # --inMemoryPersistence cannot be combined with --location: run it in $d
  # so that whatever it writes (debug logs) lands there.
  (cd "$d" && spawn azurite "$d/azurite.log" "$NODE_DIR/node_modules/.bin/azurite-blob" \
    --blobHost 127.0.0.1 --blobPort "$SVC_AZURITE_PORT" --inMemoryPersistence \
    --disableTelemetry --skipApiVersionCheck --loose)
}

start_redis() {
  local d="$S/redis"
  mkdir -p "$d"
  spawn redis "$d/redis.log" redis-server --bind 127.0.0.1 --port "$SVC_REDIS_PORT" \
    --save '' --appendonly no --dir "$d" --daemonize no
}

start_etcd() {
  local d="$S/etcd"
  rm -rf "$d/data"
  mkdir -p "$d"
  spawn etcd "$d/etcd.log" etcd --name ci --data-dir "$d/data" --logger=zap --log-level=warn \
    --listen-client-urls "http://127.0.0.1:$SVC_ETCD_PORT" --advertise-client-urls "http://127.0.0.1:$SVC_ETCD_PORT" \
    --listen-peer-urls "http://127.0.0.1:$SVC_ETCD_PEER_PORT" --initial-advertise-peer-urls "http://127.0.0.1:$SVC_ETCD_PEER_PORT" \
    --initial-cluster "ci=http://127.0.0.1:$SVC_ETCD_PEER_PORT" --initial-cluster-state new
}

# ---- commands ------------------------------------------------------------

cmd_up() {
  local t0 name to_start=() started=() waiting=() failed=()
  t0=$(now_ms)
  mkdir -p "$S"
  for name in "${SERVICES[@]}"; do
    if probe "$name"; then
      log "$name: already answering on 127.0.0.1:$(main_port "$name"), left alone"
    elif our_pid "$name" >/dev/null || port_open "$(main_port "$name")"; then
      log "$name: port $(main_port "$name") is taken but not answering yet; waiting for it"
      waiting+=("$name")
    else
      to_start+=("$name")
    fi
  done
  # Install the Debian packages only when something must be started:
  # services that answer need nothing here (a probe's own client missing
  # makes its service look down). The npm packages are always checked.
  if [ ${#to_start[@]} -gt 0 ]; then
    install_missing
  else
    install_node_packages
  fi
  for name in "${to_start[@]}"; do
    "start_$name"
    log "$name: started, pid $(cat "$S/$name.pid")"
    started+=("$name")
    waiting+=("$name")
  done
  for name in "${waiting[@]}"; do
    local t p ok=
    t=$(now_ms)
    while [ $(($(now_ms) - t)) -lt $((SVC_READY_TIMEOUT * 1000)) ]; do
      if probe "$name"; then ok=1; break; fi
      if [ -f "$S/$name.pid" ] && ! our_pid "$name" >/dev/null && [[ " ${started[*]} " == *" $name "* ]]; then
        break # ours, and it died
      fi
      sleep 0.1
    done
    if [ -n "$ok" ]; then
      log "$name: ready after $(secs_since "$t")s"
    else
      failed+=("$name")
      p=$(our_pid "$name" || echo "none alive")
      log "FAIL: $name does not answer on 127.0.0.1:$(main_port "$name") after $(secs_since "$t")s (pid: $p)"
      if [ -f "$(logfile "$name")" ]; then
        log "---- last lines of $(logfile "$name") ----"
        tail -n 30 "$(logfile "$name")" >&2 || true
      fi
      if [ "$name" = clickhouse ] && [ -f "$S/clickhouse/log/stdout.log" ]; then
        tail -n 10 "$S/clickhouse/log/stdout.log" >&2 || true
      fi
    fi
  done
  if [ ${#failed[@]} -gt 0 ]; then
    die "not ready: ${failed[*]}"
  fi
  log "all services ready in $(secs_since "$t0")s (started: ${started[*]:-none})"
}

cmd_down() {
  local name p stopped=0
  for name in "${SERVICES[@]}"; do
    if ! p=$(our_pid "$name"); then
      rm -f "$S/$name.pid"
      continue
    fi
    stopped=$((stopped + 1))
    kill "$p" 2>/dev/null || true
    for _ in $(seq 1 150); do kill -0 "$p" 2>/dev/null || break; sleep 0.1; done
    if kill -0 "$p" 2>/dev/null; then
      log "$name (pid $p) did not stop in 15s; killing it"
      kill -9 "$p" 2>/dev/null || true
    fi
    rm -f "$S/$name.pid"
    log "stopped $name (pid $p)"
  done
  [ "$stopped" -gt 0 ] || log "nothing that this script started is running (services started otherwise are left alone)"
}

cmd_status() {
  local name p down=0 who
  for name in "${SERVICES[@]}"; do
    if p=$(our_pid "$name"); then who="started by this script, pid $p"; else who="not started by this script"; fi
    if probe "$name"; then
      printf '%-11s up    127.0.0.1:%-6s (%s)\n' "$name" "$(main_port "$name")" "$who"
    else
      printf '%-11s DOWN  127.0.0.1:%-6s (%s)\n' "$name" "$(main_port "$name")" "$who"
      down=1
    fi
  done
  return $down
}

# Sourced (by scripts/services_test.sh): define the functions, run nothing.
if [ "${BASH_SOURCE[0]}" != "$0" ]; then
  return 0
fi

case ${1:-} in
up) cmd_up ;;
down) cmd_down ;;
status) cmd_status ;;
*)
  echo "usage: $0 up|down|status" >&2
  exit 2
  ;;
esac
