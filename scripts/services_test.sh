#!/usr/bin/env bash
# Tests of scripts/services.sh against the real apt-get and the real
# services: `make test` runs it (after `services.sh up`).
#
#   1. Another process holds the locks of the package lists and of dpkg's
#      frontend, as a running `apt-get update && apt-get install` does:
#      installing waits for them, SVC_APT_LOCK_TIMEOUT seconds, then fails
#      naming the process that holds them. Then the same with dpkg's
#      frontend lock alone, as a running `apt-get install` holds it: apt-get
#      update goes through, the install waits and fails.
#   2. The lock is released while installing waits: the install goes on and
#      succeeds.
#   3. With every service up, `services.sh up` leaves them alone, installs
#      nothing and returns quickly.
#
# The locks are held as apt and dpkg hold them, with an fcntl (POSIX) record
# lock, taken by a python3 process: flock(1) takes a BSD lock, which Linux
# keeps apart from fcntl locks, so apt-get does not even see it. The tests
# install curl, which is there already (--no-upgrade: nothing changes), so
# that apt-get takes its locks; they hold the real locks for a few seconds,
# and need root. Without root (or python3) they skip, unless
# BATCHER_SERVICES=1, when they fail.
set -uo pipefail

HERE=$(cd "$(dirname "$0")" && pwd)
# shellcheck source=services.sh
. "$HERE/services.sh" # the functions only
set +e                # the tests look at status codes themselves

failures=0
fail() {
  echo "FAIL: $*" >&2
  failures=$((failures + 1))
}
skip() {
  if [ "${BATCHER_SERVICES:-}" = 1 ]; then
    echo "FAIL: cannot run with BATCHER_SERVICES=1: $*" >&2
    exit 1
  fi
  echo "SKIP: $*" >&2
  exit 0
}

[ "$(id -u)" = 0 ] || skip "the lock tests need root: apt-get takes its locks only as root"
command -v python3 >/dev/null || skip "python3 is needed to hold an fcntl lock"

LOCK=/var/lib/dpkg/lock-frontend
LISTS_LOCK=/var/lib/apt/lists/lock
TMP=$(mktemp -d)
holder=
release_lock() {
  if [ -n "$holder" ]; then
    kill "$holder" 2>/dev/null
    wait "$holder" 2>/dev/null
    holder=
  fi
}
trap 'release_lock; rm -rf "$TMP"' EXIT

# hold_lock SECONDS [FILE...]: hold the FILEs' locks ($LISTS_LOCK and $LOCK
# if none is named) from a background python3 for SECONDS, and return once
# it holds them; its pid is in $holder.
hold_lock() {
  local secs=$1
  shift
  [ $# -gt 0 ] || set -- "$LISTS_LOCK" "$LOCK"
  rm -f "$TMP/locked"
  python3 -c '
import fcntl, sys, time
files = [open(name, "a") for name in sys.argv[3:]]
for f in files:
    fcntl.lockf(f, fcntl.LOCK_EX)
open(sys.argv[1], "w").write("locked")
time.sleep(float(sys.argv[2]))
' "$TMP/locked" "$secs" "$@" &
  holder=$!
  for _ in $(seq 1 300); do
    [ -s "$TMP/locked" ] && return 0
    sleep 0.1
  done
  fail "python3 (pid $holder) did not take the locks of $* in 30 s"
  return 1
}

# install ARGS: install_missing, with curl as the only missing package and
# the npm packages taken as installed, in a subshell (it exits on failure);
# its status in $rc, its stderr in $TMP/err, its time in $took (seconds).
install() {
  local t
  t=$(now_ms)
  (
    missing_packages() { echo curl; }
    node_pkg_ok() { return 0; }
    install_missing
  ) >"$TMP/out" 2>"$TMP/err"
  rc=$?
  took=$(secs_since "$t")
}

seconds() { echo "${1%.*}"; } # "12.34" -> 12

# 1. The lock stays held: wait the timeout, then fail naming the holder.
if hold_lock 600; then
  SVC_APT_LOCK_TIMEOUT=5 install
  echo "1. locks held throughout, timeout 5 s: status $rc after ${took}s; stderr:" >&2
  sed 's/^/     /' "$TMP/err" >&2
  [ "$rc" != 0 ] || fail "1: install succeeded while the locks were held"
  [ "$(seconds "$took")" -ge 5 ] || fail "1: failed after ${took}s, before the 5 s timeout: it did not wait for the locks"
  grep -q "still held by .*pid $holder (python3) on $LOCK" "$TMP/err" ||
    fail "1: the failure does not name the holder, pid $holder (python3), and the lock"
  release_lock
fi

# 1b. dpkg's frontend lock alone: update goes through, install waits for it
# (apt's DPkg::Lock::Timeout) and fails.
if hold_lock 600 "$LOCK"; then
  SVC_APT_LOCK_TIMEOUT=5 install
  echo "1b. frontend lock held throughout, timeout 5 s: status $rc after ${took}s; stderr:" >&2
  sed 's/^/     /' "$TMP/err" >&2
  [ "$rc" != 0 ] || fail "1b: install succeeded while $LOCK was held"
  grep -q "apt-get install failed (status [0-9]*): after waiting 5s, .*still held by pid $holder (python3) on $LOCK" "$TMP/err" ||
    fail "1b: the install's failure does not name the holder, pid $holder (python3) on $LOCK"
  release_lock
fi

# 2. The locks are released after 5 s: the install waits for them and
# succeeds.
if hold_lock 5; then
  waited_for=$holder
  SVC_APT_LOCK_TIMEOUT=120 install
  echo "2. locks released after 5 s, timeout 120 s: status $rc after ${took}s; stderr:" >&2
  sed 's/^/     /' "$TMP/err" >&2
  [ "$rc" = 0 ] || fail "2: install failed (status $rc) although the locks were released after 5 s"
  [ "$(seconds "$took")" -ge 4 ] || fail "2: done after ${took}s, while the locks were held for 5 s"
  grep -q "held by pid $waited_for (python3) on $LISTS_LOCK; pid $waited_for (python3) on $LOCK; apt-get waits for it, if it needs it, up to 120s" "$TMP/err" ||
    fail "2: installing did not say that it waits for pid $waited_for (python3)"
  release_lock
fi

# 3. Every service is up (make test ran `up` before): `up` again leaves them
# alone, installs nothing, and returns at once.
t=$(now_ms)
"$HERE/services.sh" up >"$TMP/out" 2>"$TMP/err"
rc=$?
took=$(secs_since "$t")
echo "3. services.sh up with every service up: status $rc after ${took}s" >&2
[ "$rc" = 0 ] || { fail "3: up failed (status $rc)"; cat "$TMP/err" >&2; }
for name in "${SERVICES[@]}"; do
  grep -q "$name: already answering on .*left alone" "$TMP/err" || fail "3: up did not leave $name alone"
done
if grep -Eq "apt-get|npm install|started, pid" "$TMP/err"; then
  fail "3: up installed or started something although every service was up"
  cat "$TMP/err" >&2
fi
# Generous: it takes about a second; a loaded machine may stretch that.
[ "$(seconds "$took")" -lt 30 ] || fail "3: up took ${took}s with every service up"

if [ "$failures" -gt 0 ]; then
  echo "services_test: $failures failure(s)" >&2
  exit 1
fi
echo "services_test: ok" >&2
