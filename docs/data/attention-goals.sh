#!/bin/bash
# Goal points and peer, side by side, two rounds.
cd "$(dirname "$0")/../.."
K=.build/release/kvctl
for round in 1 2; do
  echo "## round $round $(date -u +%H:%M:%S) load $(cut -d' ' -f1 /proc/loadavg)"
  $K bench memory
  (cd /work/shared && OPENBLAS_CORETYPE=SkylakeX timeout 200 python3 peers/attn_numpy.py --models mha --dtypes fp32 --bs 16,32 --mcs 8192 --mds 128 --kernels bifurcated --threads 2 --budget-s 120 2>&1 | grep -E "^mha|^#")
  for b in 1 16 32; do $K bench attention --batch $b --repeat 10 | tail -1; done
  for b in 16 32; do $K bench attention --batch $b --repeat 10 --dtype fp32 | tail -1; done
  $K bench attention --batch 32 --repeat 10 --json | tail -1
done
