#!/usr/bin/env python3
"""Differential fuzzing of `kvctl replay` against oracle.py on small random traces.

Each trace is built to hit the corners the Mooncake traces barely touch: few distinct hash ids
(so prompts share a lot and ids recur at other positions, under other parents), prompts cut
inside a hash block, equal timestamps out of file order, hash blocks that are not a multiple of
the cache block, capacities from below the longest prompt (rejections) to unbounded.

    fuzz.py KVCTL [--traces 200] [--seed 1]

Runs one process at a time (the oracle in this process, kvctl after it). Exit status 1 on the
first disagreement, printing the trace file it kept.
"""

import argparse
import json
import os
import random
import subprocess
import sys
import tempfile

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import oracle  # noqa: E402


def random_trace(rng):
    H = rng.choice([1, 2, 3, 4, 5, 8, 16])
    B = rng.choice([1, 2, 3, 4, 5, 7, 16])
    ids_pool = rng.randint(1, 12)
    n = rng.randint(1, 60)
    lines = []
    chains = []
    for _ in range(n):
        length = rng.randint(1, 12 * H)
        k = -(-length // H)
        if chains and rng.random() < 0.6:  # continue or branch off an earlier prompt
            base = rng.choice(chains)
            keep = rng.randint(0, len(base))
            ids = base[:keep] + [rng.randrange(ids_pool) for _ in range(max(0, k - keep))]
        else:
            ids = [rng.randrange(ids_pool) for _ in range(k)]
        if len(ids) < k:
            ids += [rng.randrange(ids_pool) for _ in range(k - len(ids))]
        if rng.random() < 0.2:
            ids = ids + [rng.randrange(ids_pool)]  # an extra id beyond input_length (ignored)
        chains.append(ids)
        lines.append({"timestamp": rng.randint(0, 10), "input_length": length,
                      "output_length": rng.randint(0, 5), "hash_ids": ids})
    return H, B, lines


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("kvctl")
    ap.add_argument("--traces", type=int, default=200)
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--variant", choices=["no-touch", "partial-free"],
                    help="give the oracle a deliberately wrong semantic: the fuzz must then fail (self-test)")
    args = ap.parse_args()
    rng = random.Random(args.seed)
    points = 0
    fd, path = tempfile.mkstemp(suffix=".jsonl", prefix="replay-fuzz-")
    os.close(fd)
    for t in range(args.traces):
        H, B, lines = random_trace(rng)
        with open(path, "w") as f:
            for obj in lines:
                f.write(json.dumps(obj) + "\n")
        requests = oracle.read_trace(path, H)
        base = oracle.replay(requests, None, H, B, check_every=1, variant=args.variant)
        exact = oracle.replay(requests, None, H, B, exact=True)
        assert exact["hitTokens"] == base["hitTokens"], "segment keys and token tuples disagree"
        unbounded = base["treeBlocksAtEnd"] + 1
        longest = max(-(-length // B) for _, length, _ in requests)
        caps = sorted({1, max(1, longest - 1), longest, longest + 1, max(1, unbounded // 3),
                       max(1, unbounded // 2), unbounded - 1 if unbounded > 1 else 1, unbounded, None} - {0},
                      key=lambda c: -1 if c is None else c)
        for cap in caps:
            mine = base if cap is None else oracle.replay(requests, cap, H, B, check_every=1, variant=args.variant)
            if cap is not None and args.variant is None:
                ex = oracle.replay(requests, cap, H, B, exact=True)
                assert (ex["hitTokens"], ex["evictedBlocks"]) == (mine["hitTokens"], mine["evictedBlocks"])
            cmd = [args.kvctl, "replay", path, "--json", "--hash-block-tokens", str(H), "--block-size", str(B)]
            if cap is not None:
                cmd += ["--capacity-blocks", str(cap)]
            theirs = json.loads(subprocess.run(cmd, check=True, capture_output=True, text=True).stdout)
            if cap is None:
                mine = dict(mine, capacityBlocks=unbounded)
            diff = {f: (mine[f], theirs[f]) for f in oracle.COMPARED if mine[f] != theirs[f]}
            points += 1
            if diff:
                keep = path.replace(".jsonl", "-failing.jsonl")
                os.rename(path, keep)
                cmd[2] = keep
                print(f"trace {t} (H={H}, B={B}), capacity {cap}: {diff}\n  kept {keep}\n  {' '.join(cmd)}")
                sys.exit(1)
    os.remove(path)
    print(f"{args.traces} random traces, {points} (trace, capacity) points: oracle == kvctl on {', '.join(oracle.COMPARED)}")


if __name__ == "__main__":
    main()
