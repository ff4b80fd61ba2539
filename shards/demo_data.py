"""A small ImageNet-shaped sample made from real photographs that ship inside scikit-image and matplotlib.

Used by `make demo`, the benchmarks and the tests. Each class is one photograph; its images are random
crops of it at random scale, aspect ratio and resolution (like ImageNet's variable-resolution JPEGs), so a
network can really learn the classes. Same seed -> same files, byte for byte.
"""

from __future__ import annotations

import importlib.util
import io
import os
import random
import tarfile

from PIL import Image, ImageEnhance

# (ImageNet wnid it stands in for, package, file inside the package)
PHOTOS = [
    ("n02123045", "skimage", "data/chelsea.png"),  # tabby cat
    ("n03355925", "skimage", "data/astronaut.png"),  # flagpole (astronaut with the flag)
    ("n03773504", "skimage", "data/rocket.jpg"),  # missile
    ("n03785016", "skimage", "data/motorcycle_left.png"),  # moped
    ("n04069434", "skimage", "data/camera.png"),  # reflex camera (grayscale photograph)
    ("n07920052", "skimage", "data/coffee.png"),  # espresso
    ("n03763968", "matplotlib", "mpl-data/sample_data/grace_hopper.jpg"),  # military uniform
    ("n09428293", "skimage", "data/hubble_deep_field.jpg"),  # stands in for a tenth-class "seashore"
]


def photo_path(package: str, relative: str) -> str:
    """Path of a data file inside an installed package, without importing the package."""
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise ModuleNotFoundError(f"No module named {package!r}", name=package)  # cli.py names the package
    return os.path.join(list(spec.submodule_search_locations)[0], relative)


def load_photos(num_classes: int) -> list[tuple[str, Image.Image]]:
    if not 1 <= num_classes <= len(PHOTOS):
        raise ValueError(f"num_classes must be 1..{len(PHOTOS)}")
    out = []
    for wnid, package, relative in PHOTOS[:num_classes]:
        with Image.open(photo_path(package, relative)) as im:
            out.append((wnid, im.convert("RGB") if im.mode not in ("RGB", "L") else im.copy()))
    return out


def random_view(photo: Image.Image, rng: random.Random) -> Image.Image:
    """A random crop (35-100% of the area, aspect 3/4..4/3), flip, brightness and resolution of the photo."""
    w, h = photo.size
    for _ in range(10):
        area = rng.uniform(0.35, 1.0) * w * h
        aspect = rng.uniform(3 / 4, 4 / 3)
        cw, ch = int(round((area * aspect) ** 0.5)), int(round((area / aspect) ** 0.5))
        if cw <= w and ch <= h:
            break
    else:
        cw, ch = w, h
    x, y = rng.randint(0, w - cw), rng.randint(0, h - ch)
    view = photo.crop((x, y, x + cw, y + ch))
    if rng.random() < 0.5:
        view = view.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
    view = ImageEnhance.Brightness(view).enhance(rng.uniform(0.8, 1.2))
    shorter = rng.choice([rng.randint(180, 500), rng.randint(256, 420)])  # ImageNet-like resolutions
    scale = shorter / min(cw, ch)
    return view.resize((max(1, round(cw * scale)), max(1, round(ch * scale))), Image.Resampling.BICUBIC)


def jpeg_bytes(image: Image.Image, quality: int = 90) -> bytes:
    buf = io.BytesIO()
    image.save(buf, "JPEG", quality=quality)
    return buf.getvalue()


def sample_images(num_classes: int, per_class: int, seed: int, split: str):
    """Yield (wnid, index, JPEG bytes) for one split; train and val draw different views of each photo."""
    rng = random.Random(f"{seed}-{split}")
    for wnid, photo in load_photos(num_classes):
        for i in range(per_class):
            yield wnid, i, jpeg_bytes(random_view(photo, rng), quality=rng.randint(85, 95))


def make_sample_tree(
    dest: str,
    num_classes: int = 8,
    train_per_class: int = 24,
    val_per_class: int = 6,
    seed: int = 0,
    layout: str = "folders",
) -> str:
    """Write an ImageNet-shaped sample and return the path to pass as `--src`.

    layout "folders": dest/train/<wnid>/<wnid>_<i>.JPEG and dest/val/<wnid>/ILSVRC2012_val_<n>.JPEG.
    layout "flat-val": as folders, but dest/val/*.JPEG flat with dest/LOC_val_solution.csv (Kaggle's format).
    layout "tars": dest/ILSVRC2012_img_train.tar (a tar of per-class tars), dest/ILSVRC2012_img_val.tar (flat)
    and dest/val_labels.txt ('filename wnid' lines), like the original ILSVRC2012 downloads.
    """
    if layout not in ("folders", "flat-val", "tars"):
        raise ValueError(f"unknown layout {layout}")
    os.makedirs(dest, exist_ok=True)
    train = [(w, f"{w}_{i}.JPEG", data) for w, i, data in sample_images(num_classes, train_per_class, seed, "train")]
    val = [
        (w, f"ILSVRC2012_val_{n + 1:08d}.JPEG", data)
        for n, (w, _, data) in enumerate(sample_images(num_classes, val_per_class, seed, "val"))
    ]
    if layout == "tars":
        _write_train_tar(os.path.join(dest, "ILSVRC2012_img_train.tar"), train)
        _write_tar(os.path.join(dest, "ILSVRC2012_img_val.tar"), [(name, data) for _, name, data in val])
        with open(os.path.join(dest, "val_labels.txt"), "w") as f:
            f.writelines(f"{name} {wnid}\n" for wnid, name, _ in val)
        return dest
    for wnid, name, data in train:
        _write_file(os.path.join(dest, "train", wnid, name), data)
    for wnid, name, data in val:
        _write_file(os.path.join(dest, "val", *(() if layout == "flat-val" else (wnid,)), name), data)
    if layout == "flat-val":
        with open(os.path.join(dest, "LOC_val_solution.csv"), "w") as f:
            f.write("ImageId,PredictionString\n")
            f.writelines(f"{name[:-5]},{wnid} 10 20 200 220 \n" for wnid, name, _ in val)
    return dest


def _write_file(path: str, data: bytes) -> None:
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "wb") as f:
        f.write(data)


def _tar_bytes(members: list[tuple[str, bytes]]) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.USTAR_FORMAT) as tar:
        for name, data in members:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return buf.getvalue()


def _write_tar(path: str, members: list[tuple[str, bytes]]) -> None:
    _write_file(path, _tar_bytes(members))


def _write_train_tar(path: str, train: list[tuple[str, str, bytes]]) -> None:
    by_class: dict[str, list[tuple[str, bytes]]] = {}
    for wnid, name, data in train:
        by_class.setdefault(wnid, []).append((name, data))
    _write_tar(path, [(f"{wnid}.tar", _tar_bytes(members)) for wnid, members in sorted(by_class.items())])
