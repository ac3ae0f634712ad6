#!/usr/bin/env bash
# TMA / warp-specialisation round on a GPU machine: probes (one process each, killed after 45 s), the compiled
# TMA tests, then the TMA sweep.  Usage: OUT=dir bash kernels/tma_round.sh
export PYTHONPATH=.:protos PYTHONUNBUFFERED=1
OUT=${OUT:?set OUT to a results folder}
for v in contiguous paged; do
  timeout 45 python3 -m kernels.ws_probe "$v" > "$OUT/probe_$v.log" 2>&1
  echo "$v rc=$? $(tail -c 600 "$OUT/probe_$v.log")" | tee -a "$OUT/ws_probe.log"
done
timeout 100 python3 -m pytest -m gpu tests/kernels -q -p no:cacheprovider -k "tma_tiles and not ws" 2>&1 | tail -3 \
  | tee "$OUT/tma_tests.log"
timeout 330 python3 -m kernels.bench --tma-sweep --json "$OUT/kernels_tma_sweep.json" > "$OUT/kernels_tma_sweep.log" 2>&1
grep -v "^prefill {\|^decode {" "$OUT/kernels_tma_sweep.log" | tail -40
