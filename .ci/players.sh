#!/usr/bin/env bash
# Proves the real clients work with rill, end to end over real UDP on loopback:
#   ffmpeg -> udp:// -> rill publish -> swarm -> rill watch -> file  -> ffmpeg decodes it
#                                                          \-> --http -> ffprobe reads it
# Needs ffmpeg/ffprobe (installed by .ci/run) and a built ./target/release/rill.
set -euo pipefail
cd "$(dirname "$0")/.."
rill=./target/release/rill
work=$(mktemp -d)
pids=()
cleanup() {
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  wait 2>/dev/null || true
  rm -rf "$work"
}
trap cleanup EXIT

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'; }
in_port=$(free_port)
http_port=$(free_port)

"$rill" keygen --out "$work/channel.key" >/dev/null
"$rill" publish --quiet --key "$work/channel.key" --node-key "$work/node.key" --listen 127.0.0.1:0 \
  --input "udp://127.0.0.1:$in_port" --link-file "$work/link" >/dev/null 2>"$work/publish.err" &
pids+=($!)
for _ in $(seq 50); do [ -s "$work/link" ] && break; sleep 0.1; done
link=$(cat "$work/link")
echo "link: $link"

"$rill" watch "$link" --quiet --listen 127.0.0.1:0 -o "$work/out.ts" --http "127.0.0.1:$http_port" \
  --duration 14 --stats-json "$work/watch.json" 2>"$work/watch.err" &
watch_pid=$!
pids+=($watch_pid)
sleep 1

# What OBS's custom output and `ffmpeg -f mpegts udp://…` send: 1316-byte datagrams.
ffmpeg -hide_banner -loglevel error -re -i tools/assets/sample.ts -t 8 -c copy \
  -f mpegts "udp://127.0.0.1:$in_port?pkt_size=1316" &
ffmpeg_pid=$!
pids+=($ffmpeg_pid)

sleep 4
echo "== ffprobe reads the --http stream"
probe=$(timeout 20 ffprobe -v error -show_entries stream=codec_name -of csv=p=0 "http://127.0.0.1:$http_port/")
echo "$probe"
echo "$probe" | grep -q h264
echo "$probe" | grep -q aac

wait "$ffmpeg_pid"
wait "$watch_pid"
echo "== watch: $(tail -1 "$work/watch.json")"
size=$(stat -c %s "$work/out.ts")
echo "== ffmpeg decodes the watched output ($size bytes) with zero errors"
[ "$size" -gt 100000 ]
errors=$(ffmpeg -hide_banner -v error -i "$work/out.ts" -f null - 2>&1 | head -20)
if [ -n "$errors" ]; then
  echo "decode errors:"
  echo "$errors"
  exit 1
fi
echo "players: ok"
