#!/usr/bin/env python3
"""Golden fixtures for PrefixKV's decode attention, from an independent numpy implementation.

Each case is a paged KV arena for one layer (head-major "HND" blocks, as KVCore's KVLayout:
element ((block * kv_heads + head) * block_size + token) * head_dim + dim), per-sequence block
tables that share prefixes, fp32 queries, and the expected fp32 output computed densely in
float64 from the *stored* (rounded) KV: softmax(scale * q.K^T) V, query head q reading KV head
q // (heads // kv_heads).

Files per case: <name>.json (shape, tables, offsets) and <name>.bin (little-endian):
  K arena (capacity blocks, stored dtype) | V arena | query f32 [b][Hq][d] | expected f32 [b][Hq][d]
bf16 is produced by round-to-nearest-even of fp32 bits (numpy has no bf16 type).

Run from the repository root:  python3 Fixtures/attention/make_golden.py   (numpy >= 1.17)
Seed: 20240603; output is deterministic.
"""
import json
import os

import numpy as np

SEED = 20240603
HERE = os.path.dirname(os.path.abspath(__file__))


def to_bf16_bits(x):
    u = np.asarray(x, np.float32).view(np.uint32).astype(np.uint64)
    return ((u + 0x7FFF + ((u >> 16) & 1)) >> 16).astype(np.uint16)


def from_bf16_bits(b):
    return (b.astype(np.uint32) << 16).view(np.float32)


def store(values, dtype):
    """(raw stored array, float64 values as stored)."""
    if dtype == "fp32":
        raw = values.astype("<f4")
        return raw, raw.astype(np.float64)
    if dtype == "fp16":
        raw = values.astype("<f2")
        return raw, raw.astype(np.float64)
    bits = to_bf16_bits(values).astype("<u2")
    return bits, from_bf16_bits(bits).astype(np.float64)


def make_case(name, rng, dtype, heads, kv_heads, head_dim, block_size, tables, token_counts):
    capacity = 1 + max(max(t) for t in tables)
    shape = (capacity, kv_heads, block_size, head_dim)
    k_raw, k = store(rng.uniform(-1.7, 1.7, shape).astype(np.float32), dtype)
    v_raw, v = store(rng.uniform(-1.7, 1.7, shape).astype(np.float32), dtype)
    b = len(tables)
    q = rng.uniform(-1.7, 1.7, (b, heads, head_dim)).astype(np.float32)
    scale = 1.0 / np.sqrt(head_dim)
    group = heads // kv_heads
    out = np.zeros((b, heads, head_dim), np.float64)
    for s, (table, n) in enumerate(zip(tables, token_counts)):
        ks = k[table].transpose(1, 0, 2, 3).reshape(kv_heads, -1, head_dim)[:, :n]  # [Hkv, n, d]
        vs = v[table].transpose(1, 0, 2, 3).reshape(kv_heads, -1, head_dim)[:, :n]
        for qh in range(heads):
            h = qh // group
            logits = (ks[h] @ q[s, qh].astype(np.float64)) * np.float64(np.float32(scale))
            w = np.exp(logits - logits.max())
            out[s, qh] = (w @ vs[h]) / w.sum()
    with open(os.path.join(HERE, name + ".bin"), "wb") as f:
        for part in (k_raw, v_raw, q.astype("<f4"), out.astype("<f4")):
            f.write(part.tobytes())
    meta = dict(dtype=dtype, queryHeads=heads, kvHeads=kv_heads, headDim=head_dim, blockSize=block_size,
                capacityBlocks=capacity, tables=tables, tokenCounts=token_counts, scale=float(np.float32(scale)),
                seed=SEED, layout="K arena | V arena | query f32 [b][Hq][d] | expected f32 [b][Hq][d]")
    with open(os.path.join(HERE, name + ".json"), "w") as f:
        json.dump(meta, f, indent=1)
        f.write("\n")


def main():
    rng = np.random.default_rng(SEED)
    # MHA fp32: 3 sequences share 2 blocks, then own suffixes (one ends mid-block)
    make_case("mha_fp32", rng, "fp32", 2, 2, 64, 16,
              [[1, 2, 3], [1, 2, 4, 5], [1, 2, 6]], [37, 64, 33])
    # GQA fp16: nested sharing (3 levels) with block size 8, a sequence ending inside its parent
    make_case("gqa_fp16_nested", rng, "fp16", 8, 2, 64, 8,
              [[1, 2, 3, 4], [1, 2, 3, 5], [1, 2, 6, 7], [1, 2, 6], [1, 2]], [29, 27, 32, 24, 16])
    # MQA bf16: 4 sequences share 3 blocks (GEMM-shaped rows), head dim 128
    make_case("mqa_bf16", rng, "bf16", 8, 1, 128, 16,
              [[1, 2, 3, 4], [1, 2, 3, 5], [1, 2, 3, 6], [1, 2, 3, 7]], [50, 63, 64, 49])


if __name__ == "__main__":
    main()
