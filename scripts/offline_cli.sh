#!/usr/bin/env bash
# corral's CLI surface with no network at all: run as root, it re-enters itself in a fresh network namespace
# (`unshare -n`: only a loopback interface, no route anywhere), proves that the outside is unreachable, then runs
# generate, serve + a request, finetune, eval, distill, export, guard, redteam, batch, audit and cost on the default
# model, each briefly, with corral's socket guard on (corral/egress.py) logging any attempt, and fails if a verb
# fails or tried to reach out. CI runs it after `make test` (.ci/run); README "What corral sends anywhere: nothing".
#   usage: sudo bash scripts/offline_cli.sh        (from the repository, after `make test` built .venv)
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
PY=$ROOT/.venv/bin/python
CORRAL=$ROOT/.venv/bin/corral

if [ "${CORRAL_IN_NETNS:-}" != 1 ]; then
    [ "$(id -u)" = 0 ] || { echo "offline_cli.sh: needs root for unshare -n" >&2; exit 2; }
    exec env CORRAL_IN_NETNS=1 unshare -n bash "$0" "$@"
fi

# loopback up (the namespace starts with it down); `ip` where iproute2 is installed, else the ioctl from Python
ip link set lo up 2>/dev/null || "$PY" - <<'EOF'
import fcntl, socket, struct
s = socket.socket()
flags = struct.unpack("16sH", fcntl.ioctl(s, 0x8913, struct.pack("16sH", b"lo", 0)))[1]  # SIOCGIFFLAGS
fcntl.ioctl(s, 0x8914, struct.pack("16sH", b"lo", flags | 1))  # SIOCSIFFLAGS: IFF_UP
EOF

"$PY" - <<'EOF'
import socket
for host in ("1.1.1.1", "8.8.8.8"):
    try:
        socket.create_connection((host, 443), timeout=3).close()
        raise SystemExit(f"offline_cli.sh: {host} is reachable: this is not a namespace without network")
    except OSError as e:
        print(f"no route to {host}: {e}")
EOF

WORK=$(mktemp -d)
trap 'kill $(jobs -p) 2>/dev/null || true; rm -rf "$WORK"' EXIT
export CORRAL_NO_EGRESS=1 CORRAL_EGRESS_LOG=$WORK/egress.log CORRAL_CACHE_DIR=$WORK/cache
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1
step() { echo; echo "== corral $*"; "$CORRAL" "$@"; }

step generate default "Name the capital city of France." --max-tokens 8

PORT=18411
"$CORRAL" serve default --port $PORT --max-batch 2 > "$WORK/serve.log" 2>&1 &
"$PY" - "$PORT" <<'EOF'
import json, sys, time, urllib.request
url = f"http://127.0.0.1:{sys.argv[1]}"
for _ in range(120):
    try:
        urllib.request.urlopen(url + "/health", timeout=2)
        break
    except OSError:
        time.sleep(0.5)
body = {"model": "default", "messages": [{"role": "user", "content": "Say hello."}], "max_tokens": 8}
req = urllib.request.Request(url + "/v1/chat/completions", json.dumps(body).encode(),
                             {"Content-Type": "application/json"})
answer = json.load(urllib.request.urlopen(req, timeout=60))
print("== corral serve + a request:", repr(answer["choices"][0]["message"]["content"]))
EOF
kill %1 && wait %1 || true

head -n 16 examples/acme/train.jsonl > "$WORK/train.jsonl"
step finetune default --data "$WORK/train.jsonl" --out "$WORK/ft" --max-steps 2 --batch-size 2 --no-compile
step eval default --tasks arithmetic --limit 4 --out "$WORK/eval.json"
step distill default --data "$WORK/train.jsonl" --out "$WORK/distill" --max-steps 2 --batch-size 2 \
    --student-layers 4 --calib-examples 4 --no-report
step export default --adapter "$WORK/ft/adapter" --out "$WORK/acme.gguf" --quant q8_0
step guard default --text "How do I bake bread?" --max-tokens 8 || [ $? = 1 ]  # exit 1: an "unsafe" verdict
step redteam default --limit 2 --max-tokens 8 --out "$WORK/redteam"
echo '{"custom_id": "a", "method": "POST", "url": "/v1/completions", "body": {"prompt": "Hi", "max_tokens": 4}}' \
    > "$WORK/batch.jsonl"
step batch default "$WORK/batch.jsonl" "$WORK/batch.out.jsonl"
grep '"category": "PII"' corral/redteam/data/attacks.jsonl | head -n 3 > "$WORK/pii.jsonl"
step audit "$WORK/ft/adapter" --data "$WORK/train.jsonl" --candidates 15 --extract-rows 4 \
    --pii-prompts "$WORK/pii.jsonl" --out "$WORK/audit"
step cost default --requests 4 --max-tokens 16 --finetune "$WORK/ft" --out "$WORK/cost"

if [ -s "$WORK/egress.log" ]; then
    echo "offline_cli.sh: corral tried to reach the network:" >&2
    cat "$WORK/egress.log" >&2
    exit 1
fi
echo; echo "offline_cli.sh: every verb ran with no network and attempted no connection"
