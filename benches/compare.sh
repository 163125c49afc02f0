#!/usr/bin/env bash
# End-to-end comparison on loopback: Weir vs nginx vs HAProxy vs direct-to-backend, all doing
# the same 90/10 weighted split over the same four backends, one worker each, measured in one
# run with interleaved wrk rounds. Installs what it needs from Debian packages when missing
# (run as root, or have nginx, haproxy, wrk and python3 installed). Cleans up after itself.
#
#   benches/compare.sh                  # defaults below
#   ROUNDS=7 DURATION=15 benches/compare.sh
#
# Knobs: ROUNDS (5), DURATION seconds per wrk run (10), CONNS (64), PIN (1: wrk on CPU 0,
# proxies and backends on CPU 1), HOLD (1: RSS at 1,000 and 10,000 open connections, and
# after they close), EXTRA (1: Weir under split changes and with 100 probed endpoints),
# BASELINE (path to another weir binary, e.g. an older build: measured in the same rounds
# as "weir-base", for before/after comparisons on a noisy machine), PLAIN (1: the HTTP
# rounds above), TLS (1: the same certificate (ECDSA P-256) on all three, measured in
# interleaved rounds: HTTPS keep-alive req/s (wrk), new TLS handshakes per second (wrk with
# `Connection: close`: one full handshake per request), and h2 req/s (h2load, ALPN h2,
# -m 10 streams per connection)), TLS_ROUNDS (3).
set -euo pipefail

ROUNDS=${ROUNDS:-5}
DURATION=${DURATION:-10}
CONNS=${CONNS:-64}
PIN=${PIN:-1}
HOLD=${HOLD:-1}
EXTRA=${EXTRA:-1}
PLAIN=${PLAIN:-1}
TLS=${TLS:-1}
TLS_ROUNDS=${TLS_ROUNDS:-3}
cd "$(dirname "$0")/.."
ROOT=$(pwd)
WORK=$(mktemp -d /tmp/weir-compare.XXXXXX)
PIDS=()

cleanup() {
  for pid in "${PIDS[@]}"; do kill "$pid" 2>/dev/null || true; done
  sleep 0.3
  for pid in "${PIDS[@]}"; do kill -9 "$pid" 2>/dev/null || true; done
  rm -rf "$WORK"
}
trap cleanup EXIT INT TERM

need=()
command -v nginx >/dev/null || [ -x /usr/sbin/nginx ] || need+=(nginx)
command -v haproxy >/dev/null || [ -x /usr/sbin/haproxy ] || need+=(haproxy)
command -v wrk >/dev/null || need+=(wrk)
command -v python3 >/dev/null || need+=(python3)
command -v taskset >/dev/null || need+=(util-linux)
if [ "$TLS" = 1 ]; then
  command -v h2load >/dev/null || need+=(nghttp2-client)
  command -v openssl >/dev/null || need+=(openssl)
fi
if [ ${#need[@]} -gt 0 ]; then
  echo "installing: ${need[*]}"
  # Keep the packages' own services from starting (and taking port 80).
  policy=/usr/sbin/policy-rc.d
  made_policy=0
  if [ ! -e $policy ]; then printf '#!/bin/sh\nexit 101\n' > $policy; chmod +x $policy; made_policy=1; fi
  apt-get update -qq >/dev/null
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need[@]}" >/dev/null
  [ $made_policy = 1 ] && rm -f $policy
fi
export PATH="$PATH:/usr/sbin"
ulimit -n 200000 2>/dev/null || ulimit -n "$(ulimit -Hn)" 2>/dev/null || true

echo "building weir (release)..."
cargo build --release --quiet
WEIR="$ROOT/target/release/weir"

PROXY_CPU=""; WRK_CPU=""
if [ "$PIN" = 1 ] && [ "$(nproc)" -ge 2 ]; then PROXY_CPU="taskset -c 1"; WRK_CPU="taskset -c 0"; fi

B=(18181 18182 18183 18184)   # v1, v1, v2, v2
NGINX=18190 HAPROXY=18191 WEIRP=18192 WADMIN=18199 WEIRB=18193 WBADMIN=18198
NGINXS=18194 HAPROXYS=18195 WEIRS=18196
# One certificate for all three proxies.
openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -days 2 \
  -keyout "$WORK/tls.key" -out "$WORK/tls.crt" -subj /CN=bench.test \
  -addext "subjectAltName=DNS:bench.test" 2>/dev/null
cat "$WORK/tls.crt" "$WORK/tls.key" >"$WORK/tls.pem"
BASELINE=${BASELINE:-}

start() { # name, command...
  local name=$1; shift
  $PROXY_CPU "$@" >"$WORK/$name.log" 2>&1 &
  PIDS+=($!)
  echo $! >"$WORK/$name.pid"
}
wait_port() {
  for _ in $(seq 1 200); do
    (exec 3<>/dev/tcp/127.0.0.1/"$1") 2>/dev/null && return 0
    sleep 0.05
  done
  echo "port $1 never opened:" >&2
  tail -n 5 "$WORK"/*.log >&2
  exit 1
}

start be0 "$WEIR" backend --addr 127.0.0.1:${B[0]} --name bench-v1-0 --version v1
start be1 "$WEIR" backend --addr 127.0.0.1:${B[1]} --name bench-v1-1 --version v1
start be2 "$WEIR" backend --addr 127.0.0.1:${B[2]} --name bench-v2-0 --version v2
start be3 "$WEIR" backend --addr 127.0.0.1:${B[3]} --name bench-v2-1 --version v2
for p in "${B[@]}"; do wait_port "$p"; done

# The same proxying on the plain and the TLS server.
NGINX_LOCATION='    location / {
      proxy_pass http://split;
      proxy_http_version 1.1;
      proxy_set_header Connection "";
      proxy_set_header Host $host;
      proxy_set_header X-Forwarded-For $proxy_add_x_forwarded_for;
      proxy_set_header X-Forwarded-Proto $scheme;
      proxy_set_header X-Forwarded-Host $host;
    }'
cat >"$WORK/nginx.conf" <<CONF
worker_processes 1;
pid $WORK/nginx.pid;
error_log $WORK/nginx.err warn;
events { worker_connections 40000; }
http {
  access_log off;
  upstream split {
    server 127.0.0.1:${B[0]} weight=45;
    server 127.0.0.1:${B[1]} weight=45;
    server 127.0.0.1:${B[2]} weight=5;
    server 127.0.0.1:${B[3]} weight=5;
    keepalive 256;
  }
  server {
    listen 127.0.0.1:$NGINX backlog=4096;
$NGINX_LOCATION
  }
  server {
    listen 127.0.0.1:$NGINXS ssl http2 backlog=4096;
    ssl_certificate $WORK/tls.crt;
    ssl_certificate_key $WORK/tls.key;
    ssl_protocols TLSv1.2 TLSv1.3;
    # nginx closes a connection after 1,000 requests by default (h2 streams included), which
    # h2load counts as failures: the others have no such limit.
    keepalive_requests 10000000;
$NGINX_LOCATION
  }
}
CONF
cat >"$WORK/haproxy.cfg" <<CONF
global
  nbthread 1
  maxconn 40000
  # Run within the file-descriptor limit we have (HAProxy 2.6 refuses to start otherwise).
  no strict-limits
defaults
  mode http
  timeout connect 1s
  timeout client 30s
  timeout server 30s
  option forwardfor
  http-reuse always
frontend in
  bind 127.0.0.1:$HAPROXY
  http-request set-header X-Forwarded-Proto http
  http-request set-header X-Forwarded-Host %[req.hdr(host)]
  default_backend split
frontend tls
  bind 127.0.0.1:$HAPROXYS ssl crt $WORK/tls.pem alpn h2,http/1.1
  http-request set-header X-Forwarded-Proto https
  http-request set-header X-Forwarded-Host %[req.hdr(host)]
  default_backend split
backend split
  balance roundrobin
  server v1a 127.0.0.1:${B[0]} weight 45
  server v1b 127.0.0.1:${B[1]} weight 45
  server v2a 127.0.0.1:${B[2]} weight 5
  server v2b 127.0.0.1:${B[3]} weight 5
CONF
weir_config() { # extra lines for the app
  cat <<CONF
[admin]
addr = "127.0.0.1:$WADMIN"
[runtime]
worker_threads = 1
shutdown_grace = "1s"
[listeners.main]
addr = "127.0.0.1:$WEIRP"
[apps.bench]
listener = "main"
$1
[apps.bench.split]
v1 = 90
v2 = 10
[apps.bench.versions.v1]
endpoints = [{ name = "bench-v1-0", addr = "127.0.0.1:${B[0]}" }, { name = "bench-v1-1", addr = "127.0.0.1:${B[1]}" }]
[apps.bench.versions.v2]
endpoints = [{ name = "bench-v2-0", addr = "127.0.0.1:${B[2]}" }, { name = "bench-v2-1", addr = "127.0.0.1:${B[3]}" }]
$2
CONF
}
weir_config "" "" >"$WORK/weir-plain.toml"
cp "$WORK/weir-plain.toml" "$WORK/weir.toml"
# The same app on a TLS listener, for the TLS rounds (not for BASELINE: an older build may
# not have TLS).
if [ "$TLS" = 1 ]; then cat >>"$WORK/weir.toml" <<CONF
[listeners.tls]
addr = "127.0.0.1:$WEIRS"
[listeners.tls.tls]
certificates = [{ cert = "$WORK/tls.crt", key = "$WORK/tls.key" }]
[apps.bench_tls]
listener = "tls"
split = { v1 = 90, v2 = 10 }
versions.v1.endpoints = [{ name = "bench-v1-0", addr = "127.0.0.1:${B[0]}" }, { name = "bench-v1-1", addr = "127.0.0.1:${B[1]}" }]
versions.v2.endpoints = [{ name = "bench-v2-0", addr = "127.0.0.1:${B[2]}" }, { name = "bench-v2-1", addr = "127.0.0.1:${B[3]}" }]
CONF
fi

start nginx nginx -c "$WORK/nginx.conf" -g 'daemon off;'
start haproxy haproxy -f "$WORK/haproxy.cfg" -db
start weir "$WEIR" serve --config "$WORK/weir.toml"
for p in $NGINX $HAPROXY $WEIRP $NGINXS $HAPROXYS; do wait_port "$p"; done
[ "$TLS" = 1 ] && wait_port $WEIRS
if [ -n "$BASELINE" ]; then
  sed -e "s/:$WEIRP\"/:$WEIRB\"/" -e "s/:$WADMIN\"/:$WBADMIN\"/" "$WORK/weir-plain.toml" >"$WORK/weir-base.toml"
  start weir-base "$BASELINE" serve --config "$WORK/weir-base.toml"
  wait_port $WEIRB
fi

hits() { # v1 v2 request counts from the backends
  local v1=0 v2=0 i
  for i in 0 1 2 3; do
    n=$(curl -s "127.0.0.1:${B[$i]}/__weir/hits")
    if [ $i -lt 2 ]; then v1=$((v1 + n)); else v2=$((v2 + n)); fi
  done
  echo "$v1 $v2"
}

RESULTS="$WORK/results.tsv"
: >"$RESULTS"
run_wrk() { # peer port round -> appends a result line
  local peer=$1 port=$2 round=$3 before after
  before=$(hits)
  $WRK_CPU wrk -t1 -c"$CONNS" -d"${DURATION}s" --latency "http://127.0.0.1:$port/" >"$WORK/wrk.out" 2>&1 || true
  after=$(hits)
  python3 - "$peer" "$round" "$before" "$after" "$WORK/wrk.out" >>"$RESULTS" <<'PY'
import re, sys
peer, rnd, before, after, path = sys.argv[1:6]
text = open(path).read()
def ms(v):
    m = re.match(r"([\d.]+)(us|ms|s)", v)
    n, u = float(m.group(1)), m.group(2)
    return n / 1000 if u == "us" else n * 1000 if u == "s" else n
rps = float(re.search(r"Requests/sec:\s+([\d.]+)", text).group(1))
p50 = ms(re.search(r"\s50%\s+(\S+)", text).group(1))
p99 = ms(re.search(r"\s99%\s+(\S+)", text).group(1))
errors = sum(int(x) for x in re.findall(r"(?:connect|read|write|timeout) (\d+)", text))
non2xx = re.search(r"Non-2xx or 3xx responses: (\d+)", text)
errors += int(non2xx.group(1)) if non2xx else 0
b1, b2 = map(int, before.split()); a1, a2 = map(int, after.split())
d1, d2 = a1 - b1, a2 - b2
share = 100.0 * d2 / (d1 + d2) if d1 + d2 else 0.0
print(f"{peer}\t{rnd}\t{rps:.0f}\t{p50:.3f}\t{p99:.3f}\t{errors}\t{share:.2f}")
PY
}

TLSRES="$WORK/tls.tsv"
: >"$TLSRES"
run_tls() { # mode (https | handshake | h2), peer, port, round -> appends a result line
  local mode=$1 peer=$2 port=$3 round=$4
  case $mode in
    https) $WRK_CPU wrk -t1 -c"$CONNS" -d"${DURATION}s" --latency "https://127.0.0.1:$port/" >"$WORK/tls.out" 2>&1 || true ;;
    handshake) $WRK_CPU wrk -t1 -c"$CONNS" -d"${DURATION}s" --latency -H "Connection: close" "https://127.0.0.1:$port/" >"$WORK/tls.out" 2>&1 || true ;;
    h2) $WRK_CPU h2load -c"$CONNS" -m10 -D"$DURATION" "https://127.0.0.1:$port/" >"$WORK/tls.out" 2>&1 || true ;;
  esac
  python3 - "$mode" "$peer" "$round" "$WORK/tls.out" >>"$TLSRES" <<'PY'
import re, sys
mode, peer, rnd, path = sys.argv[1:5]
text = open(path).read()
def ms(v):
    m = re.match(r"([\d.]+)(us|ms|s)", v)
    n, u = float(m.group(1)), m.group(2)
    return n / 1000 if u == "us" else n * 1000 if u == "s" else n
if mode == "h2":
    m = re.search(r"finished in [\d.]+s, ([\d.]+) req/s", text)
    rps = float(m.group(1)) if m else 0.0
    f = re.search(r"requests: \d+ total, \d+ started, \d+ done, \d+ succeeded, (\d+) failed, (\d+) errored, (\d+) timeout", text)
    errors = sum(map(int, f.groups())) if f else -1
    s = re.search(r"status codes: (\d+) 2xx, (\d+) 3xx, (\d+) 4xx, (\d+) 5xx", text)
    errors += (int(s.group(3)) + int(s.group(4))) if s else 0
    mean = re.search(r"time for request:\s+\S+\s+\S+\s+(\S+)", text)
    p50 = ms(mean.group(1)) if mean else 0.0
    p99 = 0.0
else:
    m = re.search(r"Requests/sec:\s+([\d.]+)", text)
    rps = float(m.group(1)) if m else 0.0
    p50 = ms(re.search(r"\s50%\s+(\S+)", text).group(1)) if m else 0.0
    p99 = ms(re.search(r"\s99%\s+(\S+)", text).group(1)) if m else 0.0
    errors = sum(int(x) for x in re.findall(r"(?:connect|read|write|timeout) (\d+)", text))
    non2xx = re.search(r"Non-2xx or 3xx responses: (\d+)", text)
    errors += int(non2xx.group(1)) if non2xx else 0
print(f"{mode}\t{peer}\t{rnd}\t{rps:.0f}\t{p50:.3f}\t{p99:.3f}\t{errors}")
PY
}

if [ "$TLS" = 1 ]; then
  echo "warming up (TLS)..."
  tls_peers=("weir:$WEIRS" "nginx:$NGINXS" "haproxy:$HAPROXYS")
  for entry in "${tls_peers[@]}"; do $WRK_CPU wrk -t1 -c"$CONNS" -d2s "https://127.0.0.1:${entry##*:}/" >/dev/null 2>&1 || true; done
  for round in $(seq 1 "$TLS_ROUNDS"); do
    for mode in https handshake h2; do
      for i in $(seq 0 $((${#tls_peers[@]} - 1))); do
        entry=${tls_peers[$(( (i + round) % ${#tls_peers[@]} ))]}
        echo "TLS round $round/$TLS_ROUNDS: $mode ${entry%%:*}"
        run_tls "$mode" "${entry%%:*}" "${entry##*:}" "$round"
      done
    done
  done
fi

echo "warming up..."
peers=("weir:$WEIRP" "nginx:$NGINX" "haproxy:$HAPROXY" "direct:${B[0]}")
[ -n "$BASELINE" ] && peers+=("weir-base:$WEIRB")
[ "$PLAIN" = 1 ] || ROUNDS=0
[ "$PLAIN" = 1 ] && for entry in "${peers[@]}"; do $WRK_CPU wrk -t1 -c"$CONNS" -d2s "http://127.0.0.1:${entry##*:}/" >/dev/null 2>&1 || true; done

for round in $(seq 1 "$ROUNDS"); do
  # Rotate the order each round so drift hits every peer alike.
  for i in $(seq 0 $((${#peers[@]} - 1))); do
    entry=${peers[$(( (i + round) % ${#peers[@]} ))]}
    echo "round $round/$ROUNDS: ${entry%%:*}"
    run_wrk "${entry%%:*}" "${entry##*:}" "$round"
  done
done

rss_kb() { # total VmRSS of a process and its children
  local total=0 pid
  for pid in "$@" $(pgrep -P "$1" 2>/dev/null || true); do
    kb=$(awk '/VmRSS/ {print $2}' /proc/"$pid"/status 2>/dev/null || echo 0)
    total=$((total + kb))
  done
  echo $total
}
MEM="$WORK/mem.tsv"; : >"$MEM"
if [ "$HOLD" = 1 ]; then
  held=("weir:$WEIRP" "nginx:$NGINX" "haproxy:$HAPROXY")
  [ -n "$BASELINE" ] && held+=("weir-base:$WEIRB")
  for entry in "${held[@]}"; do
    peer=${entry%%:*}; port=${entry##*:}; pid=$(cat "$WORK/$peer.pid")
    idle=$(rss_kb "$pid")
    line="$peer\t$idle"
    for n in 1000 10000; do
      $WRK_CPU python3 "$ROOT/benches/hold.py" "$n" 127.0.0.1 "$port" >"$WORK/hold.out" 2>&1 &
      hold=$!
      for _ in $(seq 1 600); do grep -q holding "$WORK/hold.out" 2>/dev/null && break; sleep 0.1; done
      # Idle, not busy: give every proxy time to park, free and purge (the same for all).
      sleep 3
      line="$line\t$(rss_kb "$pid")\t$(awk '{print $2"/"$4}' "$WORK/hold.out")"
      kill "$hold" 2>/dev/null || true; wait "$hold" 2>/dev/null || true
      sleep 1
    done
    # After the 10,000 closed: does the memory go back?
    sleep 4
    line="$line\t$(rss_kb "$pid")"
    echo -e "$line" >>"$MEM"
  done
fi

if [ "$EXTRA" = 1 ]; then
  # Weir while the split changes 10 times a second.
  # The changer is load generation: it runs on the load generator's CPU, over one keep-alive
  # connection (a curl fork per change costs the machine more than the change costs Weir).
  $WRK_CPU python3 "$ROOT/benches/changer.py" $WADMIN bench $((DURATION * 10)) >"$WORK/changer.out" &
  changer=$!
  run_wrk "weir+changes" $WEIRP 1
  wait $changer || true
  # Weir with active probes (the default 1 s interval, a fresh connection each) against 100
  # endpoints: 96 idle ones in a version with weight 0, served by one process on 96 ports.
  kill "$(cat "$WORK/weir.pid")"; sleep 1.5
  addrs=(); eps=""
  for p in $(seq 18200 18295); do addrs+=(--addr "127.0.0.1:$p"); eps="$eps{ addr = \"127.0.0.1:$p\" }, "; done
  start idle "$WEIR" backend "${addrs[@]}" --name idle --version idle
  wait_port 18295
  weir_config 'probe = { path = "/ready", interval = "1s", timeout = "1s" }' \
    "[apps.bench.versions.idle]
endpoints = [ $eps ]" >"$WORK/weir-probes.toml"
  start weir "$WEIR" serve --config "$WORK/weir-probes.toml"
  wait_port $WEIRP
  run_wrk "weir+probes" $WEIRP 1
fi

echo
echo "machine: $(nproc) cores, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs)"
echo "versions: $("$WEIR" --version), $(nginx -v 2>&1 | cut -d/ -f2), haproxy $(haproxy -v | head -1 | awk '{print $3}'), $(wrk -v 2>&1 | head -1 | awk '{print $1" "$2}')"
echo "setup: wrk -t1 -c$CONNS -d${DURATION}s, $ROUNDS interleaved rounds, one worker per proxy, split 90/10 over 4 backends$([ -n "$PROXY_CPU" ] && echo ", wrk on CPU 0, proxies+backends on CPU 1"), open-files limit $(ulimit -n)"
python3 - "$RESULTS" "$MEM" "$TLSRES" <<'PY'
import statistics, sys
from collections import defaultdict
rows = [l.split("\t") for l in open(sys.argv[1]).read().splitlines() if l]
by = defaultdict(list)
for peer, rnd, rps, p50, p99, err, share in rows:
    by[peer].append((int(rnd), float(rps), float(p50), float(p99), int(err), float(share)))
rps_in = {p: {r[0]: r[1] for r in v} for p, v in by.items()}
def ratio(peer, base):
    rs = [rps_in[peer][k] / rps_in[base][k] for k in rps_in.get(peer, {}) if k in rps_in.get(base, {})]
    return f"{statistics.median(rs):.2f}x" if rs and peer in ("weir", "weir-base", "nginx", "haproxy", "direct") else "-"
if by:
    print()
    print(f"{'peer':<14}{'req/s':>9}{'p50 ms':>9}{'p99 ms':>9}{'errors':>8}{'v2 %':>7}{'vs nginx':>10}{'vs direct':>11}")
for peer in ["weir", "weir-base", "nginx", "haproxy", "direct", "weir+changes", "weir+probes"]:
    if peer not in by:
        continue
    v = by[peer]
    med = lambda i: statistics.median(x[i] for x in v)
    share = f"{med(5):.1f}" if peer != "direct" else "-"
    print(f"{peer:<14}{med(1):>9.0f}{med(2):>9.2f}{med(3):>9.2f}{sum(x[4] for x in v):>8}{share:>7}{ratio(peer, 'nginx'):>10}{ratio(peer, 'direct'):>11}")
tls = [l.split("\t") for l in open(sys.argv[3]).read().splitlines() if l]
if tls:
    t = defaultdict(lambda: defaultdict(list))
    for mode, peer, rnd, rps, p50, p99, err in tls:
        t[mode][peer].append((int(rnd), float(rps), float(p50), float(p99), int(err)))
    titles = {"https": "HTTPS keep-alive (wrk)", "handshake": "new TLS handshakes (wrk, Connection: close)", "h2": "h2 over TLS (h2load -m10; p50 column: mean)"}
    for mode in ["https", "handshake", "h2"]:
        if mode not in t:
            continue
        print()
        print(f"{titles[mode]:<44}")
        print(f"{'peer':<14}{'req/s':>9}{'p50 ms':>9}{'p99 ms':>9}{'errors':>8}{'vs nginx':>10}")
        by_round = {p: {r[0]: r[1] for r in v} for p, v in t[mode].items()}
        for peer in ["weir", "nginx", "haproxy"]:
            v = t[mode].get(peer)
            if not v:
                continue
            med = lambda i: statistics.median(x[i] for x in v)
            rs = [by_round[peer][k] / by_round["nginx"][k] for k in by_round[peer] if by_round.get("nginx", {}).get(k)]
            vs = f"{statistics.median(rs):.2f}x" if rs else "-"
            print(f"{peer:<14}{med(1):>9.0f}{med(2):>9.2f}{med(3):>9.2f}{sum(x[4] for x in v):>8}{vs:>10}")
mem = [l.split("\t") for l in open(sys.argv[2]).read().splitlines() if l]
if mem:
    print()
    print(f"{'RSS (MiB)':<14}{'idle':>8}{'1k conns':>10}{'10k conns':>11}{'KiB/conn':>10}{'closed':>9}")
    for m in mem:
        peer, idle = m[0], int(m[1])
        k1, k10, after = int(m[2]), int(m[4]), int(m[6])
        per = (k10 - idle) / 10000
        print(f"{peer:<14}{idle/1024:>8.1f}{k1/1024:>10.1f}{k10/1024:>11.1f}{per:>10.1f}{after/1024:>9.1f}   (held {m[3]}, {m[5]} ok/errors)")
PY
