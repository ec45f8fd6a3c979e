#!/bin/bash
# Real software: CPython's ThreadingHTTPServer answering curl requests with zlib.crc32 from Debian's libz;
# hotpatch replaces crc32 in libz.so.1 while requests flow. Prints, per trial, whether the server survived.
# Found 2026-12-01: the server died ("free(): double free detected in tcache 2") in 5 of 6 trials: remote
# system calls borrowed the main thread while it was held inside clone() (its PTRACE_EVENT_CLONE stop), and
# restoring the registers saved there made clone() fail for a thread it had created. Since the fix: 0 of 10.
#   bash bench/real_zlib_server/run.sh [TRIALS] [--dry-run]
set -u
cd "$(dirname "$0")"
ROOT=$(cd ../.. && pwd)
TRIALS=${1:-10}; EXTRA=${2:-}
WORK=$(mktemp -d)
python3 -m hotpatch build fix_crc.c --target /lib/x86_64-linux-gnu/libz.so.1 -o "$WORK/crc.hp" >/dev/null
died=0
for trial in $(seq 1 "$TRIALS"); do
  python3 server.py > "$WORK/srv.out" 2>&1 & SRV=$!
  until grep -q ready "$WORK/srv.out"; do sleep 0.05; done
  ( end=$((SECONDS+3)); while [ $SECONDS -lt $end ]; do curl -s -m 2 127.0.0.1:18080/abc >/dev/null; done ) & LOAD=$!
  sleep 1
  (cd "$ROOT" && python3 -m hotpatch "$SRV" "$WORK/crc.hp" $EXTRA) > "$WORK/apply.out" 2>&1
  wait $LOAD
  if kill -0 "$SRV" 2>/dev/null; then state=alive; else state="DIED: $(tail -1 "$WORK/srv.out")"; died=$((died+1)); fi
  echo "trial $trial: $state | $(tail -1 "$WORK/apply.out")"
  kill "$SRV" 2>/dev/null; wait "$SRV" 2>/dev/null
done
echo "servers died: $died of $TRIALS"
rm -rf "$WORK"
