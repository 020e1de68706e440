#!/usr/bin/env bash
# The real server, measured from outside: the release binary as an operator runs it
# (`switchboard serve --config FILE`, route scripts that do nothing), driven by wrk, against
# the same binary's /healthz and against adnanh/webhook in the same run, with the same
# client and connection count.
#
#   bench/wrk.sh [--bin PATH] [--bench PATH] [--seconds N] [--connections N] [--threads N]
#                [--rounds N] [--keep]
#
# Per round, one after the other: GET /healthz; signed Pomelo notifications, each body
# unique (pre-signed by bench/wrk/sign_pomelo.py, loaded by wrk's Lua `init`); VerifyVASP
# callbacks, each unique (a counter in verificationUuid); the same with random keys (the
# UUID's first half random, as real ones are: a counter's keys all land at the end of the
# store's key space, which flatters it); adnanh/webhook 2.8 with a
# bearer-header rule and `execute-command: /bin/true`. After each run the script waits
# until the work behind its answers is done before the next one starts: switchboard routes
# an event after answering, and adnanh/webhook answers before its command runs and works
# through the backlog afterwards. It prints that time and the "finished" rate (requests /
# (run + that time)) beside the answered one. Then, for each provider, p99 at half
# of the best rate wrk reached, from switchboard-bench's open-loop client (latency counted
# from each request's scheduled time: wrk2 is not in Debian). Then the store: bytes per
# event, idle RSS and start-up time on the full store after a graceful restart, and the
# size again after the restart.
#
# Needs: wrk and webhook (Debian packages `wrk`, `webhook`), python3, curl, and the release
# binaries (`cargo build --release -p switchboard -p switchboard-bench`). Nothing is
# installed or built here: what is missing is printed, and the script stops.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
root="$(cd "$here/.." && pwd)"

bin="$root/target/release/switchboard"
bench="$root/target/release/switchboard-bench"
seconds=5
connections=64
threads=1
rounds=2
keep=0
while [ $# -gt 0 ]; do
  case "$1" in
    --bin) bin="$2"; shift 2 ;;
    --bench) bench="$2"; shift 2 ;;
    --seconds) seconds="$2"; shift 2 ;;
    --connections) connections="$2"; shift 2 ;;
    --threads) threads="$2"; shift 2 ;;
    --rounds) rounds="$2"; shift 2 ;;
    --keep) keep=1; shift ;;
    -h|--help) sed -n '2,23p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
    *) echo "unknown option $1 (see --help)" >&2; exit 2 ;;
  esac
done

missing=()
command -v wrk >/dev/null || missing+=("wrk: apt-get install wrk")
command -v webhook >/dev/null || missing+=("webhook (adnanh/webhook): apt-get install webhook")
command -v python3 >/dev/null || missing+=("python3: apt-get install python3")
command -v curl >/dev/null || missing+=("curl: apt-get install curl")
[ -x "$bin" ] || missing+=("$bin: cargo build --release -p switchboard")
[ -x "$bench" ] || missing+=("$bench: cargo build --release -p switchboard-bench")
if [ ${#missing[@]} -gt 0 ]; then
  echo "bench/wrk.sh cannot run; missing:" >&2
  printf '  - %s\n' "${missing[@]}" >&2
  exit 2
fi

work="$(mktemp -d -t switchboard-wrk-XXXXXX)"
pids=()
cleanup() {
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  for p in "${pids[@]}"; do wait "$p" 2>/dev/null || true; done
  if [ "$keep" = 1 ]; then echo "kept $work"; else rm -rf "$work"; fi
}
trap cleanup EXIT

free_port() {
  python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'
}

port=$(free_port)
hook_port=$(free_port)
secret=$(head -c 32 /dev/urandom | base64)
api_key="bench-key"
token="bench-verifyvasp-token-0123456789"
pomelo_path="/pomelo/tokenization/otp"

# A route script that does nothing, for every provider and event type.
mkdir -p "$work/routes"
printf '// The benchmark: routed, nothing queued.\n()\n' >"$work/routes/_default.rhai"
cat >"$work/switchboard.toml" <<EOF
[server]
listen = "127.0.0.1:$port"

[store]
path = "data"

[routes]
dir = "routes"

[dev]
secrets = false

[[providers.pomelo.keys]]
api_key = "$api_key"
api_secret = "$secret"

[providers.verifyvasp]
token = "$token"
EOF
cat >"$work/hooks.json" <<EOF
[
  {
    "id": "bench",
    "execute-command": "/bin/true",
    "trigger-rule": {
      "match": {
        "type": "value",
        "value": "Bearer $token",
        "parameter": {"source": "header", "name": "Authorization"}
      }
    }
  }
]
EOF

base="http://127.0.0.1:$port"
server_pid=""
now_ms() { date +%s%3N; }
rss_kb() { awk '/^VmRSS/ {print $2}' "/proc/$1/status"; }

# Starts the server; sets server_pid and startup_ms (exec to the first 200 on /healthz).
start_server() {
  local t0
  t0=$(now_ms)
  "$bin" serve --config "$work/switchboard.toml" >>"$work/server.log" 2>&1 &
  server_pid=$!
  pids+=("$server_pid")
  local deadline=$((t0 + 30000))
  until curl -fs -o /dev/null "$base/healthz"; do
    if ! kill -0 "$server_pid" 2>/dev/null || [ "$(now_ms)" -gt "$deadline" ]; then
      echo "the server did not start; its log:" >&2
      tail -20 "$work/server.log" >&2
      exit 1
    fi
  done
  startup_ms=$(($(now_ms) - t0))
}

stop_server() {
  kill -TERM "$server_pid"
  wait "$server_pid" || true
}

metric_sum() {
  curl -fs "$base/metrics" | awk -v m="$1" 'index($0, m) == 1 {s += $NF} END {printf "%d\n", s}'
}

# Waits until every stored event is routed (the route workers caught up).
drain() {
  local deadline=$(($(now_ms) + 120000))
  while [ "$(metric_sum switchboard_route_runs_total)" -lt "$(metric_sum switchboard_events_stored_total)" ]; do
    [ "$(now_ms)" -lt "$deadline" ] || { echo "routing did not catch up in 120 s" >&2; return; }
    sleep 0.05
  done
}

# CPU ticks (1/100 s) of process PID and of the children it has reaped.
ticks_of() { awk '{print $14 + $15 + $16 + $17}' "/proc/$1/stat"; }

# CPU ticks of adnanh/webhook and of its children it has reaped.
hook_ticks() { ticks_of "$hook_pid"; }

# CPU ticks (1/100 s) spent so far on KIND's side: switchboard's server, the route workers
# it has reaped and the ones still running; adnanh/webhook and the commands it has reaped.
side_ticks() {
  case "$1" in
    hook) hook_ticks ;;
    *)
      local t p
      t=$(ticks_of "$server_pid")
      for p in $(pgrep -P "$server_pid"); do
        t=$((t + $(awk '{print $14 + $15}' "/proc/$p/stat" 2>/dev/null || echo 0)))
      done
      echo "$t"
      ;;
  esac
}

# Waits until adnanh/webhook has run every command it accepted. It answers a request
# before its command runs, and goes on running the backlog afterwards (measured: 7.5 s
# after a 5 s run at 8k req/s), which would take the CPU from whatever is measured next.
# Done when no command is running and its CPU time stays put for 300 ms.
settle_hook() {
  local deadline=$(($(now_ms) + 120000)) before after
  while :; do
    before=$(hook_ticks)
    sleep 0.3
    after=$(hook_ticks)
    if [ -z "$(pgrep -P "$hook_pid")" ] && [ "$after" -le $((before + 1)) ]; then return; fi
    [ "$(now_ms)" -lt "$deadline" ] || { echo "adnanh/webhook still busy after 120 s" >&2; return; }
  done
}

# settle KIND: waits until the work behind the answers of the last run is done (switchboard:
# every event routed; adnanh/webhook: every command run); sets settle_ms, from the end of
# the run. The 300 ms quiet period of adnanh/webhook's check is not counted.
settle() {
  local t0
  t0=$(now_ms)
  case "$1" in
    switchboard) drain; settle_ms=$(($(now_ms) - t0)) ;;
    hook) settle_hook; settle_ms=$(($(now_ms) - t0 - 300)); [ "$settle_ms" -ge 0 ] || settle_ms=0 ;;
    *) settle_ms=0 ;;
  esac
}

# run NAME KIND URL SCRIPT [args...]: one wrk run, then waits for the work behind its
# answers (see `settle`); prints its line and records rps, and the rate at which the work
# was finished: requests / (run + settling).
declare -A best
declare -A all
declare -A best_done
declare -A all_done
declare -A cpu
run() {
  local name="$1" kind="$2" url="$3" script="$4"
  shift 4
  local out line ticks0
  ticks0=$(side_ticks "$kind")
  out=$(wrk -t"$threads" -c"$connections" -d"${seconds}s" --timeout 5s -s "$here/wrk/$script" "$url" -- "$@")
  line=$(grep '^RESULT' <<<"$out")
  local rps p50 p99 non2xx errors wrapped
  rps=$(sed -E 's/.* rps=([0-9]+).*/\1/' <<<"$line")
  p50=$(sed -E 's/.* p50_us=([0-9]+).*/\1/' <<<"$line")
  p99=$(sed -E 's/.* p99_us=([0-9]+).*/\1/' <<<"$line")
  non2xx=$(sed -E 's/.* non2xx=([0-9]+).*/\1/' <<<"$line")
  errors=$(sed -E 's/.* errors=([0-9]+).*/\1/' <<<"$line")
  wrapped=$(sed -E 's/.* wrapped=([0-9]+).*/\1/' <<<"$line")
  last_requests=$(sed -E 's/.* requests=([0-9]+).*/\1/' <<<"$line")
  settle "$kind"
  local done_rate=$((last_requests * 1000 / (seconds * 1000 + settle_ms)))
  # Microseconds of CPU per request, the work behind the answers included (1 tick = 10 ms).
  local cpu_us=$((($(side_ticks "$kind") - ticks0) * 10000 / (last_requests > 0 ? last_requests : 1)))
  awk -v n="$name" -v r="$rps" -v a="$p50" -v b="$p99" -v x="$non2xx" -v e="$errors" -v w="$wrapped" \
    -v s="$settle_ms" -v d="$done_rate" -v k="$kind" -v c="$cpu_us" 'BEGIN {
    printf "  %-40s %8d req/s   p50 %7.2f ms   p99 %7.2f ms   non-2xx %d, socket errors %d%s\n",
      n, r, a / 1000, b / 1000, x, e, (w == 0 ? "" : "   (RAN OUT OF UNIQUE BODIES: repeats were sent)")
    if (k != "plain")
      printf "  %-40s %8d req/s   (the work behind the answers done %.1f s after the run)\n",
        "  ...finished", d, s / 1000
    printf "  %-40s %8d us of CPU per request (%s)\n", "  ...cost", c,
      (k == "hook" ? "adnanh/webhook and its commands" : "the server and its route workers")
  }'
  all[$name]="${all[$name]:-}${all[$name]:+ }$rps"
  all_done[$name]="${all_done[$name]:-}${all_done[$name]:+ }$done_rate"
  if [ "${best[$name]:-0}" -lt "$rps" ]; then best[$name]=$rps; fi
  if [ "${best_done[$name]:-0}" -lt "$done_rate" ]; then best_done[$name]=$done_rate; fi
  cpu[$name]="${cpu[$name]:-}${cpu[$name]:+ }$cpu_us"
}

echo "switchboard, measured from wrk: -t$threads -c$connections -d${seconds}s, $(nproc) CPUs, $rounds rounds"
echo "binary: $bin"
start_server
sleep 1
echo "start-up to /healthz on an empty store: ${startup_ms} ms; idle RSS: $(($(rss_kb "$server_pid") / 1024)) MB"

webhook -hooks "$work/hooks.json" -ip 127.0.0.1 -port "$hook_port" >"$work/webhook.log" 2>&1 &
hook_pid=$!
pids+=("$hook_pid")
until curl -fs -o /dev/null -X POST -H "Authorization: Bearer $token" "http://127.0.0.1:$hook_port/hooks/bench"; do sleep 0.05; done

# Enough pre-signed Pomelo requests for 100k req/s over every round.
count=$((100000 * seconds * rounds + 10000))
python3 "$here/wrk/sign_pomelo.py" "$secret" "$pomelo_path" "$count" >"$work/pomelo.txt"

vasp_body='{"callbackType":"TX_REPORT","data":{"verificationUuid":"64ab871b-14a3-47df-9b80-368e29fe8181","txHash":"0x9fd7"}}'
stored_before=0
next_pomelo=0
next_vasp=0
for r in $(seq 1 "$rounds"); do
  echo "round $r:"
  run "switchboard GET /healthz" plain "$base/healthz" plain.lua
  # Later rounds go on past the numbers earlier rounds used (with room for the requests
  # still in flight when wrk stopped), so that every body is new to the server.
  run "switchboard Pomelo, signed, unique" switchboard "$base$pomelo_path" pomelo.lua "$work/pomelo.txt" "$api_key" "$threads" "$next_pomelo"
  next_pomelo=$((next_pomelo + last_requests + 2 * connections))
  run "switchboard VerifyVASP, unique" switchboard "$base/verifyvasp/callback" verifyvasp.lua "$token" "$threads" "$next_vasp"
  next_vasp=$((next_vasp + last_requests + 2 * connections))
  run "switchboard VerifyVASP, random keys" switchboard "$base/verifyvasp/callback" verifyvasp.lua "$token" "$threads" "$next_vasp" random
  next_vasp=$((next_vasp + last_requests + 2 * connections))
  run "adnanh/webhook, bearer + /bin/true" hook "http://127.0.0.1:$hook_port/hooks/bench" plain.lua POST "Bearer $token" "$vasp_body"
  stored=$(metric_sum switchboard_events_stored_total)
  echo "  events stored so far: $stored"
done

echo "open loop at half of the best rate (switchboard-bench; latency from the scheduled time):"
for p in pomelo verifyvasp; do
  name="switchboard Pomelo, signed, unique"
  [ $p = verifyvasp ] && name="switchboard VerifyVASP, unique"
  rate=$((best[$name] / 2))
  "$bench" open-loop --url "$base" --provider "$p" --rate "$rate" --seconds "$seconds" \
    --connections "$connections" --pomelo-key "$api_key" --pomelo-secret "$secret" \
    --verifyvasp-token "$token" | sed 's/^/  /'
done
drain

events=$(metric_sum switchboard_events_stored_total)
stop_server
bytes=$(du -sb "$work/data" | cut -f1)
disk=$(du -sB1 "$work/data" | cut -f1)
start_server
sleep 2
rss_full=$(($(rss_kb "$server_pid") / 1024))
full_startup=$startup_ms
bytes_after=$(du -sb "$work/data" | cut -f1)
stop_server

echo
# The ingest runs, in the order the summaries list them.
ingest_runs=("switchboard Pomelo, signed, unique" "switchboard VerifyVASP, unique" "switchboard VerifyVASP, random keys")
echo "summary (the best of $rounds rounds; each round's figure in brackets)"
h=${best["switchboard GET /healthz"]}
w=${best["adnanh/webhook, bearer + /bin/true"]}
for name in "${ingest_runs[@]}"; do
  v=${best[$name]}
  awk -v n="$name" -v v="$v" -v h="$h" -v w="$w" -v all="${all[$name]}" 'BEGIN {
    printf "  %-36s %6d req/s = %3d%% of /healthz (%d), %4.1fx adnanh/webhook (%d)   [%s]\n",
      n, v, 100 * v / h, h, v / w, w, all
  }'
done
echo "  /healthz rounds: ${all["switchboard GET /healthz"]}; adnanh/webhook rounds: ${all["adnanh/webhook, bearer + /bin/true"]}"
echo "finished: requests / (run + the time until the work behind the answers was done: every"
echo "event routed; every command of adnanh/webhook run), the best of $rounds rounds"
w=${best_done["adnanh/webhook, bearer + /bin/true"]}
for name in "${ingest_runs[@]}"; do
  v=${best_done[$name]}
  awk -v n="$name" -v v="$v" -v w="$w" -v all="${all_done[$name]}" 'BEGIN {
    printf "  %-36s %6d/s finished = %4.1fx adnanh/webhook (%d/s)   [%s]\n", n, v, v / w, w, all
  }'
done
echo "  adnanh/webhook rounds, finished: ${all_done["adnanh/webhook, bearer + /bin/true"]}"
echo "CPU per request, each round (us; a steadier figure than the rates on a shared machine):"
for name in "switchboard GET /healthz" "${ingest_runs[@]}" "adnanh/webhook, bearer + /bin/true"; do
  printf "  %-36s %s\n" "$name" "${cpu[$name]}"
done
echo "  store: $events events, $bytes bytes ($((bytes / events)) per event; $((disk / events)) allocated on disk); after a restart $bytes_after bytes ($((bytes_after / events)) per event)"
echo "  after a graceful restart on that store: start-up to /healthz ${full_startup} ms, idle RSS ${rss_full} MB"
