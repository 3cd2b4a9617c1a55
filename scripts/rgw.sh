#!/usr/bin/env bash
# A throw-away single-node Ceph cluster with radosgw (a real S3 server) for tests.
#
#   scripts/rgw.sh start  DIR   start mon + memstore osd + radosgw; everything lives in DIR.
#                               Prints (stdout, shell-sourceable, also written to DIR/env):
#                                 RGW_ENDPOINT=http://127.0.0.1:PORT
#                                 AWS_ACCESS_KEY_ID=strata
#                                 AWS_SECRET_ACCESS_KEY=strata-secret
#                                 AWS_REGION=us-east-1
#                               All other output goes to stderr.
#   scripts/rgw.sh bucket DIR NAME   create bucket NAME (idempotent; a signed PUT with curl).
#   scripts/rgw.sh stop   DIR   stop the daemons (TERM, KILL after a grace period); idempotent.
#   scripts/rgw.sh pause  DIR   make the S3 endpoint unavailable (see "pause" below).
#   scripts/rgw.sh resume DIR   make it available again.
#   scripts/rgw.sh status DIR   exit 0 if all three daemons run, 1 otherwise.
#
# No systemd, no mgr, no cephx: auth is "none", so only S3 (SigV4) auth is checked, by
# radosgw itself. Objects live in RAM (memstore), capped by RGW_MEMSTORE_BYTES (1 GiB).
# Ports are picked free on 127.0.0.1 (the OSD binds a free port of ceph's 6800-7300 range).
# Needs: apt-get install --no-install-recommends radosgw ceph-mon ceph-osd (see
# scripts/install-test-deps.sh).
#
# Environment knobs: RGW_START_TIMEOUT (s, default 60), RGW_STOP_GRACE (s, default 5),
# RGW_MEMSTORE_BYTES (default 1073741824), RGW_PAUSE_MODE (stop|restart, default stop).
set -euo pipefail

ACCESS_KEY=strata
SECRET_KEY=strata-secret
REGION=us-east-1
START_TIMEOUT="${RGW_START_TIMEOUT:-60}"
STOP_GRACE="${RGW_STOP_GRACE:-5}"
MEMSTORE_BYTES="${RGW_MEMSTORE_BYTES:-1073741824}"
DAEMONS=(radosgw osd mon) # stop order; start order is the reverse

log() { printf 'rgw.sh: %s\n' "$*" >&2; }
die() {
  log "error: $*"
  exit 1
}
usage() {
  echo "usage: $0 {start|stop|pause|resume|status} DIR | $0 bucket DIR NAME" >&2
  exit 2
}

cmd="${1:-}"
if [ "$cmd" = bucket ]; then
  [ $# -eq 3 ] || usage
  BUCKET="$3"
else
  [ $# -eq 2 ] || usage
fi
[ -n "$2" ] || usage
if [ ! -d "$2" ]; then
  case "$cmd" in
  start) mkdir -p "$2" ;;
  stop) exit 0 ;; # nothing was ever started there
  *) die "no such directory: $2" ;;
  esac
fi
DIR="$(cd "$2" && pwd -P)"
CONF="$DIR/ceph.conf"

# A daemon's pid, if that process is alive (not a zombie) and was started with our
# ceph.conf: a stale pid file never makes us signal an unrelated process.
live_pid() {
  local f="$DIR/run/$1.pid" pid state
  [ -s "$f" ] || return 1
  pid="$(cat "$f")"
  [[ "$pid" =~ ^[0-9]+$ ]] || return 1
  state="$(awk '{print $3}' "/proc/$pid/stat" 2>/dev/null)" || return 1
  [ -n "$state" ] && [ "$state" != Z ] && [ "$state" != X ] || return 1
  tr '\0' ' ' <"/proc/$pid/cmdline" 2>/dev/null | grep -qF -- "-c $CONF " || return 1
  echo "$pid"
}

# Ceph daemons run in the foreground (-f: no fork, logs still go to log_file) as background
# jobs of this script; their stdout/stderr go to a file, never to ours, so a caller that
# captures our output does not wait for the daemons. The pid file is written by us.
spawn() {
  local name="$1" pid i
  shift
  "$@" -c "$CONF" -f </dev/null >>"$DIR/log/$name.out" 2>&1 &
  pid=$!
  echo "$pid" >"$DIR/run/$name.pid"
  # Until the forked shell has exec'd the daemon, live_pid would not recognise it.
  for ((i = 0; i < 250; i++)); do
    live_pid "$name" >/dev/null && return 0
    gone "$pid" && return 0
    sleep 0.02
  done
}

log_tails() {
  local f
  for f in "$DIR"/log/*.log "$DIR"/log/*.out; do
    [ -s "$f" ] || continue
    printf '\n----- tail of %s -----\n' "$f" >&2
    tail -n 25 "$f" >&2
  done
}

# One daemon after the other (radosgw, osd, mon: an OSD or radosgw whose monitor is gone
# waits seconds for it on shutdown): TERM (and CONT, in case it is paused), wait up to
# STOP_GRACE s, then KILL.
stop_daemons() {
  local n pid i
  for n in "$@"; do
    pid="$(live_pid "$n")" || continue
    kill -TERM "$pid" 2>/dev/null || true
    kill -CONT "$pid" 2>/dev/null || true
    for ((i = 0; i < STOP_GRACE * 20; i++)); do
      gone "$pid" && break
      sleep 0.05
    done
    if ! gone "$pid"; then
      log "$n (pid $pid) ignored SIGTERM for ${STOP_GRACE}s: SIGKILL"
      kill -KILL "$pid" 2>/dev/null || true
      for ((i = 0; i < 100; i++)); do
        gone "$pid" && break
        sleep 0.05
      done
      gone "$pid" || die "$n (pid $pid) still alive after SIGKILL"
    fi
  done
}

# True once a process has exited (a zombie counts as exited).
gone() {
  local state
  state="$(awk '{print $3}' "/proc/$1/stat" 2>/dev/null)" || return 0
  [ -z "$state" ] || [ "$state" = Z ] || [ "$state" = X ]
}

rgw_port() {
  sed -n 's#^RGW_ENDPOINT=http://127.0.0.1:\([0-9]*\)$#\1#p' "$DIR/env" 2>/dev/null
}

# Waits until http://127.0.0.1:PORT/ answers with any HTTP status, while radosgw lives.
wait_http() {
  local port="$1" deadline="$2"
  while :; do
    if curl -s -o /dev/null --max-time 2 "http://127.0.0.1:$port/"; then
      return 0
    fi
    live_pid radosgw >/dev/null || {
      log "radosgw exited before answering on port $port"
      return 1
    }
    for n in mon osd; do
      live_pid "$n" >/dev/null || {
        log "ceph-$n exited"
        return 1
      }
    done
    if [ "$(date +%s)" -ge "$deadline" ]; then
      log "radosgw did not answer on http://127.0.0.1:$port/ in time"
      return 1
    fi
    sleep 0.25
  done
}

free_ports() { # N distinct free TCP ports on 127.0.0.1 (bound together, then released)
  python3 - "$1" <<'EOF'
import socket, sys
socks = []
for _ in range(int(sys.argv[1])):
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    socks.append(s)
print(" ".join(str(s.getsockname()[1]) for s in socks))
EOF
}

do_start() {
  command -v radosgw >/dev/null && command -v ceph-mon >/dev/null && command -v ceph-osd >/dev/null ||
    die "radosgw/ceph-mon/ceph-osd not installed (run scripts/install-test-deps.sh)"
  for n in "${DAEMONS[@]}"; do
    if live_pid "$n" >/dev/null; then die "a cluster is already running in $DIR (stop it first)"; fi
  done
  local attempt started=$SECONDS
  deadline=$(($(date +%s) + START_TIMEOUT))
  # The ports are picked free, then bound by the daemons a moment later: should another
  # process take one in between, the daemon exits ("Address already in use") and the
  # whole start is tried again on new ports.
  for attempt in 1 2 3; do
    if (start_attempt); then
      log "ready in $((SECONDS - started))s: $(head -n 1 "$DIR/env") (pids: mon $(cat "$DIR/run/mon.pid"), osd $(cat "$DIR/run/osd.pid"), radosgw $(cat "$DIR/run/radosgw.pid"))"
      cat "$DIR/env"
      return 0
    fi
    if [ $attempt -lt 3 ] && grep -qsE 'Address already in use|failed to bind' "$DIR"/log/*.log "$DIR"/log/*.out; then
      log "a port was taken meanwhile: starting again on new ports"
      continue
    fi
    break
  done
  log_tails
  die "start failed (see $DIR/log)"
}

# One try at starting the cluster, in a subshell: on failure it stops what it started.
start_attempt() {
  # Throw-away: a previous (stopped) cluster in DIR is replaced.
  rm -rf "$DIR/mon" "$DIR/osd" "$DIR/rgw" "$DIR/run" "$DIR/log" "$DIR/crash" \
    "$DIR/monmap" "$DIR/env" "$DIR/ceph.conf" "$DIR/paused"
  mkdir -p "$DIR/mon" "$DIR/osd" "$DIR/rgw" "$DIR/run" "$DIR/log" "$DIR/crash"
  : >"$DIR/keyring" # never read with auth "none"; keeps clients from searching /etc/ceph

  local mon_port rgw_port fsid osd_uuid osd_id
  read -r mon_port rgw_port <<<"$(free_ports 2)"
  fsid="$(cat /proc/sys/kernel/random/uuid)"
  osd_uuid="$(cat /proc/sys/kernel/random/uuid)"

  cat >"$CONF" <<EOF
# Generated by scripts/rgw.sh: a throw-away single-node test cluster.
[global]
fsid = $fsid
mon_initial_members = a
mon_host = v1:127.0.0.1:$mon_port
ms_bind_msgr2 = false
ms_bind_ipv6 = false
public_addr = 127.0.0.1
cluster_addr = 127.0.0.1
auth_cluster_required = none
auth_service_required = none
auth_client_required = none
keyring = $DIR/keyring
run_dir = $DIR/run
crash_dir = $DIR/crash
log_file = $DIR/log/\$cluster-\$name.log
mon_cluster_log_file = $DIR/log/\$cluster.log
log_to_stderr = false
mon_data_avail_warn = 5
mon_data_avail_crit = 1
mon_allow_pool_size_one = true
mon_allow_pool_delete = true
mon_warn_on_insecure_global_id_reclaim_allowed = false
mon_warn_on_pool_no_redundancy = false
mon_max_pg_per_osd = 1000
osd_pool_default_size = 1
osd_pool_default_min_size = 1
osd_pool_default_pg_num = 8
osd_pool_default_pgp_num = 8
osd_pool_default_pg_autoscale_mode = off
osd_crush_chooseleaf_type = 0

[mon]
# The monitor batches map changes for paxos_propose_interval (1 s); radosgw creates its
# pools one after the other at start (a create and an "application enable" each), so
# the default costs it ~8 s.
paxos_propose_interval = 0.05
paxos_min_wait = 0.01
mon_data = $DIR/mon/\$cluster-\$id
admin_socket = $DIR/run/\$cluster-\$name.asok

[osd]
# With auth "none" the OSD is authenticated after one round trip, and at boot it sends
# its first monitor commands (set its device class, place itself in CRUSH) at once: when
# that beats the monitor's monmap, the command carries fsid 0, is refused ("wrong fsid")
# and the OSD dies (about 2 starts in 5 here). So the OSD sends none, and this script
# places it in CRUSH before starting it.
osd_class_update_on_start = false
osd_crush_update_on_start = false
osd_data = $DIR/osd/\$cluster-\$id
admin_socket = $DIR/run/\$cluster-\$name.asok
osd_objectstore = memstore
memstore_device_bytes = $MEMSTORE_BYTES
osd_op_num_shards = 2
osd_op_num_threads_per_shard = 1

[client.rgw.a]
rgw_frontends = beast endpoint=127.0.0.1:$rgw_port
rgw_data = $DIR/rgw/\$cluster-\$id
admin_socket = $DIR/run/\$cluster-\$name.asok
rgw_thread_pool_size = 32
rgw_enable_usage_log = false
# lifecycle workers sleep 5 s at a time, and shutdown waits for them
rgw_enable_lc_threads = false
EOF

  # From here on, a failure stops whatever was started.
  trap 'rc=$?; if [ $rc -ne 0 ]; then stop_daemons "${DAEMONS[@]}" || true; fi' EXIT

  log "starting ceph-mon (port $mon_port) in $DIR"
  monmaptool --create --clobber --fsid "$fsid" --addv a "[v1:127.0.0.1:$mon_port]" "$DIR/monmap" >&2
  ceph-mon -c "$CONF" --mkfs -i a --monmap "$DIR/monmap" >&2
  spawn mon ceph-mon -i a

  # `ceph osd new` waits for the monitor to answer (up to --connect-timeout). Like the
  # OSD's own commands (see [osd] in ceph.conf), a CLI command that beats the monmap
  # carries fsid 0 and is refused ("wrong fsid"), so both commands here are tried again
  # (both are idempotent: the same uuid gets the same id).
  local left try
  for try in 1 2 3 4 5; do
    left=$((deadline - $(date +%s)))
    osd_id="$(ceph -c "$CONF" --connect-timeout "$((left > 1 ? left : 1))" osd new "$osd_uuid" 2>>"$DIR/log/ceph-cli.out")" && break
    [ "$try" -lt 5 ] || die "the monitor did not answer 'ceph osd new' (see $DIR/log/ceph-cli.out)"
    sleep 0.2
  done
  [[ "$osd_id" =~ ^[0-9]+$ ]] || die "unexpected 'ceph osd new' output: $osd_id"
  # CRUSH weight 1 (a weight from a 1 GiB device's size, in TiB, would round to ~0 and
  # no PG would map to the OSD); with osd_crush_chooseleaf_type 0 it can hang off the root.
  for try in 1 2 3 4 5; do
    ceph -c "$CONF" --connect-timeout 10 osd crush add "osd.$osd_id" 1.0 root=default >>"$DIR/log/ceph-cli.out" 2>&1 && break
    [ "$try" -lt 5 ] || die "'ceph osd crush add' failed (see $DIR/log/ceph-cli.out)"
    sleep 0.2
  done
  log "starting ceph-osd.$osd_id (memstore, $MEMSTORE_BYTES bytes)"
  mkdir -p "$DIR/osd/ceph-$osd_id"
  ceph-osd -c "$CONF" -i "$osd_id" --mkfs --osd-uuid "$osd_uuid" >>"$DIR/log/osd-mkfs.out" 2>&1 ||
    die "ceph-osd --mkfs failed (see $DIR/log/osd-mkfs.out)"
  spawn osd ceph-osd -i "$osd_id"

  # radosgw creates its pools itself; it answers HTTP once they are active.
  log "starting radosgw (port $rgw_port)"
  mkdir -p "$DIR/rgw/ceph-rgw.a"
  spawn radosgw radosgw -n client.rgw.a
  wait_http "$rgw_port" "$deadline" || die "radosgw did not get ready (timeout ${START_TIMEOUT}s)"

  radosgw-admin -c "$CONF" user create --uid=strata --display-name=strata \
    --access-key="$ACCESS_KEY" --secret-key="$SECRET_KEY" >"$DIR/log/user-create.out" 2>&1 ||
    die "radosgw-admin user create failed: $(tail -n 5 "$DIR/log/user-create.out")"

  cat >"$DIR/env" <<EOF
RGW_ENDPOINT=http://127.0.0.1:$rgw_port
AWS_ACCESS_KEY_ID=$ACCESS_KEY
AWS_SECRET_ACCESS_KEY=$SECRET_KEY
AWS_REGION=$REGION
EOF
  trap - EXIT
}

# pause/resume. Default mode "stop": SIGSTOP/SIGCONT radosgw. The listening socket stays
# open, so the kernel still completes TCP handshakes but nothing is answered: clients see
# read timeouts (a hung or partitioned store, the harder case for a client: it must time
# out rather than get a quick error), and resume is instant, keeps the port and needs no
# re-initialisation. Beware: requests sent during the pause stay queued and ARE executed
# after resume, even if the client gave up on them (an ambiguous outcome, as in a real
# outage). Mode "restart" (RGW_PAUSE_MODE=restart for pause) stops radosgw instead:
# clients get "connection refused" at once and no request sent meanwhile is executed
# later; resume starts radosgw again on the same port and waits until it answers
# (about 0.5 s here; if another process took the port meanwhile, it retries until
# RGW_START_TIMEOUT).
do_pause() {
  local pid mode="${RGW_PAUSE_MODE:-stop}"
  [ -f "$DIR/env" ] || die "no cluster started in $DIR"
  pid="$(live_pid radosgw)" || die "radosgw is not running in $DIR"
  case "$mode" in
  stop) kill -STOP "$pid" ;;
  restart) stop_daemons radosgw ;;
  *) die "RGW_PAUSE_MODE must be stop or restart, not $mode" ;;
  esac
  echo "$mode" >"$DIR/paused"
  log "paused radosgw ($mode)"
}

do_resume() {
  local pid mode
  [ -f "$DIR/env" ] || die "no cluster started in $DIR"
  mode="$(cat "$DIR/paused" 2>/dev/null || echo stop)"
  if pid="$(live_pid radosgw)"; then
    kill -CONT "$pid"
  elif [ "$mode" = restart ]; then
    live_pid mon >/dev/null && live_pid osd >/dev/null || die "ceph-mon/ceph-osd not running in $DIR"
    local port before deadline=$(($(date +%s) + START_TIMEOUT)) rgwlog="$DIR/log/ceph-client.rgw.a.log"
    port="$(rgw_port)"
    while :; do
      before="$(stat -c %s "$rgwlog" 2>/dev/null || echo 0)"
      spawn radosgw radosgw -n client.rgw.a
      wait_http "$port" "$deadline" && break
      # Clients know this port: if something took it meanwhile, wait for it to be free.
      if ! live_pid radosgw >/dev/null && [ "$(date +%s)" -lt "$deadline" ] &&
        tail -c +$((before + 1)) "$rgwlog" | grep -q 'failed to bind'; then
        log "port $port is taken: trying again"
        sleep 1
        continue
      fi
      stop_daemons radosgw
      log_tails
      die "radosgw did not come back"
    done
  else
    die "radosgw is not running in $DIR"
  fi
  rm -f "$DIR/paused"
  log "resumed radosgw"
}

# A bucket, created the way any S3 client would: PUT /NAME, signed with SigV4.
do_bucket() {
  [ -f "$DIR/env" ] || die "no cluster started in $DIR"
  local endpoint code
  endpoint="$(sed -n 's/^RGW_ENDPOINT=//p' "$DIR/env")"
  # radosgw wants the payload hash header, which curl does not add by itself.
  code="$(curl -s -o "$DIR/log/bucket.out" -w '%{http_code}' -X PUT \
    -H "x-amz-content-sha256: e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855" \
    --aws-sigv4 "aws:amz:$REGION:s3" --user "$ACCESS_KEY:$SECRET_KEY" "$endpoint/$BUCKET")" ||
    die "could not reach radosgw at $endpoint"
  case "$code" in
  200 | 409) log "bucket $BUCKET ready" ;;
  *) die "creating bucket $BUCKET: HTTP $code: $(cat "$DIR/log/bucket.out")" ;;
  esac
}

do_status() {
  local n rc=0
  for n in "${DAEMONS[@]}"; do
    if pid="$(live_pid "$n")"; then log "$n: running (pid $pid)"; else
      log "$n: not running"
      rc=1
    fi
  done
  return $rc
}

case "$cmd" in
start) do_start ;;
stop)
  stop_daemons "${DAEMONS[@]}"
  rm -f "$DIR/paused"
  ;;
pause) do_pause ;;
resume) do_resume ;;
status) do_status ;;
bucket) do_bucket ;;
*) usage ;;
esac
