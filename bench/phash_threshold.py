"""Choose the near-duplicate threshold by measurement: precision and recall of "phash distance <= T" on labelled
pairs built from real photographs (scikit-image's sample data, as shards/demo_data.py uses).

    python -m bench.phash_threshold [--views 6] [--max-t 16]

Every image goes through the real shard transform (decode, resize the shorter side to 256, centre crop, JPEG)
before it is hashed, exactly as in `cli.py shard`. From each photograph, `views` base views (random crops of
45-80% of its area at ImageNet-like resolution, JPEG quality 90). Pairs:
  true (the same picture): a base view vs the same view
    - re-encoded at JPEG quality 60-75,
    - resized by 10-20% (down or up) and re-encoded,
    - reframed: the crop window shifted by 2-4% of its size;
  false (different pictures):
    - different photographs (every base view against every view of the other photos),
    - partly overlapping crops of one photograph (the window shifted by 25-40%),
    - look-alikes: the two motorcycle photographs of a stereo pair, different faces (LFW), textures
      (brick/grass/gravel), text pages, the two cat photos (chelsea, cat).
Precision = true pairs found / all pairs found, over these pairs (different-photo pairs are many, as in a large
dataset); recall = true pairs found / true pairs.
"""

from __future__ import annotations

import io
import itertools
import os
import random

import click
import numpy as np
from PIL import Image

from shards.imagehash import phash
from shards.transform import transform

PHOTOS = [
    "astronaut",
    "brick",
    "camera",
    "cat",
    "chelsea",
    "coffee",
    "coins",
    "grass",
    "gravel",
    "hubble_deep_field",
    "immunohistochemistry",
    "moon",
    "page",
    "retina",
    "rocket",
    "text",
    "clock",
    "cell",
    "colorwheel",
    "logo",
]
LOOKALIKE_SETS = [
    ("motorcycle_left", "motorcycle_right"),
    ("brick", "grass", "gravel"),
    ("page", "text"),
    ("cat", "chelsea"),
]


def load(name: str) -> Image.Image:
    import skimage.data
    from skimage import io as skio

    if name.startswith("motorcycle"):
        array = skio.imread(os.path.join(os.path.dirname(skimage.data.__file__), f"{name}.png"))
    else:
        array = getattr(skimage.data, name)()
    image = Image.fromarray(array)
    return image.convert("RGB")


def jpeg(image: Image.Image, quality: int = 90) -> bytes:
    buf = io.BytesIO()
    image.save(buf, "JPEG", quality=quality)
    return buf.getvalue()


def hashed(data: bytes) -> int:
    return int(phash(transform(data)[1]), 16)


def window(photo: Image.Image, rng: random.Random) -> tuple[int, int, int, int]:
    w, h = photo.size
    area = rng.uniform(0.45, 0.8) * w * h
    aspect = rng.uniform(3 / 4, 4 / 3)
    cw, ch = min(w, int((area * aspect) ** 0.5)), min(h, int((area / aspect) ** 0.5))
    x, y = rng.randint(0, w - cw), rng.randint(0, h - ch)
    return x, y, x + cw, y + ch


def render(photo: Image.Image, box, rng: random.Random, shorter: int) -> Image.Image:
    view = photo.crop(box)
    scale = shorter / min(view.size)
    return view.resize(
        (max(1, round(view.width * scale)), max(1, round(view.height * scale))), Image.Resampling.BICUBIC
    )


def shifted(photo: Image.Image, box, fraction: float, rng: random.Random):
    """The window moved by `fraction` of its size in a random direction, kept inside the photo."""
    x0, y0, x1, y1 = box
    dx = int(round((x1 - x0) * fraction)) * rng.choice([-1, 1])
    dy = int(round((y1 - y0) * fraction * rng.random())) * rng.choice([-1, 1])
    dx = max(-x0, min(dx, photo.width - x1))
    dy = max(-y0, min(dy, photo.height - y1))
    return x0 + dx, y0 + dy, x1 + dx, y1 + dy


def build(views: int, seed: int = 0) -> tuple[list[tuple[int, int, str]], list[tuple[int, int, str]]]:
    """(true pairs, false pairs) as (hash a, hash b, kind)."""
    rng = random.Random(seed)
    true, false, base = [], [], {}
    names = sorted(set(PHOTOS) | {n for s in LOOKALIKE_SETS for n in s})
    for name in names:
        photo = load(name)
        base[name] = []
        for _ in range(views):
            box = window(photo, rng)
            shorter = rng.randint(200, 400)
            view = render(photo, box, rng, shorter)
            h = hashed(jpeg(view))
            base[name].append(h)
            true.append((h, hashed(jpeg(view, rng.randint(60, 75))), "re-encoded q60-75"))
            factor = rng.uniform(0.8, 0.9) if rng.random() < 0.5 else rng.uniform(1.1, 1.2)
            resized = view.resize((round(view.width * factor), round(view.height * factor)), Image.Resampling.BICUBIC)
            true.append((h, hashed(jpeg(resized, rng.randint(85, 95))), "resized 10-20%"))
            moved = shifted(photo, box, rng.uniform(0.02, 0.04), rng)
            true.append((h, hashed(jpeg(render(photo, moved, rng, shorter))), "reframed 2-4%"))
            overlap = shifted(photo, box, rng.uniform(0.25, 0.4), rng)
            false.append((h, hashed(jpeg(render(photo, overlap, rng, shorter))), "overlapping crops of one photo"))
    for a, b in itertools.combinations(names, 2):
        for ha in base[a]:
            for hb in base[b]:
                false.append((ha, hb, "different photos"))
    for group in LOOKALIKE_SETS:  # also counted among "different photos"; listed again to see them apart
        for a, b in itertools.combinations(group, 2):
            false += [(ha, hb, "look-alikes") for ha in base[a] for hb in base[b]]
    import skimage.data

    faces = skimage.data.lfw_subset()[:60]
    face_hashes = [
        hashed(
            jpeg(
                Image.fromarray(f if f.dtype == np.uint8 else (f * 255).astype(np.uint8)).resize(
                    (200, 200), Image.Resampling.BICUBIC
                )
            )
        )
        for f in faces
    ]
    false += [(a, b, "look-alikes (faces)") for a, b in itertools.combinations(face_hashes, 2)]
    return true, false


def distance(a: int, b: int) -> int:
    return (a ^ b).bit_count()


@click.command()
@click.option("--views", type=int, default=6, show_default=True)
@click.option("--max-t", type=int, default=16, show_default=True)
def main(views: int, max_t: int) -> None:
    true, false = build(views)
    kinds = sorted({k for *_, k in true}) + sorted({k for *_, k in false})
    counts = {k: sum(1 for *_, kk in true + false if kk == k) for k in kinds}
    print(f"{len(true)} true pairs, {len(false)} false pairs: " + ", ".join(f"{k} {n}" for k, n in counts.items()))
    print(f"{'T':>3} {'precision':>9} {'recall':>7}  " + "  ".join(f"{k[:14]:>14}" for k in kinds))
    for t in range(max_t + 1):
        tp = sum(distance(a, b) <= t for a, b, _ in true)
        fp = sum(distance(a, b) <= t for a, b, k in false if k != "look-alikes")  # look-alikes: a subset
        found = {k: sum(distance(a, b) <= t for a, b, kk in true + false if kk == k) / counts[k] for k in kinds}
        precision = tp / (tp + fp) if tp + fp else 1.0
        print(f"{t:>3} {precision:>9.4f} {tp / len(true):>7.3f}  " + "  ".join(f"{found[k]:>14.3f}" for k in kinds))
    print("columns after recall: share of each kind's pairs within distance T")


if __name__ == "__main__":
    main()
