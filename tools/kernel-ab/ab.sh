#!/bin/bash
# Kernel A/B in one process: CKVKernels at a git revision against the working tree.
#   tools/kernel-ab/ab.sh HEAD~1                 # the goal point's GEMM item, LLC flushed
#   SEQS=16 tools/kernel-ab/ab.sh HEAD~1          # b = 16
#   HOT=1 HEADS=1 TOKENS=2048 tools/kernel-ab/ab.sh HEAD~1
#   ISA=1 SEQS=1 HEADS=32 TOKENS=2048 tools/kernel-ab/ab.sh HEAD~1   # the AVX2 variants (ISA: 1 AVX2, 2 AVX-512, 3 +BF16)
#   DTYPE=1 MATH=0 tools/kernel-ab/ab.sh HEAD~1   # fp16 KV, fp32 products (DTYPE: 0 fp32, 1 fp16, 2 bf16; MATH: 0 fp32, 1 bf16)
# The two builds of variants.sh (the revision, the tree with no extra flags), each listed twice,
# so ab.c's alternation prints two medians per build.
set -euo pipefail
ROUNDS=2 exec "$(dirname "$0")/variants.sh" "${1:?usage: ab.sh REV}" B-worktree:
