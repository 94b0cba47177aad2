#!/bin/sh
# Regenerates sample.ts, the built-in channel that `rill publish` (without --input) and
# `rill demo` loop: 10 s of a test pattern with a running clock, H.264 + AAC in MPEG-TS,
# one keyframe per second (what rill's fast join starts from), about 600 kbit/s.
set -eu
cd "$(dirname "$0")"
ffmpeg -hide_banner -loglevel error -y \
  -f lavfi -i "testsrc2=size=640x360:rate=25" \
  -f lavfi -i "sine=frequency=440:sample_rate=48000" \
  -t 10 \
  -vf "drawtext=fontfile=/usr/share/fonts/truetype/dejavu/DejaVuSansMono.ttf:text='rill sample  %{pts\:hms}':x=20:y=20:fontsize=36:fontcolor=white:box=1:boxcolor=black@0.6" \
  -c:v libx264 -preset veryfast -profile:v main -pix_fmt yuv420p \
  -b:v 500k -maxrate 500k -bufsize 500k -g 25 -keyint_min 25 -sc_threshold 0 \
  -c:a aac -b:a 64k -ac 1 \
  -f mpegts -mpegts_flags +resend_headers sample.ts
