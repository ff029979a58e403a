#!/usr/bin/env bash
# Issue 6 benchmarks, in one invocation: ours against the operator's alternative
# (nginx WebDAV PUT behind mTLS + the tar | zstd | curl cron script) and against the
# physical floor (zstd -3 -T2 over the same bytes). Prints a table of medians and
# target ratios with PASS/MISS. Benchmarks, not tests: the exit status is 0 even
# when a target is missed; it is non-zero only when something could not run.
#
# Usage: bench/run.sh            (as root on a Debian-like machine; ~10-15 min)
# Knobs (environment):
#   BENCH_WORK=/var/tmp/episode-bench   scratch (datasets are cached here)
#   BENCH_RUNS=5                        runs per end-to-end measurement (median)
#   BENCH_PEER_SMALL_RUNS=3             runs of the slow peer on SMALL
#   BENCH_PUT_RUNS=3  BENCH_PUT_SECONDS=10   small-PUT rate runs (alternating)
#   BENCH_ONLY="floor peer ours put rss index shipper"   phases to run
#   BENCH_NO_BUILD=1                    use the existing target/release binaries
#   BENCH_PRESHIPPED=100000             shipped episodes for the idle-shipper phase
#
# Every server it starts (receivers, nginx, sinks) is stopped on exit, also on error.
set -euo pipefail

REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
PEER=$REPO/bench/peer
W=${BENCH_WORK:-/var/tmp/episode-bench}
RUNS=${BENCH_RUNS:-5}
PEER_SMALL_RUNS=${BENCH_PEER_SMALL_RUNS:-3}
PUT_RUNS=${BENCH_PUT_RUNS:-3}
PUT_SECONDS=${BENCH_PUT_SECONDS:-10}
ONLY=${BENCH_ONLY:-floor peer ours put rss index shipper}
PRESHIPPED=${BENCH_PRESHIPPED:-100000}
BIN=$REPO/target/release
RECEIVER=$BIN/episode-receiver
SHIPPER=$BIN/episode-shipper
LOADGEN=$BIN/episode-loadgen
RESULTS=$W/results.txt

log() { printf '[bench %s] %s\n' "$(date +%H:%M:%S)" "$*" >&2; }
die() { log "FATAL: $*"; exit 1; }
want() { [[ " $ONLY " == *" $1 "* ]]; }
now() { date +%s.%N; }
since() { awk -v a="$1" -v b="$(now)" 'BEGIN { printf "%.4f", b - a }'; }
median() { printf '%s\n' "$@" | sort -g | awk '{ v[NR] = $1 } END { if (NR == 0) exit 1; if (NR % 2) print v[(NR + 1) / 2]; else printf "%.4f\n", (v[NR / 2] + v[NR / 2 + 1]) / 2 }'; }
record() { printf '%s %s\n' "$1" "$2" >>"$RESULTS"; log "result $1 = $2"; }
json_field() { python3 -c 'import json,sys; d=json.load(sys.stdin); ks=sys.argv[1].split("."); [d:=d[k] for k in ks]; print(d)' "$1"; }
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'; }
alive() { [ -e "/proc/$1" ] && ! grep -q '^State:[[:space:]]*Z' "/proc/$1/status" 2>/dev/null; }

# ---- process bookkeeping: stop only what we started -----------------------------
PIDS=()
cleanup() {
  local pid
  for pid in "${PIDS[@]:-}"; do
    [ -n "$pid" ] && alive "$pid" && kill -TERM "$pid" 2>/dev/null || true
  done
  for pid in "${PIDS[@]:-}"; do
    [ -n "$pid" ] || continue
    for _ in $(seq 1 100); do alive "$pid" || break; sleep 0.1; done
    alive "$pid" && kill -KILL "$pid" 2>/dev/null || true
  done
}
trap cleanup EXIT
stop_pid() {
  local pid=$1
  alive "$pid" || return 0
  kill -TERM "$pid" 2>/dev/null || true
  for _ in $(seq 1 200); do alive "$pid" || return 0; sleep 0.05; done
  kill -KILL "$pid" 2>/dev/null || true
}

# ---- prerequisites --------------------------------------------------------------
need_pkgs=()
command -v nginx >/dev/null || [ -x /usr/sbin/nginx ] || need_pkgs+=(nginx-light)
command -v zstd >/dev/null || need_pkgs+=(zstd)
command -v curl >/dev/null || need_pkgs+=(curl)
command -v openssl >/dev/null || need_pkgs+=(openssl)
command -v python3 >/dev/null || need_pkgs+=(python3)
if [ ${#need_pkgs[@]} -gt 0 ]; then
  log "installing ${need_pkgs[*]}"
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need_pkgs[@]}" >/dev/null
fi
export PATH=$PATH:/usr/sbin

mkdir -p "$W"
: >"$RESULTS"
{
  echo "date $(date -u +%Y-%m-%dT%H:%M:%SZ)"
  echo "cpus $(nproc)"
  echo "cpu_model $(awk -F': ' '/model name/ { print $2; exit }' /proc/cpuinfo | tr ' ' '_')"
  echo "mem_gib $(awk '/MemTotal/ { printf "%.0f", $2 / 1048576 }' /proc/meminfo)"
  echo "fs $(findmnt -no FSTYPE -T "$W" 2>/dev/null || echo unknown)"
  echo "commit $(git -C "$REPO" rev-parse --short HEAD 2>/dev/null || echo unknown)"
  echo "loadavg_start $(cut -d' ' -f1-3 /proc/loadavg | tr ' ' ,)"
} >>"$RESULTS"

# ---- build once ------------------------------------------------------------------
if [ -z "${BENCH_NO_BUILD:-}" ]; then
  log "cargo build --release --workspace"
  if ! (cd "$REPO" && cargo build --release --workspace); then
    log "workspace build failed; building the receiver, shipper and loadgen alone"
    (cd "$REPO" && cargo build --release -p episode-receiver -p episode-shipper -p episode-loadgen) ||
      (cd "$REPO" && cargo build --release -p episode-receiver -p episode-loadgen)
  fi
fi
[ -x "$RECEIVER" ] || die "$RECEIVER missing"
[ -x "$LOADGEN" ] || die "$LOADGEN missing"
HAVE_SHIPPER=0
if [ -x "$SHIPPER" ] && "$SHIPPER" --help 2>&1 | grep -qw once; then
  HAVE_SHIPPER=1
else
  log "episode-shipper is missing (or has no 'once' command): our end-to-end phases are skipped"
fi
record have_shipper $HAVE_SHIPPER

# ---- datasets (cached) -----------------------------------------------------------
DATA=$W/data
gen_cached() { # NAME COUNT BYTES SEED
  local name=$1 count=$2 bytes=$3 seed=$4 dir=$DATA/$1
  local stamp="$count $bytes $seed $(md5sum "$LOADGEN" | cut -c1-12)"
  if [ -f "$dir/.stamp" ] && [ "$(cat "$dir/.stamp")" = "$stamp" ]; then
    reset_root "$dir"
    return
  fi
  rm -rf "$dir"
  "$LOADGEN" gen "$dir" --count "$count" --bytes "$bytes" --seed "$seed" >&2
  echo "$stamp" >"$dir/.stamp"
}
# Puts every episode back into episodes/ and forgets all shipper state: the next
# shipper run starts from the same data root (moves only, no new inodes).
reset_root() {
  local root=$1 d
  mkdir -p "$root/episodes"
  for sub in shipped quarantine; do
    if [ -d "$root/$sub" ]; then
      find "$root/$sub" -mindepth 1 -maxdepth 1 -type d -exec mv -t "$root/episodes/" {} +
      rm -rf "${root:?}/$sub"
    fi
  done
  find "$root/episodes" -maxdepth 2 -name quarantine_reason.json -delete
  rm -rf "${root:?}/outbox" "${root:?}/state"
}
count_dirs() { find "$1" -mindepth 1 -maxdepth 1 -type d 2>/dev/null | wc -l; }

log "datasets: BIG 4 x 100 MB, SMALL 2000 x ~5 KB"
gen_cached big 4 100000000 1
gen_cached small 2000 5000 2
BIG=$DATA/big
SMALL=$DATA/small
record big_bytes "$(du -sb "$BIG/episodes" | cut -f1)"
record small_bytes "$(du -sb "$SMALL/episodes" | cut -f1)"

# One PKI for everything: the peer's (openssl, P-256); CN=lab1 is our host identity.
PKI=$W/pki
if [ ! -f "$PKI/lab1.pem" ]; then
  rm -rf "$W/pki-seed"
  port=$(free_port)
  pid=$("$PEER/peer-nginx.sh" "$W/pki-seed" "$port")
  stop_pid "$pid"
  mv "$W/pki-seed/pki" "$PKI"
  rm -rf "$W/pki-seed"
fi

# Nothing is deleted while anything is measured. ext4 without a journal (this
# machine's root filesystem) skips, when it allocates an inode, every free inode of
# the group that was freed less than 60 s ago (360 s while its inode-table block is
# dirty), scanning them one by one for each new file: right after a phase deleted
# its 40,000 files, a run that creates files pays that scan on every create (ours
# measured 0.35-0.44x nginx's PUT rate right after 150,000 deletions, 0.75-0.82x a
# minute later). So finished runs are only *moved* into $TRASH (a rename frees no
# inode) and the trash is deleted at the very end; a trash left by an earlier
# invocation is deleted first, followed by a 65 s pause. Every timed run also
# starts after `sync` and a short pause, so dirty page writeback is flushed too.
settle() { sync; sleep "${1:-6}"; }
RUNDIR=$W/runs
TRASH=$W/trash
discard() { # PATH... : out of the way now, deleted at the end
  mkdir -p "$TRASH"
  local p
  for p in "$@"; do
    [ -e "$p" ] && mv "$p" "$TRASH/$(date +%s%N)-$(basename "$p")"
  done
  return 0
}
if [ -e "$TRASH" ] || [ -e "$RUNDIR" ]; then
  log "deleting what an earlier invocation left, then 65 s for ext4 to forget the freed inodes"
  rm -rf "$TRASH" "$RUNDIR"
  settle 65
fi
mkdir -p "$RUNDIR"

# ---- helpers: our receiver, nginx ------------------------------------------------
RECV_PID=""
RECV_URL=""
receiver_config() { # DIR [extra toml lines]
  local dir=$1
  mkdir -p "$dir"
  cat >"$dir/receiver.toml" <<EOF
store_root = "$dir/store"
incoming_root = "$dir/incoming"
index_path = "${INDEX_PATH:-$dir/index.jsonl}"
max_concurrent_uploads = 128
max_uploads_per_host = 64
free_space_reserve = "1GiB"

[tls]
cert = "$PKI/server.pem"
key = "$PKI/server.key"
client_ca = "$PKI/ca.pem"
EOF
}
start_receiver() { # DIR (with receiver.toml)
  local dir=$1
  "$RECEIVER" --config "$dir/receiver.toml" --listen 127.0.0.1:0 --log-format text run \
    >"$dir/stdout" 2>"$dir/stderr" &
  RECV_PID=$!
  PIDS+=("$RECV_PID")
  for _ in $(seq 1 1200); do
    if grep -q '^listening on ' "$dir/stdout" 2>/dev/null; then
      RECV_URL=$(sed -n 's/^listening on //p' "$dir/stdout" | head -1)
      return 0
    fi
    alive "$RECV_PID" || die "receiver did not start: $(tail -5 "$dir/stderr")"
    sleep 0.05
  done
  die "receiver did not print its address within 60 s"
}
NGX_PID=""
NGX_PORT=""
start_nginx() { # DIR
  local dir=$1
  mkdir -p "$dir"
  cp -r "$PKI" "$dir/pki"
  NGX_PORT=$(free_port)
  NGX_PID=$("$PEER/peer-nginx.sh" "$dir" "$NGX_PORT")
  PIDS+=("$NGX_PID")
  alive "$NGX_PID" || die "nginx did not start: $(tail -5 "$dir/logs/error.log")"
}
shipper_config() { # FILE DATA_ROOT URL
  cat >"$1" <<EOF
host_id = "lab1"
data_root = "$2"
compression_level = 3
startup_jitter = "0s"

[receiver]
url = "$3"
ca_bundle = "$PKI/ca.pem"
client_cert = "$PKI/lab1.pem"
client_key = "$PKI/lab1.key"
EOF
}

# ---- (i)-(iii): the floor, the peer and ours, interleaved ---------------------------
# Each round runs the floor, then the peer, then ours on the same bytes, so a change
# in the machine's load hits all three alike; ratios are taken round by round and
# their median is what the table judges.
#
# (i) the floor: zstd -3 -T2 over the BIG bytes (tar to /dev/null through zstd).
# The *_once functions leave their time in $T (no subshell: the exit trap must see
# every server they start).
floor_once() {
  local t0
  t0=$(now)
  tar -cf - -C "$BIG/episodes" . | zstd -3 -T2 -q -c >/dev/null
  T=$(since "$t0")
}
# (ii) the peer: nginx WebDAV PUT behind mTLS + the tar | zstd | curl cron script.
peer_once() { # NAME DATA_ROOT EXPECTED RUN
  local name=$1 root=$2 expected=$3 i=$4 dir t stored
  reset_root "$root"
  dir=$RUNDIR/peer-$name-$i
  settle
  start_nginx "$dir"
  local t0
  t0=$(now)
  "$PEER/peer-shell-shipper.sh" "$root" "https://127.0.0.1:$NGX_PORT" "$dir/pki" >"$dir/shipper.out" 2>&1
  t=$(since "$t0")
  stop_pid "$NGX_PID"
  stored=$(find "$dir/store/lab1" -name '*.tar.zst' | wc -l)
  [ "$stored" -eq "$expected" ] || die "peer $name run $i stored $stored of $expected (see $dir)"
  reset_root "$root"
  T=$t
}
# (iii) ours: episode-receiver with mTLS + `episode-shipper --config F once`.
ours_once() { # NAME DATA_ROOT EXPECTED RUN
  local name=$1 root=$2 expected=$3 i=$4 dir t rows
  reset_root "$root"
  dir=$RUNDIR/ours-$name-$i
  settle
  receiver_config "$dir"
  start_receiver "$dir"
  shipper_config "$dir/shipper.toml" "$root" "$RECV_URL"
  local t0
  t0=$(now)
  "$SHIPPER" --config "$dir/shipper.toml" --log-format text once >"$dir/shipper.out" 2>"$dir/shipper.err" ||
    log "shipper exited $? (see $dir/shipper.err)"
  t=$(since "$t0")
  stop_pid "$RECV_PID"
  rows=$(wc -l <"$dir/index.jsonl" 2>/dev/null || echo 0)
  [ "$rows" -eq "$expected" ] || die "ours $name run $i: index has $rows of $expected rows (see $dir)"
  reset_root "$root"
  T=$t
}
ratio() { awk -v a="$1" -v b="$2" 'BEGIN { printf "%.4f", a / b }'; }
ours_ok=0
if want ours && [ "$HAVE_SHIPPER" = 1 ]; then ours_ok=1; fi
if want ours && [ "$HAVE_SHIPPER" != 1 ]; then log "(iii) skipped: no episode-shipper binary"; fi

if want floor || want peer || want ours; then
  log "(i)-(iii) BIG: floor, peer, ours interleaved, $RUNS rounds"
  tar -cf - -C "$BIG/episodes" . | zstd -3 -T2 -q -c >/dev/null # warm the page cache
  floor=() peer=() ours=() r_peer=() r_floor=()
  for i in $(seq 1 "$RUNS"); do
    f="" p="" o=""
    if want floor; then floor_once; f=$T; floor+=("$f"); fi
    # Peer and ours swap places every round, so neither always goes first.
    if [ $((i % 2)) = 0 ] && [ "$ours_ok" = 1 ]; then ours_once big "$BIG" 4 "$i"; o=$T; ours+=("$o"); fi
    if want peer; then peer_once big "$BIG" 4 "$i"; p=$T; peer+=("$p"); fi
    if [ $((i % 2)) = 1 ] && [ "$ours_ok" = 1 ]; then ours_once big "$BIG" 4 "$i"; o=$T; ours+=("$o"); fi
    if [ -n "$o" ] && [ -n "$p" ]; then r_peer+=("$(ratio "$p" "$o")"); fi
    if [ -n "$o" ] && [ -n "$f" ]; then r_floor+=("$(ratio "$f" "$o")"); fi
    log "round $i: floor ${f:-n/a} s, peer ${p:-n/a} s, ours ${o:-n/a} s"
  done
  [ ${#floor[@]} -gt 0 ] && { record floor_big_s "$(median "${floor[@]}")"; record floor_big_runs "$(IFS=,; echo "${floor[*]}")"; }
  [ ${#peer[@]} -gt 0 ] && { record peer_big_s "$(median "${peer[@]}")"; record peer_big_runs "$(IFS=,; echo "${peer[*]}")"; }
  [ ${#ours[@]} -gt 0 ] && { record ours_big_s "$(median "${ours[@]}")"; record ours_big_runs "$(IFS=,; echo "${ours[*]}")"; }
  [ ${#r_peer[@]} -gt 0 ] && { record ratio_big_peer "$(median "${r_peer[@]}")"; record ratio_big_peer_runs "$(IFS=,; echo "${r_peer[*]}")"; }
  [ ${#r_floor[@]} -gt 0 ] && { record ratio_big_floor "$(median "${r_floor[@]}")"; record ratio_big_floor_runs "$(IFS=,; echo "${r_floor[*]}")"; }

  if want peer || [ "$ours_ok" = 1 ]; then
    log "(ii)-(iii) SMALL: peer and ours interleaved, $PEER_SMALL_RUNS rounds (the peer takes about 45 s a round)"
    peer=() ours=() r_peer=()
    for i in $(seq 1 "$PEER_SMALL_RUNS"); do
      p="" o=""
      if [ $((i % 2)) = 0 ] && [ "$ours_ok" = 1 ]; then ours_once small "$SMALL" 2000 "$i"; o=$T; ours+=("$o"); fi
      if want peer; then peer_once small "$SMALL" 2000 "$i"; p=$T; peer+=("$p"); fi
      if [ $((i % 2)) = 1 ] && [ "$ours_ok" = 1 ]; then ours_once small "$SMALL" 2000 "$i"; o=$T; ours+=("$o"); fi
      if [ -n "$o" ] && [ -n "$p" ]; then r_peer+=("$(ratio "$p" "$o")"); fi
      log "round $i: peer ${p:-n/a} s, ours ${o:-n/a} s"
    done
    # More runs of ours alone (cheap), for its own median.
    if [ "$ours_ok" = 1 ]; then
      for i in $(seq $((PEER_SMALL_RUNS + 1)) "$RUNS"); do ours_once small "$SMALL" 2000 "$i"; ours+=("$T"); done
    fi
    [ ${#peer[@]} -gt 0 ] && { record peer_small_s "$(median "${peer[@]}")"; record peer_small_runs "$(IFS=,; echo "${peer[*]}")"; }
    [ ${#ours[@]} -gt 0 ] && { record ours_small_s "$(median "${ours[@]}")"; record ours_small_runs "$(IFS=,; echo "${ours[*]}")"; }
    [ ${#r_peer[@]} -gt 0 ] && { record ratio_small_peer "$(median "${r_peer[@]}")"; record ratio_small_peer_runs "$(IFS=,; echo "${r_peer[*]}")"; }
  fi
  discard "$RUNDIR"/peer-* "$RUNDIR"/ours-*
  settle
fi

# ---- (iv) small-PUT rate, 64 concurrent mTLS clients, same load generator -----------
put_load() { # URL_TEMPLATE OUT_JSON [extra loadgen args]
  local template=$1 out=$2
  shift 2
  "$LOADGEN" put --url-template "$template" --ca "$PKI/ca.pem" --cert "$PKI/lab1.pem" --key "$PKI/lab1.key" "$@" --json >"$out"
}
if want put; then
  log "(iv) calibration: loadgen against a trivial mTLS sink"
  dir=$RUNDIR/sink
  mkdir -p "$dir"
  "$LOADGEN" sink --cert "$PKI/server.pem" --key "$PKI/server.key" --client-ca "$PKI/ca.pem" >"$dir/stdout" 2>"$dir/stderr" &
  SINK_PID=$!
  PIDS+=("$SINK_PID")
  for _ in $(seq 1 100); do grep -q '^listening on ' "$dir/stdout" && break; sleep 0.05; done
  sink_url=$(sed -n 's/^listening on //p' "$dir/stdout")
  put_load "$sink_url/v1/episodes/{host}/{id}" "$dir/put.json" -c 64 --size 4096 --duration "${PUT_SECONDS}s"
  stop_pid "$SINK_PID"
  record sink_put_per_s "$(json_field ok_per_s <"$dir/put.json")"
  record sink_loadgen_cpu_us "$(json_field loadgen_cpu_us_per_request <"$dir/put.json")"

  log "(iv) small PUTs (4 KiB), 64 clients, ${PUT_SECONDS}s, $PUT_RUNS runs each, alternating"
  ours=() theirs=() ours_p99=() theirs_p99=() ours_cpu=() theirs_cpu=() r_put=()
  put_ours() {
    dir=$RUNDIR/put-ours-$i
    settle
    receiver_config "$dir"
    start_receiver "$dir"
    put_load "$RECV_URL/v1/episodes/{host}/{id}" "$dir/put.json" -c 64 --size 4096 --duration "${PUT_SECONDS}s"
    stop_pid "$RECV_PID"
    ours+=("$(json_field ok_per_s <"$dir/put.json")")
    ours_p99+=("$(json_field latency.p99_ms <"$dir/put.json")")
    ours_cpu+=("$(json_field loadgen_cpu_us_per_request <"$dir/put.json")")
    [ "$(json_field transport_errors <"$dir/put.json")" = 0 ] || log "ours run $i had transport errors: $dir/put.json"
  }
  put_nginx() {
    dir=$RUNDIR/put-nginx-$i
    settle
    start_nginx "$dir"
    put_load "https://127.0.0.1:$NGX_PORT/v1/episodes/{host}/{id}.tar.zst" "$dir/put.json" -c 64 --size 4096 --duration "${PUT_SECONDS}s"
    stop_pid "$NGX_PID"
    theirs+=("$(json_field ok_per_s <"$dir/put.json")")
    theirs_p99+=("$(json_field latency.p99_ms <"$dir/put.json")")
    theirs_cpu+=("$(json_field loadgen_cpu_us_per_request <"$dir/put.json")")
  }
  for i in $(seq 1 "$PUT_RUNS"); do
    # The two swap places every round, so neither always goes first.
    if [ $((i % 2)) = 1 ]; then put_ours; put_nginx; else put_nginx; put_ours; fi
    log "round $i: ours ${ours[-1]} req/s, nginx ${theirs[-1]} req/s"
    r_put+=("$(ratio "${ours[-1]}" "${theirs[-1]}")")
  done
  record ratio_put "$(median "${r_put[@]}")"
  record ratio_put_runs "$(IFS=,; echo "${r_put[*]}")"
  record ours_put_per_s "$(median "${ours[@]}")"
  record ours_put_runs "$(IFS=,; echo "${ours[*]}")"
  record ours_put_p99_ms "$(median "${ours_p99[@]}")"
  record ours_put_loadgen_cpu_us "$(median "${ours_cpu[@]}")"
  record nginx_put_per_s "$(median "${theirs[@]}")"
  record nginx_put_runs "$(IFS=,; echo "${theirs[*]}")"
  record nginx_put_p99_ms "$(median "${theirs_p99[@]}")"
  record nginx_put_loadgen_cpu_us "$(median "${theirs_cpu[@]}")"
  discard "$RUNDIR"/put-* "$RUNDIR"/sink
  settle
fi

# ---- (v) receiver peak RSS during 16 concurrent 256 MiB uploads ----------------------
if want rss; then
  log "(v) receiver RSS: 16 concurrent 256 MiB uploads"
  dir=$RUNDIR/rss
  receiver_config "$dir"
  start_receiver "$dir"
  put_load "$RECV_URL/v1/episodes/{host}/{id}" "$dir/put.json" -c 16 --size 256MiB --requests 16 --warmup 0
  hwm_kb=$(awk '/^VmHWM:/ { print $2 }' "/proc/$RECV_PID/status")
  stop_pid "$RECV_PID"
  record rss_peak_mib "$(awk -v k="$hwm_kb" 'BEGIN { printf "%.1f", k / 1024 }')"
  record rss_upload_mb_per_s "$(json_field mb_per_s <"$dir/put.json")"
  record rss_ok "$(json_field ok <"$dir/put.json")"
  discard "$dir"
  settle
fi

# ---- (vi) a million-row index: start-up and PUT p99 ----------------------------------
if want index; then
  IDX=$W/index1m
  ROWS=1000000
  # The store holds one (empty) archive per row: start-up reconciliation scans the
  # store's names, and a store without them would report a million missing archives.
  if [ ! -f "$IDX/.stamp" ] || [ "$(cat "$IDX/.stamp")" != "$ROWS" ]; then
    log "(vi) writing a $ROWS-row index and $ROWS empty archives (once; cached)"
    rm -rf "$IDX"
    mkdir -p "$IDX"
    "$LOADGEN" gen-index --index "$IDX/index.jsonl" --store "$IDX/store" --rows "$ROWS" --hosts 100 >&2
    stat -c %s "$IDX/index.jsonl" >"$IDX/.size"
    echo "$ROWS" >"$IDX/.stamp"
  fi
  # Undo what earlier PUT runs added: rows past the original size, lab1's archives.
  truncate -s "$(cat "$IDX/.size")" "$IDX/index.jsonl"
  discard "$IDX/store/lab1" "$IDX/incoming"
  settle
  INDEX_PATH=$IDX/index.jsonl receiver_config "$IDX"
  log "(vi) start-up with $ROWS rows, $RUNS runs"
  "$LOADGEN" startup --runs "$RUNS" --json --stderr "$IDX/startup.stderr" -- \
    "$RECEIVER" --config "$IDX/receiver.toml" --listen 127.0.0.1:0 --log-format text run >"$IDX/startup.json"
  record index_startup_s "$(json_field median_s <"$IDX/startup.json")"
  record index_startup_runs "$(python3 -c 'import json,sys; print(",".join("%.3f" % x for x in json.load(sys.stdin)["runs_s"]))' <"$IDX/startup.json")"
  mkdir -p "$RUNDIR/empty-startup"
  receiver_config "$RUNDIR/empty-startup"
  "$LOADGEN" startup --runs "$RUNS" --json -- \
    "$RECEIVER" --config "$RUNDIR/empty-startup/receiver.toml" --listen 127.0.0.1:0 --log-format text run >"$RUNDIR/empty-startup/startup.json"
  record empty_startup_s "$(json_field median_s <"$RUNDIR/empty-startup/startup.json")"

  log "(vi) PUT latency, 8 clients, 4 KiB, ${PUT_SECONDS}s: million-row index vs empty, $PUT_RUNS runs each"
  big_p99=() empty_p99=() big_rss=() r_p99=()
  for i in $(seq 1 "$PUT_RUNS"); do
    settle
    start_receiver "$IDX"
    put_load "$RECV_URL/v1/episodes/{host}/{id}" "$IDX/put-$i.json" -c 8 --size 4096 --duration "${PUT_SECONDS}s"
    big_rss+=("$(awk '/^VmHWM:/ { printf "%.1f", $2 / 1024 }' "/proc/$RECV_PID/status")")
    stop_pid "$RECV_PID"
    big_p99+=("$(json_field latency.p99_ms <"$IDX/put-$i.json")")
    dir=$RUNDIR/empty-index-$i
    settle
    receiver_config "$dir"
    start_receiver "$dir"
    put_load "$RECV_URL/v1/episodes/{host}/{id}" "$dir/put.json" -c 8 --size 4096 --duration "${PUT_SECONDS}s"
    stop_pid "$RECV_PID"
    empty_p99+=("$(json_field latency.p99_ms <"$dir/put.json")")
    r_p99+=("$(ratio "${big_p99[-1]}" "${empty_p99[-1]}")")
  done
  record ratio_index_p99 "$(median "${r_p99[@]}")"
  record ratio_index_p99_runs "$(IFS=,; echo "${r_p99[*]}")"
  record index_put_p99_ms "$(median "${big_p99[@]}")"
  record index_put_p99_runs "$(IFS=,; echo "${big_p99[*]}")"
  record empty_put_p99_ms "$(median "${empty_p99[@]}")"
  record empty_put_p99_runs "$(IFS=,; echo "${empty_p99[*]}")"
  record index_rss_mib "$(median "${big_rss[@]}")"
  truncate -s "$(cat "$IDX/.size")" "$IDX/index.jsonl"
  discard "$IDX/store/lab1" "$IDX/incoming" "$RUNDIR"/empty-*
  settle
fi

# ---- (vii) the shipper at rest: 100k shipped, none pending ----------------------------
if want shipper; then
  if [ "$HAVE_SHIPPER" = 1 ]; then
    # 100k tiny shipped episodes, cached: lent to the fleet's host by one rename.
    PRE=$DATA/preshipped
    stamp="$PRESHIPPED 200 7 v1" # count, bytes, seed, generator format
    if [ ! -f "$PRE/.stamp" ] || [ "$(cat "$PRE/.stamp")" != "$stamp" ] || [ ! -d "$PRE/shipped" ]; then
      log "(vii) generating $PRESHIPPED shipped episodes (once; cached)"
      rm -rf "$PRE"
      "$LOADGEN" gen "$PRE" --count "$PRESHIPPED" --bytes 200 --seed 7 >&2
      mv "$PRE/episodes" "$PRE/shipped"
      echo "$stamp" >"$PRE/.stamp"
      settle
    fi
    log "(vii) shipper with $PRESHIPPED shipped episodes: done.marker -> stored, idle CPU, idle passes"
    FLEET=$RUNDIR/fleet
    "$LOADGEN" fleet --hosts 1 --episodes 10 --bytes 5000 --mode run --preshipped-dir "$PRE" \
      --probes 10 --idle 10s --once-runs "$RUNS" --scan-interval 5s --work "$FLEET" --json >"$RUNDIR/fleet.json" ||
      die "fleet failed (see $FLEET)"
    record marker_to_stored_p50_ms "$(json_field marker_to_stored_p50_ms <"$RUNDIR/fleet.json")"
    record marker_to_stored_max_ms "$(json_field marker_to_stored_max_ms <"$RUNDIR/fleet.json")"
    record marker_to_stored_runs "$(python3 -c 'import json,sys; print(",".join("%.1f" % x for x in json.load(sys.stdin)["marker_to_stored_ms"]))' <"$RUNDIR/fleet.json")"
    record idle_cpu_percent "$(json_field idle_cpu_percent <"$RUNDIR/fleet.json")"
    record idle_once_wall_ms "$(json_field idle_once_wall_ms <"$RUNDIR/fleet.json")"
    record idle_pass_ms "$(json_field idle_pass_ms <"$RUNDIR/fleet.json")"
  else
    log "(vii) skipped: no episode-shipper binary"
  fi
fi

# ---- the table -------------------------------------------------------------------
record loadavg_end "$(cut -d' ' -f1-3 /proc/loadavg | tr ' ' ,)"
python3 "$REPO/bench/table.py" "$RESULTS" | tee "$W/table.md"
log "table saved to $W/table.md; removing the run directories"
rm -rf "$RUNDIR" "$TRASH"
