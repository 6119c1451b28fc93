#!/usr/bin/env bash
# Local server load (issue 6): `twilio-webhooks serve` (durable SQLite store + in-process worker)
# under a loopback load generator sending signed inbound-SMS webhooks (80 % new Sids, 20 %
# byte-for-byte repeats of earlier ones), then proof from the store that every Sid that got a
# 200 was stored once and processed once. The same load runs against an Express server with
# twilio.webhook() validation and no storage at all. The measured runs alternate (serve,
# Express, serve, ...) for --rounds rounds, both servers staying up; each table row is the
# server's median round by req/s (this VM's speed drifts by ±15 % within minutes).
#
# Server, worker, generator (and Express) all share this machine's cores: nothing is pinned.
# Prints a markdown report on stdout (progress on stderr) and writes results.json beside this
# script.
#
# Usage: scripts/bench/load/run.sh [--quick] [--duration S] [--warmup S] [--connections N]
#                                  [--requests N] [--rounds N] [--log-level L] [--no-build]
#                                  [--skip-express] [--keep]
#   --duration S      measured run per server, seconds (default 10)
#   --warmup S        unmeasured run first, seconds (default 2; its Sids are verified too)
#   --connections N   keep-alive connections of the generator (default 32)
#   --requests N      pre-signed requests per run: the cap on a run (default 600000)
#   --rounds N        measured runs per server, alternating (default 3)
#   --log-level L     RUST_LOG of serve (default warn: info logs 2 lines per request)
#   --quick           smoke run: --warmup 1 --duration 3 --rounds 1
#   --no-build        use the binaries already in target/release
#   --skip-express    only measure serve
#   --keep            keep the data directory (its path is printed)
# Environment: CARGO (default cargo), NODE (default node), NPM (default npm), PYTHON (python3).
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
root=$(cd "$here/../../.." && pwd)
CARGO=${CARGO:-cargo}
NODE=${NODE:-node}
NPM=${NPM:-npm}
PYTHON=${PYTHON:-python3}
TOKEN=12345678901234567890123456789012 # webhook_pipeline::config::TEST_AUTH_TOKEN

duration=10
warmup=2
connections=32
requests=600000
rounds=3
log_level=warn
build=1
express=1
keep=0
while (($#)); do
    case $1 in
        --duration) duration=${2:?}; shift ;;
        --warmup) warmup=${2:?}; shift ;;
        --connections) connections=${2:?}; shift ;;
        --requests) requests=${2:?}; shift ;;
        --rounds) rounds=${2:?}; shift ;;
        --log-level) log_level=${2:?}; shift ;;
        --quick) warmup=1; duration=3; rounds=1 ;;
        --no-build) build=0 ;;
        --skip-express) express=0 ;;
        --keep) keep=1 ;;
        -h | --help)
            sed -n '2,/^set -euo/p' "${BASH_SOURCE[0]}" | sed '$d; s/^# \{0,1\}//'
            exit 0
            ;;
        *) echo "run.sh: unknown argument $1 (see --help)" >&2; exit 2 ;;
    esac
    shift
done

log() { echo "[load] $*" >&2; }

serve_bin=$root/target/release/twilio-webhooks
loadgen_bin=$root/target/release/examples/loadgen
if ((build)); then
    log "building (release, fat LTO: a few minutes)"
    # Two invocations: the example's dev-dependencies must not change the serve binary's features.
    (cd "$root" && $CARGO build --release -p twilio-webhooks >&2)
    (cd "$root" && $CARGO build --release -p webhook-local --example loadgen >&2)
fi
for b in "$serve_bin" "$loadgen_bin"; do
    [[ -x $b ]] || { echo "run.sh: $b missing (run without --no-build)" >&2; exit 1; }
done
if ((express)) && [[ ! -d $here/express/node_modules/express || ! -d $here/express/node_modules/twilio ]]; then
    log "installing express + twilio (pinned) into $here/express/node_modules"
    (cd "$here/express" && $NPM ci --no-audit --no-fund >&2)
fi

work=$(mktemp -d "$root/target/bench-load.XXXXXX") # on the project's disk, not a tmpfs
pids=()
cleanup() {
    local p
    for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
    if ((keep)); then log "kept $work"; else rm -rf "$work"; fi
}
trap cleanup EXIT

free_port() {
    $PYTHON -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'
}

wait_healthy() { # port pid
    local i
    for i in $(seq 1 100); do
        if curl -sf "http://127.0.0.1:$1/healthz" >/dev/null 2>&1; then return 0; fi
        kill -0 "$2" 2>/dev/null || { echo "run.sh: server exited at start" >&2; return 1; }
        sleep 0.1
    done
    echo "run.sh: server not healthy on port $1" >&2
    return 1
}

machine_ticks() { # "busy total" jiffies of the whole machine
    awk '/^cpu / { print $2 + $3 + $4 + $7 + $8 + $9, $2 + $3 + $4 + $5 + $6 + $7 + $8 + $9 }' /proc/stat
}

cpu_ticks() { # pid: utime+stime in clock ticks (USER_HZ = 100)
    awk '{ sub(/^.*\) /, ""); print $12 + $13 }' "/proc/$1/stat"
}

# Checks and warm-up against $1 (port); name $2; Sid tag $3. Writes $work/$2.warm.*.
warm() {
    local url="http://127.0.0.1:$1/sms"
    log "$2: checks (valid 200, bad signature 403, none 400/403) and ${warmup}s warm-up"
    "$loadgen_bin" --url "$url" --connections "$connections" --duration "$warmup" \
        --requests "$requests" --sid-tag "$3" --sids-out "$work/$2.warm.sids" --check \
        >"$work/$2.warm.json"
}

# Measured run against $1 (port); server pid $2; name $3; Sid tag $4; round $5.
# Writes $work/$3.r$5.*.
measure() {
    local port=$1 pid=$2 name=$3.r$5 url="http://127.0.0.1:$1/sms"
    log "$3 round $5: ${duration}s, $connections connections"
    local t0 t1 m0 m1
    t0=$(cpu_ticks "$pid")
    m0=$(machine_ticks)
    "$loadgen_bin" --url "$url" --connections "$connections" --duration "$duration" \
        --requests "$requests" --sid-tag "$4" --sids-out "$work/$name.sids" \
        >"$work/$name.json"
    m1=$(machine_ticks)
    t1=$(cpu_ticks "$pid")
    echo $(((t1 - t0))) >"$work/$name.server_ticks"
    echo "$m0 $m1" >"$work/$name.machine_ticks"
    log "$3 round $5: $(cat "$work/$name.json")"
}

info() { # machine facts for the report
    $PYTHON - "$work" <<'EOF'
import json, os, platform, subprocess, sys
model = ""
try:
    for line in open("/proc/cpuinfo"):
        if line.startswith("model name"):
            model = line.split(":", 1)[1].strip(); break
except OSError:
    pass
fs = subprocess.run(["df", "--output=fstype", sys.argv[1]], capture_output=True, text=True).stdout.split()[-1:]
fs = fs[0] if fs else "?"
node = subprocess.run([os.environ.get("NODE", "node"), "--version"], capture_output=True, text=True).stdout.strip()
json.dump({"cpus": os.cpu_count(), "cpu_model": model, "kernel": platform.release(),
           "data_fs": fs, "node": node}, open(sys.argv[1] + "/machine.json", "w"))
EOF
}
info
# Anything else running (a build...) takes cores from the measurement: say so in the results.
m0=$(machine_ticks); sleep 1; m1=$(machine_ticks)
echo "$m0 $m1" >"$work/idle.machine_ticks"

# --- both servers up, then alternating measured rounds ------------------------------------------
data=$work/data
port=$(free_port)
log "serve on 127.0.0.1:$port, data $data (RUST_LOG=$log_level)"
RUST_LOG=$log_level TWILIO_AUTH_TOKEN=$TOKEN "$serve_bin" serve --addr "127.0.0.1:$port" \
    --data "$data" >"$work/serve.stdout" 2>"$work/serve.stderr" &
serve_pid=$!
pids+=("$serve_pid")
wait_healthy "$port" "$serve_pid"
serve_port=$port
warm "$serve_port" serve 5e7e0001

if ((express)); then
    port=$(free_port)
    log "express on 127.0.0.1:$port"
    PORT=$port TWILIO_AUTH_TOKEN=$TOKEN NODE_ENV=production "$NODE" "$here/express/server.js" \
        >"$work/express.stdout" 2>"$work/express.stderr" &
    express_pid=$!
    pids+=("$express_pid")
    wait_healthy "$port" "$express_pid"
    express_port=$port
    warm "$express_port" express e4e40001
fi

for ((r = 1; r <= rounds; r++)); do
    measure "$serve_port" "$serve_pid" serve "5e7e1$(printf '%03d' "$r")" "$r"
    if ((express)); then
        measure "$express_port" "$express_pid" express "e4e41$(printf '%03d' "$r")" "$r"
    fi
done
if ((express)); then
    kill -TERM "$express_pid"
    wait "$express_pid" || true
fi

# The worker drains what is still queued; poll the job table and the records not yet processed
# (serve's records are their own jobs; a full `inspect` per poll would print every event and
# steal the CPU the worker needs).
log "serve: waiting for the worker to drain"
drain_start=$(date +%s.%N)
$PYTHON - "$data/webhooks.db" <<'EOF'
import sqlite3, sys, time
deadline = time.time() + 300
while True:
    c = sqlite3.connect(f"file:{sys.argv[1]}?mode=ro", uri=True, timeout=10)
    n = c.execute("SELECT (SELECT COUNT(*) FROM jobs WHERE done = 0)"
                  " + (SELECT COUNT(*) FROM events WHERE processed = 0)").fetchone()[0]
    c.close()
    if n == 0:
        break
    if time.time() > deadline:
        sys.exit(f"worker did not drain: {n} jobs or records still pending after 300 s")
    time.sleep(0.2)
EOF
drain_end=$(date +%s.%N)
echo "$drain_start $drain_end" >"$work/serve.drain"
serve_total_ticks=$(cpu_ticks "$serve_pid")
echo "$serve_total_ticks" >"$work/serve.total_ticks"
log "serve: SIGTERM"
kill -TERM "$serve_pid"
stop_rc=0
wait "$serve_pid" || stop_rc=$?
echo "$stop_rc" >"$work/serve.stop_rc"
log "serve: stopped (exit $stop_rc); verifying with inspect"
"$serve_bin" inspect --json --data "$data" >"$work/inspect.jsonl"

# --- report ------------------------------------------------------------------------------------
$PYTHON - "$work" "$here/results.json" "$duration" "$warmup" "$connections" "$log_level" "$rounds" <<'EOF'
import collections, json, os, sqlite3, sys

work, out_path, duration, warmup, connections, log_level, rounds = sys.argv[1:]
rounds = int(rounds)
machine = json.load(open(f"{work}/machine.json"))

def run(server, rnd):
    name = f"{server}.r{rnd}"
    p = f"{work}/{name}.json"
    if not os.path.exists(p):
        return None
    r = json.load(open(p))
    r["round"] = rnd
    ticks = int(open(f"{work}/{name}.server_ticks").read())
    r["server_cpu_s"] = ticks / 100
    r["server_cpu_pct_of_one_core"] = round(ticks / r["duration_s"], 1)
    r["server_cpu_us_per_request"] = round(ticks * 1e4 / max(r["requests"], 1), 1)
    r["machine_busy_pct"] = busy_pct(f"{work}/{name}.machine_ticks")
    # CPU that neither the server nor the generator used: another process competing.
    r["other_cpu_pct_of_one_core"] = round(max(0.0, r["machine_busy_pct"] * machine["cpus"]
        - r["server_cpu_pct_of_one_core"] - r["gen_cpu_pct_of_one_core"]), 1)
    return r

def busy_pct(path):
    b0, t0, b1, t1 = map(int, open(path).read().split())
    return round(100 * (b1 - b0) / max(t1 - t0, 1), 1)

def median_round(server):
    """The server's rounds, and its median round by req/s (the lower middle of an even count)."""
    rs = [r for r in (run(server, i) for i in range(1, rounds + 1)) if r]
    if not rs:
        return None, []
    med = sorted(rs, key=lambda r: r["rps"])[(len(rs) - 1) // 2]
    med["warmup"] = json.load(open(f"{work}/{server}.warm.json"))
    return med, rs

(serve, serve_rounds), (express, express_rounds) = median_round("serve"), median_round("express")
machine["busy_pct_before_start"] = busy_pct(f"{work}/idle.machine_ticks")

# Verification of serve's store: every Sid with a 200 (warm-up, checks and measured run) is one
# event record, processed, folded once into its state record (one timeline entry), and had at
# most one job (serve's records are their own jobs: a job row only if the record was handed to
# the job queue), received once and acknowledged; nothing queued or dead.
def sids(name):
    s = []
    files = [f"{work}/{name}.warm.sids"] + [f"{work}/{name}.r{i}.sids" for i in range(1, rounds + 1)]
    for f in files:
        s += [l.strip() for l in open(f) if l.strip()]
    return s

ok = sids("serve")
events = collections.Counter()
processed = {}
states = {}
jobs = collections.Counter()
for line in open(f"{work}/inspect.jsonl"):
    v = json.loads(line)
    if v["type"] == "event":
        events[v["key"]] += 1
        processed[v["key"]] = v["processed"]
    elif v["type"] == "state":
        states[v["id"]] = (v["version"], len(v["timeline"]))
    elif v["type"] == "job":
        jobs[v["status"]] += 1
db = sqlite3.connect(f"file:{work}/data/webhooks.db?mode=ro", uri=True)
job_rows = {k: (n, rc, done) for k, n, rc, done in db.execute(
    "SELECT key, COUNT(*), MAX(receive_count), MIN(done) FROM jobs GROUP BY key")}
dead_rows = db.execute("SELECT COUNT(*) FROM dead_jobs").fetchone()[0]
problems = collections.Counter()
examples = {}
def problem(kind, sid):
    problems[kind] += 1
    examples.setdefault(kind, sid)
for sid in ok:
    key = f"sms#{sid}"
    if events[key] != 1:
        problem("event records != 1", sid)
    if processed.get(key) is not True:
        problem("not processed", sid)
    if states.get(f"msg#{sid}", (0, 0))[1] != 1:
        problem("state timeline != 1 entry", sid)
    n, rc, done = job_rows.get(key, (0, 0, 0))
    if n > 1:
        problem("more than one job", sid)
    elif n == 1 and (rc != 1 or done != 1):
        problem("job not received exactly once and acknowledged", sid)
if jobs:
    problems["queued or dead jobs in inspect"] = sum(jobs.values())
if dead_rows:
    problems["dead jobs"] = dead_rows
stray = len(events) - len(set(f"sms#{s}" for s in ok))
drain_start, drain_end = map(float, open(f"{work}/serve.drain").read().split())
stop_rc = int(open(f"{work}/serve.stop_rc").read())
if stop_rc != 0:
    problems["serve exit code"] = stop_rc
verification = {
    "sids_with_200": len(ok),
    "event_records": len(events),
    "events_without_a_200_seen": stray,
    "state_records": len(states),
    "problems": dict(problems),
    "problem_examples": examples,
    "drain_s_after_load": round(drain_end - drain_start, 2),
    "serve_cpu_s_whole_life": int(open(f"{work}/serve.total_ticks").read()) / 100,
    "verified": not problems and len(ok) > 0,
}
if serve:
    serve["verification"] = verification

results = {
    "what": "twilio-webhooks serve (SQLite, WAL, synchronous=NORMAL, in-process worker) vs "
            "Express + twilio.webhook() (no storage); loopback, signed inbound SMS, "
            "20% duplicates; server, worker and generator share the machine's cores",
    "machine": machine,
    "duration_s": float(duration), "warmup_s": float(warmup), "connections": int(connections),
    "rounds": rounds, "serve_rust_log": log_level,
    "serve": serve, "express": express,
    "serve_rounds": [{k: r[k] for k in ("round", "rps", "p50_ms", "p99_ms", "server_cpu_us_per_request")} for r in serve_rounds],
    "express_rounds": [{k: r[k] for k in ("round", "rps", "p50_ms", "p99_ms", "server_cpu_us_per_request")} for r in express_rounds],
}
json.dump(results, open(out_path, "w"), indent=2)
open(out_path, "a").write("\n")

print(f"## Local server load ({machine['cpus']} cores, {machine['cpu_model']}; data on {machine['data_fs']})")
print()
print(f"{connections} keep-alive connections, closed loop, {duration} s per round after a {warmup} s "
      "warm-up; signed inbound SMS, 20 % byte-for-byte duplicates of earlier requests. "
      "Server, worker and generator share the cores. "
      f"{rounds} measured round(s) per server, alternating; each row is the server's median round.")
print()
if machine["busy_pct_before_start"] > 10:
    print(f"**Warning: the machine was {machine['busy_pct_before_start']} % busy before the run "
          "(another process): the numbers below are low.**")
    print()
for name, r in (("serve", serve), ("express", express)):
    if r and r["other_cpu_pct_of_one_core"] > 15:
        print(f"**Warning: other processes used {r['other_cpu_pct_of_one_core']:.0f} % of a core "
              f"during the {name} run: its numbers are low. Run again on a quiet machine.**")
        print()
print("| server | req/s | p50 ms | p99 ms | p99.9 ms | errors | non-200 | server CPU | generator CPU | both cores busy | verified |")
print("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|")
for name, r in (("`twilio-webhooks serve` (SQLite)", serve), (f"Express + `twilio.webhook()` ({machine['node']})", express)):
    if not r:
        continue
    non200 = sum(v for k, v in r["status_counts"].items() if k != "200")
    if "verification" in r:
        v = r["verification"]
        ver = "yes" if v["verified"] else "**NO** " + ", ".join(f"{k}: {n}" for k, n in v["problems"].items())
        ver += f" ({v['sids_with_200']} Sids)"
    else:
        ver = "n/a (stores nothing)"
    print(f"| {name} | {r['rps']:.0f} | {r['p50_ms']:.2f} | {r['p99_ms']:.2f} | {r['p999_ms']:.2f} | "
          f"{r['errors']} | {non200} | {r['server_cpu_pct_of_one_core']:.0f} % "
          f"({r['server_cpu_us_per_request']} µs/req) | {r['gen_cpu_pct_of_one_core']:.0f} % | "
          f"{r['machine_busy_pct']:.0f} % | {ver} |")
print()
if serve:
    v = serve["verification"]
    print(f"serve: {v['event_records']} event records, {v['state_records']} state records; "
          f"worker drained {v['drain_s_after_load']} s after the load stopped; "
          f"{v['events_without_a_200_seen']} records without a 200 seen by the generator.")
for label, rs in (("serve", serve_rounds), ("Express", express_rounds)):
    if len(rs) > 1:
        print(f"{label} rounds: " + "; ".join(
            f"{r['rps']:.0f} req/s, p99 {r['p99_ms']:.2f} ms" for r in rs) + ".")
print("CPU columns: % of one core during the measured run (server includes its worker); "
      "'both cores busy': the whole machine, 100 % = both cores saturated.")
print(f"Results: {out_path}")
EOF
