#!/usr/bin/env python3
"""An independent oracle for `kvctl replay`: the same trace, the same documented semantics, no
shared code (Python stdlib only). The rules come from the docs and the trace README; where they
are silent, from reading the Swift (README.md says which); the implementation shares nothing.

Semantics implemented (tools/replay-oracle/README.md explains each and where it is documented):

* A trace line is a request; requests are replayed in timestamp order, equal timestamps in file
  order (a stable sort).
* Prompt of a request: token i (0 <= i < H) of the hash block with id h is h*H + i; the prompt is
  the concatenation of its hash blocks cut to input_length (H = --hash-block-tokens, 512).
* The cache holds CAPACITY blocks of B tokens (B = --block-size, 16). One namespace.
* Each request is admitted and released at once (no decode, no output tokens, no overlap).
* Admission: the hit is the longest run of the prompt's *whole* B-token blocks, from the start,
  that is cached, compared token by token (a prefix tree keyed by block contents). The prompt
  needs ceil(L/B) blocks: the hits, plus fresh ones for the rest (its whole blocks and its partial
  last block). A prompt needing more blocks than CAPACITY is rejected: nothing changes, and its
  tokens count as prompt tokens with no hit.
* Fresh blocks come from blocks holding nothing cached first; when there are none, the least
  recently used unreferenced *leaf* of the tree is evicted (one eviction per missing block). The
  request's own hits are in use and never evicted. Recency = the last request that used the block
  (hit it or brought it in). Evictions happen before the request's new blocks join the tree.
* After admission the prompt's new whole blocks join the tree (cached); the partial last block is
  never cached. Releasing leaves everything cached (evictable).
* Unbounded capacity = distinct whole blocks of the trace + 1 (the live request's partial block):
  at it nothing is ever evicted.

Usage:
    oracle.py TRACE [--block-size 16] [--hash-block-tokens 512] [--limit N]
              [--capacity-blocks N[,N...]] [--sweep] [--exact-tokens] [--json]
              [--check-every N] [--variant no-touch|partial-free]
              [--kvctl PATH]   # also run `PATH replay` at each point (after the oracle, never beside it)

With a lossless store below memory the figures follow from these (see losslessStorePrediction).
"""

import argparse
import heapq
import json
import math
import subprocess
import sys
import time

INFINITE = None


def read_trace(path, hash_block_tokens, limit=None):
    """Requests as (timestamp, input_length, hash_ids) in replay order: a stable sort on timestamp."""
    requests = []
    with open(path, "rb") as f:
        data = f.read()
    if data.startswith(b"\xef\xbb\xbf"):
        data = data[3:]
    for n, raw in enumerate(data.split(b"\n"), start=1):
        if not raw.strip():
            continue
        obj = json.loads(raw)
        ts, length, ids = obj["timestamp"], obj["input_length"], obj["hash_ids"]
        if length <= 0:
            raise SystemExit(f"line {n}: input_length must be positive")
        if len(ids) * hash_block_tokens < length:
            raise SystemExit(f"line {n}: {len(ids)} hash ids cannot cover input_length {length}")
        requests.append((ts, length, ids))
    requests.sort(key=lambda r: r[0])  # list.sort is stable: equal timestamps keep file order
    if limit is not None:
        requests = requests[:limit]
    return requests


def block_contents(ids, length, H, B):
    """Canonical description of each whole B-token block of the prompt: the tuple of
    (hash id, first offset, count) runs its tokens fall in. Token t <-> (t // H, t % H) is a bijection
    (token = id*H + offset, 0 <= offset < H), so two blocks hold the same tokens exactly when these
    tuples are equal. With H a multiple of B a block lies in one hash block: (id, offset)."""
    full = length // B
    if H % B == 0:
        per = H // B
        return [(ids[j // per], (j % per) * B) for j in range(full)]
    out = []
    for j in range(full):
        start, end = j * B, (j + 1) * B
        runs = []
        t = start
        while t < end:
            k, off = divmod(t, H)
            n = min(H - off, end - t)
            runs.append((ids[k], off, n))
            t += n
        out.append(tuple(runs))
    return out


def block_tokens_exact(ids, length, H, B):
    """The slow, literal way: materialise the prompt's token ids and cut whole blocks as tuples."""
    tokens = []
    for h in ids:
        if len(tokens) >= length:
            break
        tokens.extend(range(h * H, h * H + H))
    del tokens[length:]
    return [tuple(tokens[j * B:(j + 1) * B]) for j in range(length // B)]


class Oracle:
    """Prefix tree of cached blocks + LRU over its unreferenced leaves (a heap keyed by last use)."""

    ROOT = 0

    def __init__(self, capacity, variant=None):
        self.capacity = capacity  # None: infinite
        self.variant = variant    # a deliberately wrong semantic (sensitivity check), or None
        self.children = {}        # (parent node, block contents) -> node
        self.key = [None]         # node -> its key in `children`
        self.parent = [-1]
        self.nchildren = [0]
        self.last_use = [0]       # node -> index of the last request that used it
        self.alive = [True]
        self.free_ids = []        # node ids to reuse (a node id is only a name here)
        self.heap = []            # (last_use, node): candidate leaves, checked lazily when popped
        self.tree_size = 0
        self.hit_tokens = 0
        self.query_tokens = 0
        self.evicted = 0
        self.rejected = 0
        self.max_tree = 0
        self.pinned = set()
        self.deferred = []

    def _new_node(self, parent, key, r):
        if self.free_ids:
            n = self.free_ids.pop()
            self.key[n] = key
            self.parent[n] = parent
            self.nchildren[n] = 0
            self.last_use[n] = r
            self.alive[n] = True
        else:
            n = len(self.key)
            self.key.append(key)
            self.parent.append(parent)
            self.nchildren.append(0)
            self.last_use.append(r)
            self.alive.append(True)
        return n

    def _evict_one(self, r):
        heap, last_use, nchildren, alive = self.heap, self.last_use, self.nchildren, self.alive
        while True:
            if not heap:
                raise AssertionError(f"request {r}: nothing evictable although the prompt fits the capacity")
            s, n = heapq.heappop(heap)
            # stale entries: the node left the tree (its id may be reused), was used again since,
            # or gained a child since it was pushed
            if alive[n] and last_use[n] == s and nchildren[n] == 0 and s != r:
                if self.variant == "no-touch" and n in self.pinned:
                    self.deferred.append((s, n))
                    continue
                break
        del self.children[self.key[n]]
        alive[n] = False
        self.key[n] = None
        p = self.parent[n]
        nchildren[p] -= 1
        if p != self.ROOT and nchildren[p] == 0 and last_use[p] != r and p not in self.pinned:
            heapq.heappush(heap, (last_use[p], p))  # the parent is a leaf now, with its own recency
        self.free_ids.append(n)
        self.tree_size -= 1
        self.evicted += 1

    def request(self, r, blocks, length, B):
        """Admit and release request number r (1-based, increasing) whose whole blocks are `blocks`."""
        total = -(-length // B)
        if self.capacity is not None and total > self.capacity:
            self.rejected += 1
            return
        children, last_use = self.children, self.last_use
        node = self.ROOT
        hits = 0
        for b in blocks:
            child = children.get((node, b))
            if child is None:
                break
            node = child
            if self.variant != "no-touch":
                last_use[child] = r  # in use: pinned for this request, and now the most recent
            hits += 1
        if self.variant == "no-touch":  # FIFO: a hit keeps its age (but is still pinned)
            pinned = set()
            p = node
            while p != self.ROOT:
                pinned.add(p)
                p = self.parent[p]
            self.pinned = pinned
        needed = total - hits
        if self.variant == "partial-free":  # the partial last block takes no room
            needed = len(blocks) - hits
        if self.capacity is not None:
            missing = needed - (self.capacity - self.tree_size)
            for _ in range(missing):
                self._evict_one(r)
        if self.variant == "no-touch":
            for e in self.deferred:
                heapq.heappush(self.heap, e)
            self.deferred = []
        parent = node
        full = len(blocks)
        if hits < full:
            nch = self.nchildren
            for j in range(hits, full):
                k = (parent, blocks[j])
                n = self._new_node(parent, k, r)
                children[k] = n
                nch[parent] += 1
                parent = n
            self.tree_size += full - hits
        if parent != self.ROOT and self.nchildren[parent] == 0:
            heapq.heappush(self.heap, (last_use[parent], parent))  # the chain's deepest block, if a leaf
        if self.tree_size > self.max_tree:
            self.max_tree = self.tree_size
        self.hit_tokens += hits * B
        self.query_tokens += length

    def check(self):
        """Slow structural check: tree size, child counts, capacity."""
        alive_nodes = [n for n in range(1, len(self.key)) if self.alive[n]]
        assert len(alive_nodes) == self.tree_size == len(self.children), (len(alive_nodes), self.tree_size, len(self.children))
        counts = {}
        for n in alive_nodes:
            p = self.parent[n]
            assert p == self.ROOT or self.alive[p], f"node {n}: parent {p} not in the tree"
            counts[p] = counts.get(p, 0) + 1
        for n in [self.ROOT] + alive_nodes:
            assert self.nchildren[n] == counts.get(n, 0), f"node {n}: child count"
        if self.capacity is not None:
            assert self.tree_size <= self.capacity


def replay(requests, capacity, H, B, exact=False, check_every=0, variant=None):
    o = Oracle(capacity, variant)
    contents = block_tokens_exact if exact else block_contents
    t0 = time.monotonic()
    for r, (_, length, ids) in enumerate(requests, start=1):
        o.request(r, contents(ids, length, H, B), length, B)
        if check_every and r % check_every == 0:
            o.check()
    if check_every:
        o.check()
    seconds = time.monotonic() - t0
    prompt = sum(length for _, length, _ in requests)
    return {
        "requests": len(requests),
        "rejectedRequests": o.rejected,
        "capacityBlocks": capacity,
        "promptTokens": prompt,
        "hitTokens": o.hit_tokens,
        "hitRate": o.hit_tokens / prompt if prompt else 0.0,
        "evictedBlocks": o.evicted,
        "seconds": round(seconds, 2),
        "treeBlocksAtEnd": o.tree_size,
        "maxTreeBlocks": o.max_tree,
    }


def run_kvctl(kvctl, trace, capacity, args):
    cmd = [kvctl, "replay", trace, "--json", "--block-size", str(args.block_size),
           "--hash-block-tokens", str(args.hash_block_tokens)]
    if capacity is not None:
        cmd += ["--capacity-blocks", str(capacity)]
    if args.limit is not None:
        cmd += ["--limit", str(args.limit)]
    t0 = time.monotonic()
    out = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout
    res = json.loads(out)
    res["wall"] = round(time.monotonic() - t0, 2)
    return res, " ".join(cmd)


COMPARED = ["requests", "rejectedRequests", "capacityBlocks", "promptTokens", "hitTokens", "evictedBlocks"]


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("trace")
    ap.add_argument("--block-size", type=int, default=16)
    ap.add_argument("--hash-block-tokens", type=int, default=512)
    ap.add_argument("--limit", type=int)
    ap.add_argument("--capacity-blocks", help="comma-separated capacities in blocks ('unbounded' allowed); default: unbounded")
    ap.add_argument("--sweep", action="store_true", help="1,2,5,10,20,50,100%% of the unbounded capacity (rounded up), as kvctl --sweep")
    ap.add_argument("--exact-tokens", action="store_true", help="key blocks by their materialised token tuples (slow, memory-hungry: use --limit)")
    ap.add_argument("--check-every", type=int, default=0, help="run the slow structural check every N requests")
    ap.add_argument("--variant", choices=["no-touch", "partial-free"],
                    help="sensitivity check: replay with a deliberately wrong semantic, which must disagree with kvctl "
                         "(no-touch: a hit does not refresh a block's recency, FIFO; partial-free: the partial last "
                         "block takes no room)")
    ap.add_argument("--kvctl", help="path of a kvctl binary to compare against (run after each oracle point)")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    H, B = args.hash_block_tokens, args.block_size

    t0 = time.monotonic()
    requests = read_trace(args.trace, H, args.limit)
    parse_s = time.monotonic() - t0

    # Unbounded: an infinite cache never evicts; its final tree is every distinct whole block.
    base = replay(requests, INFINITE, H, B, args.exact_tokens, args.check_every, args.variant)
    unbounded = base["treeBlocksAtEnd"] + 1
    base["capacityBlocks"] = unbounded

    if args.sweep:
        caps = [max(1, math.ceil(unbounded * f)) for f in (0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0)]
    elif args.capacity_blocks:
        caps = [None if c.strip() == "unbounded" else int(c) for c in args.capacity_blocks.split(",")]
    else:
        caps = [None]

    rows = []
    for cap in caps:
        if cap is None:
            res = base
        else:
            res = replay(requests, cap, H, B, args.exact_tokens, args.check_every, args.variant)
        if res["rejectedRequests"] == 0:
            # With a lossless store below memory (room for every block, nothing dropped) every
            # evicted block is spilled and a miss in memory continues in the store; a restored block
            # joins the tree exactly as a recomputed one would, so memory evolves as in the
            # memory-only run: memory hits and evictions are the same, and memory + store hits are
            # the unbounded hits (every block past the memory match was cached once, so spilled).
            store_hits = base["hitTokens"] - res["hitTokens"]
            res["losslessStorePrediction"] = {"hitTokens": res["hitTokens"], "storeHitTokens": store_hits,
                                              "restoredBlocks": store_hits // B, "evictedBlocks": res["evictedBlocks"],
                                              "spilledBlocks": res["evictedBlocks"]}
        row = {"oracle": res}
        if args.kvctl:
            k, cmd = run_kvctl(args.kvctl, args.trace, cap, args)
            row["kvctl"] = k
            row["kvctlCommand"] = cmd
            row["equal"] = all(res[f] == k[f] for f in COMPARED)
            row["differences"] = {f: [res[f], k[f]] for f in COMPARED if res[f] != k[f]}
        rows.append(row)
        if not args.json:
            o = res
            line = (f"capacity {o['capacityBlocks']:>9,}  prompt {o['promptTokens']:,}  hit {o['hitTokens']:,} "
                    f"({100 * o['hitRate']:.2f} %)  evicted {o['evictedBlocks']:,}  rejected {o['rejectedRequests']}  "
                    f"oracle {o['seconds']} s")
            if args.kvctl:
                line += f"  | kvctl hit {row['kvctl']['hitTokens']:,} evicted {row['kvctl']['evictedBlocks']:,} " \
                        f"rejected {row['kvctl']['rejectedRequests']} ({row['kvctl']['wall']} s)  " \
                        + ("EQUAL" if row["equal"] else f"DIFFERENT {row['differences']}")
            print(line, flush=True)
    summary = {"trace": args.trace, "blockSize": B, "hashBlockTokens": H, "limit": args.limit,
               "unboundedCapacity": unbounded, "parseSeconds": round(parse_s, 2),
               "exactTokens": args.exact_tokens, "variant": args.variant, "points": rows}
    if args.json:
        print(json.dumps(summary, indent=1))
    if args.kvctl and not all(r["equal"] for r in rows):
        sys.exit(1)


if __name__ == "__main__":
    main()
