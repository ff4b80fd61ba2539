"""Crafted hard inputs, each as the bytes ImageNet (or a user's folder) could hand us, made from a real photo."""

from __future__ import annotations

import io
import struct
import zlib

import numpy as np
from PIL import Image

from shards.demo_data import load_photos


def photo(size=(320, 240)) -> Image.Image:
    _, im = load_photos(1)[0]  # chelsea the cat
    return im.convert("RGB").resize(size, Image.Resampling.BICUBIC)


def encode(image: Image.Image, fmt: str, **kw) -> bytes:
    buf = io.BytesIO()
    image.save(buf, fmt, **kw)
    return buf.getvalue()


def cmyk_jpeg() -> bytes:
    return encode(photo().convert("CMYK"), "JPEG", quality=95)


def png_named_jpeg() -> bytes:
    return encode(photo(), "PNG")


def grayscale_jpeg() -> bytes:
    return encode(photo().convert("L"), "JPEG", quality=95)


def palette_with_transparency() -> bytes:
    im = photo().convert("P", palette=Image.Palette.ADAPTIVE, colors=64)
    return encode(im, "PNG", transparency=0)


def rgba_png() -> bytes:
    im = photo().convert("RGBA")
    alpha = np.full((im.height, im.width), 255, np.uint8)
    alpha[:, : im.width // 4] = 0  # left quarter fully transparent
    im.putalpha(Image.fromarray(alpha))
    return encode(im, "PNG")


def gray16_png() -> bytes:
    gray = np.asarray(photo().convert("L"), np.uint16) * 257  # full 16-bit range
    return encode(Image.fromarray(gray), "PNG")  # uint16 -> mode I;16


def tiny_jpeg() -> bytes:
    return encode(photo((24, 18)), "JPEG", quality=95)


def handwritten_digit() -> bytes:
    """A real handwritten digit (UCI digits, shipped inside scikit-learn): 8x8 pixels, 17 grey levels, as PNG."""
    import gzip
    import importlib.util
    import os

    folder = list(importlib.util.find_spec("sklearn").submodule_search_locations)[0]
    with gzip.open(os.path.join(folder, "datasets", "data", "digits.csv.gz")) as f:
        first = np.array(f.readline().decode().split(","), np.float64)[:64].reshape(8, 8)
    ink = np.rint(255 - first * 255 / 16).astype(np.uint8)  # dark ink on white paper
    return encode(Image.fromarray(ink), "PNG")


def huge_jpeg() -> bytes:
    return encode(photo((2600, 1800)), "JPEG", quality=90)


def truncated_jpeg() -> bytes:
    """Cut inside its scan data: half the picture is missing."""
    data = encode(photo(), "JPEG", quality=95)
    return data[: len(data) // 2]


def eoi_missing_jpeg() -> bytes:
    """Whole scan data, only the final end-of-image marker (FF D9) missing."""
    data = encode(photo(), "JPEG", quality=95)
    assert data[-2:] == b"\xff\xd9"
    return data[:-2]


def cut_before_eoi_jpeg() -> bytes:
    """The end marker and the last byte of scan data missing: one byte short of repairable."""
    return eoi_missing_jpeg()[:-1]


def progressive_cut_between_scans() -> bytes:
    """A progressive JPEG whose last scans are missing (it would decode, blurred, without a warning)."""
    import re

    data = encode(photo(), "JPEG", quality=95, progressive=True)
    scans = [m.start() for m in re.finditer(rb"\xff\xda", data)]
    return data[: scans[-2]]


def not_an_image() -> bytes:
    return b"this is a text file that somebody named .JPEG\n" * 10


def decompression_bomb() -> bytes:
    """A valid PNG header declaring 20000 x 20000 pixels (400 Mpx, over PIL's bomb limit) and a tiny body."""

    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))

    ihdr = struct.pack(">IIBBBBB", 20000, 20000, 1, 0, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0" * 100)) + chunk(b"IEND", b"")
    )


READABLE = {  # name -> maker: every one must become a 256x256 RGB sample
    "cmyk": cmyk_jpeg,
    "png_as_jpeg": png_named_jpeg,
    "gray": grayscale_jpeg,
    "palette": palette_with_transparency,
    "rgba": rgba_png,
    "gray16": gray16_png,
    "tiny": tiny_jpeg,
    "huge": huge_jpeg,
    "handwriting": handwritten_digit,
}
REPAIRABLE = {"eoi_missing": eoi_missing_jpeg}  # name -> maker: kept, and listed as repaired
UNREADABLE = {  # name -> (maker, words the skip reason contains)
    "truncated": (truncated_jpeg, "truncated"),
    "cut_before_eoi": (cut_before_eoi_jpeg, "truncated"),
    "progressive_cut": (progressive_cut_between_scans, "truncated"),
    "empty": (lambda: b"", "empty"),
    "text": (not_an_image, "unreadable"),
    "bomb": (decompression_bomb, "decompression bomb"),
}
