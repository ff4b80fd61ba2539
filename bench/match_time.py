"""Time the duplicate matching at ImageNet scale: 1.33M random 64-bit phashes and digests plus planted pairs.

    python -m bench.match_time [--n 1331167] [--planted 1000]

Plants `planted` exact copies and `planted` near copies (1-3 bits flipped) and checks every one is found.
"""

from __future__ import annotations

import time

import click
import numpy as np

from shards.duplicates import exact_pairs, find_groups, near_pairs


@click.command()
@click.option("--n", type=int, default=1_281_167 + 50_000, show_default=True)
@click.option("--planted", type=int, default=1000, show_default=True)
def main(n: int, planted: int) -> None:
    rng = np.random.default_rng(0)
    phashes = rng.integers(0, 2**63, n, dtype=np.int64).astype(np.uint64) * np.uint64(2) + rng.integers(0, 2, n).astype(
        np.uint64
    )
    digests = rng.integers(0, 2**63, n, dtype=np.int64).astype(np.uint64)
    src = rng.choice(n, 2 * planted, replace=False)
    dst = rng.choice(np.setdiff1d(np.arange(n), src), 2 * planted, replace=False)
    exact_src, exact_dst, near_src, near_dst = np.split(np.r_[src, dst], [planted, 2 * planted, 3 * planted])
    digests[exact_dst], phashes[exact_dst] = digests[exact_src], phashes[exact_src]
    for a, b in zip(near_src, near_dst, strict=True):
        flips = rng.choice(64, rng.integers(1, 4), replace=False)
        phashes[b] = phashes[a] ^ np.uint64(sum(1 << int(f) for f in flips))

    start = time.perf_counter()
    i, j = near_pairs(phashes)
    near_s = time.perf_counter() - start
    start = time.perf_counter()
    ei, ej = exact_pairs(digests)
    exact_s = time.perf_counter() - start
    found = set(zip(i.tolist(), j.tolist(), strict=True))
    want = {(min(a, b), max(a, b)) for a, b in zip(near_src.tolist(), near_dst.tolist(), strict=True)}
    want_exact = {(min(a, b), max(a, b)) for a, b in zip(exact_src.tolist(), exact_dst.tolist(), strict=True)}
    print(f"{n:,} hashes, {planted} planted exact + {planted} planted near (1-3 bits) pairs")
    print(
        f"near_pairs (4 x 16-bit bands, verify by Hamming <= 3): {near_s:.2f} s, {len(found):,} pairs, "
        f"planted found {len(want & found)}/{len(want)}, others {len(found - want - want_exact)}"
    )
    print(
        f"exact_pairs (digest sort): {exact_s:.2f} s, {len(ei):,} pairs, planted found "
        f"{len(want_exact & set(zip(np.minimum(ei, ej).tolist(), np.maximum(ei, ej).tolist(), strict=True)))}"
        f"/{len(want_exact)}"
    )
    ids = [f"train/{k}" for k in range(n)]
    start = time.perf_counter()
    groups = find_groups(ids, [f"{d:016x}" for d in digests], [f"{p:016x}" for p in phashes])
    print(
        f"find_groups end to end (hex parsing, both kinds, components): {time.perf_counter() - start:.2f} s, "
        f"{len(groups):,} groups"
    )


if __name__ == "__main__":
    main()
