"""The image transform, defined once: any image bytes -> RGB -> shorter side to SIZE -> centre SIZExSIZE -> JPEG.

Pure functions of bytes, arrays and PIL images; `convert.py` runs them in worker processes.
Fast path (ordinary YCbCr/grayscale JPEGs, i.e. nearly all of ImageNet): libjpeg-turbo through simplejpeg
(decode with DCT scaling for large images, encode), PyTorch's antialiased uint8 resize. Everything else
(CMYK, PNG named .JPEG, palette, alpha, 16-bit) goes through PIL. `resize_shorter_side` + `center_crop`
are the plain PIL reference the fast path is tested against.

torch is imported on the first resize, not with this module: the process that plans a run never resizes, and
the pool's workers get it from the process they are forked from, which imports it once (parallel.py).
"""

from __future__ import annotations

import io
import math
import re
import warnings

import numpy as np
import simplejpeg
from PIL import Image, ImageFile

# Truncated files are an error, never half an image (PIL's default, stated so nobody flips it globally).
ImageFile.LOAD_TRUNCATED_IMAGES = False

RESIZE_FILTER = "bicubic"  # PIL's antialiased bicubic (support scales with the reduction factor)
FILTERS = {"bicubic": Image.Resampling.BICUBIC, "bilinear": Image.Resampling.BILINEAR}  # PIL equivalents
ALPHA_BACKGROUND = (255, 255, 255)  # transparent pixels are composited onto white, as a viewer shows them


class BadImage(Exception):
    """An input that is not a usable image; the message is the reason recorded in the manifest."""


def open_image(data: bytes, draft_size: int | None = None) -> tuple[Image.Image, tuple[int, int]]:
    """Open and fully decode image bytes whatever the file name says (PNG named .JPEG is fine).

    Returns the decoded image and the stored (width, height) before any draft reduction.

    With `draft_size`, a JPEG is decoded with libjpeg's DCT scaling (1/2, 1/4, 1/8) to the smallest scale
    whose shorter side is still >= draft_size: large photos decode several times faster with no visible loss,
    because the antialiased resize that follows would throw those pixels away anyway.
    """
    if not data:
        raise BadImage("empty file")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # EXIF/ICC chatter; real errors raise
            image = Image.open(io.BytesIO(data))
            original = image.size
            if draft_size and image.format == "JPEG":
                w, h = image.size
                scale = max(1, min(w, h) // draft_size)
                image.draft(image.mode, (-(-w // scale), -(-h // scale)))
            image.load()
    except Image.DecompressionBombError as e:
        raise BadImage(f"decompression bomb: {e}") from None
    except Image.UnidentifiedImageError:
        raise BadImage("unreadable image: not a format PIL can open") from None
    except Exception as e:  # PIL raises OSError, SyntaxError, ValueError... for broken files
        raise BadImage(f"unreadable image: {type(e).__name__}: {e}") from None
    if image.width < 1 or image.height < 1:
        raise BadImage("zero-size image")
    return image, original


def to_rgb(image: Image.Image) -> Image.Image:
    """Any PIL mode -> 8-bit RGB: grayscale, CMYK (Adobe-inverted handled by PIL), palette, alpha, 16-bit, float."""
    mode = image.mode
    if mode == "RGB":
        return image
    if mode in ("I;16", "I;16B", "I;16L", "I;16N", "I", "F"):
        return _high_depth_to_rgb(image)
    if mode == "P":
        image = image.convert("RGBA" if "transparency" in image.info else "RGB")
        mode = image.mode
    if mode in ("RGBA", "LA", "La", "RGBa", "PA"):
        rgba = image.convert("RGBA")
        background = Image.new("RGBA", rgba.size, ALPHA_BACKGROUND + (255,))
        return Image.alpha_composite(background, rgba).convert("RGB")
    return image.convert("RGB")  # L, 1, CMYK, YCbCr, LAB, HSV


def _high_depth_to_rgb(image: Image.Image) -> Image.Image:
    """16-bit and 32-bit grayscale: PIL's convert() would clip at 255, so scale the full range down instead."""
    pixels = np.asarray(image).astype(np.float64)
    if image.mode.startswith("I;16") or (image.mode == "I" and pixels.max(initial=0) > 255):
        pixels = pixels / 257.0  # 65535 -> 255
    gray = np.clip(np.rint(pixels), 0, 255).astype(np.uint8)
    return Image.fromarray(np.stack([gray] * 3, axis=-1))


SUPPORT = {"bicubic": 2.0, "bilinear": 1.0}  # kernel radius in source pixels (times the reduction factor)
SEARCH = 8  # extra source pixels of context tried on each axis to put the crop on the output grid


def axis_window(length: int, side: int, size: int, resample: str) -> tuple[int, int, int]:
    """Along one axis: the source pixels [start, stop) to resample and the output offset of the crop.

    The centred square begins at (length - side) / 2, half a pixel off the integer grid when length - side is
    odd. The resampler's output grid starts at `start` with the exact scale size / side, so the crop begins at
    output (centre - start) * size / side. `start` is chosen a few pixels before the square (the filter then
    sees the same neighbours as when the whole image is resized) where that offset is an integer, or, failing
    that, nearest to one: the crop is then where "resize, then crop the centre" puts it, within a small fraction
    of an output pixel (exactly, wherever the two-step result is itself on the integer grid).
    """
    twice = length - side  # twice the start of the square
    first = twice // 2
    margin = math.ceil(SUPPORT[resample] * max(1.0, side / size)) + 1
    best = None
    for start in range(first, max(-1, first - margin - SEARCH - 1), -1):
        num = (twice - 2 * start) * size  # offset = num / (2 * side) output pixels
        offset = (num + side) // (2 * side)
        key = (abs(num - offset * 2 * side), start > 0 and first - start < margin, first - start)
        if best is None or key < best[0]:
            best = (key, start, offset)
    _, start, offset = best
    return start, min(length, -(-(twice + 2 * side) // 2) + margin), offset


def resize_and_center_crop(rgb: np.ndarray, size: int, resample: str = RESIZE_FILTER) -> np.ndarray:
    """Shorter side resized to `size` and the centre size x size crop, as one antialiased resampling.

    Resampling only the centred square (plus the filter's context, `axis_window`) at the exact scale gives the
    pixels of "resize, then crop the centre" (see `resize_shorter_side` + `center_crop`) without computing the
    parts the crop throws away, also when the square starts half a pixel off the grid (odd width - height).
    PyTorch's uint8 antialiased kernels (AVX2) are faster than PIL's (docs/benchmarks.md). Small images are
    upscaled.
    """
    import torch  # on first use (module docstring)

    height, width = rgb.shape[:2]
    side = min(width, height)
    top, bottom, dy = axis_window(height, side, size, resample)
    left, right, dx = axis_window(width, side, size, resample)
    region = rgb[top:bottom, left:right]
    region = torch.from_numpy(region if region.flags.writeable else region.copy())  # torch wants writable memory
    # NHWC memory seen as NCHW (unsqueeze first: its batch stride then spans the image): torch's fast uint8 path,
    # which returns channels_last too; a batch stride of 3 makes it return NCHW, copied over at a cost
    region = region.unsqueeze(0).permute(0, 3, 1, 2).contiguous(memory_format=torch.channels_last)
    scale = size / side
    upsample = {"bicubic": torch.ops.aten._upsample_bicubic2d_aa, "bilinear": torch.ops.aten._upsample_bilinear2d_aa}
    out = upsample[resample](region, [dy + size, dx + size], False, scale, scale)  # grid anchored at (top, left)
    rows = out[0].permute(1, 2, 0).numpy().reshape(dy + size, -1)  # channels_last: each row is contiguous RGB
    # copied as whole rows: numpy copies the 3-D view pixel by pixel, several times slower
    return np.ascontiguousarray(rows[dy:, 3 * dx : 3 * (dx + size)]).reshape(size, size, 3)


def resize_shorter_side(image: Image.Image, size: int, resample: str = RESIZE_FILTER) -> Image.Image:
    """Reference (two-step) path: scale so the shorter side is `size`."""
    w, h = image.size
    scale = size / min(w, h)
    return image.resize((max(size, round(w * scale)), max(size, round(h * scale))), FILTERS[resample])


def center_crop(image: Image.Image, size: int) -> Image.Image:
    w, h = image.size
    left, top = (w - size) // 2, (h - size) // 2
    return image.crop((left, top, left + size, top + size))


def encode_jpeg(rgb: np.ndarray, quality: int) -> bytes:
    """Baseline (not progressive) 4:2:0 JPEG without metadata: what nvJPEG's hardware decoder reads fastest."""
    return simplejpeg.encode_jpeg(np.ascontiguousarray(rgb), quality=quality, colorspace="RGB", colorsubsampling="420")


def decode_jpeg(data: bytes) -> np.ndarray:
    """Our own 256x256 JPEGs back to RGB (libjpeg-turbo, the same pixels PIL decodes)."""
    return simplejpeg.decode_jpeg(data, colorspace="RGB")


SOI, EOI = b"\xff\xd8", b"\xff\xd9"
MISSING_EOI = "end-of-image marker missing after complete scan data: added"
# after the scan header, any marker but a stuffed 0xFF00, a restart marker or fill bytes ends the scan data
_NEXT_MARKER = re.compile(rb"\xff[^\x00\xd0-\xd7\xff]")


def add_missing_eoi(data: bytes) -> bytes | None:
    """`data` with its EOI marker appended if that is all it lacks, else None.

    Cameras and crawlers leave such files; libjpeg, DALI and browsers decode them with a warning. Only what can be
    checked is repaired: a sequential JPEG with one scan of all its components, whose entropy-coded data then
    decodes to the last pixel without a warning. A file cut inside its scan data fails that decode (libjpeg would
    pad it with grey), and a progressive JPEG cut between scans decodes without one (blurred), so both stay
    unreadable.
    """
    if data[:2] != SOI or data[-2:] == EOI:
        return None
    pos, frame_components = 2, None
    while pos + 4 <= len(data) and data[pos] == 0xFF:
        marker, length = data[pos + 1], int.from_bytes(data[pos + 2 : pos + 4], "big")
        if marker == 0xFF:  # fill byte before a marker
            pos += 1
            continue
        if marker in (0xC0, 0xC1) and pos + 9 < len(data):  # baseline / extended sequential, Huffman-coded
            frame_components = data[pos + 9]
        elif 0xC2 <= marker <= 0xCF and marker not in (0xC4, 0xC8, 0xCC):  # progressive, lossless, arithmetic
            return None
        elif marker == 0xDA:
            if frame_components is None or data[pos + 4] != frame_components:
                return None
            if _NEXT_MARKER.search(data, pos + 2 + length):  # another scan, or an EOI followed by other bytes
                return None
            repaired = data + EOI
            try:
                _, _, colorspace, _ = simplejpeg.decode_jpeg_header(repaired)
                simplejpeg.decode_jpeg(repaired, colorspace="CMYK" if colorspace in ("CMYK", "YCCK") else "RGB")
            except ValueError:  # strict: any libjpeg warning (premature end of the scan data) is an error
                return None
            return repaired
        pos += 2 + length
    return None


def decode_rgb(data: bytes, size: int) -> tuple[np.ndarray, tuple[int, int]]:
    """Image bytes -> (RGB uint8 HWC, stored (width, height)); large JPEGs come out DCT-scaled, still >= size."""
    if data[:2] == SOI:
        try:
            height, width, colorspace, _ = simplejpeg.decode_jpeg_header(data)
            if width * height > 2 * Image.MAX_IMAGE_PIXELS:
                raise BadImage(f"decompression bomb: {width}x{height} pixels declared")
            if colorspace in ("YCbCr", "Gray", "RGB"):
                # DCT scaling only for >= 2x reductions: smaller factors decode slower than none (libjpeg-turbo)
                scale = dict(min_height=size, min_width=size, min_factor=2) if min(width, height) >= 2 * size else {}
                return simplejpeg.decode_jpeg(data, colorspace="RGB", **scale), (width, height)
        except ValueError:
            pass  # not a JPEG libjpeg-turbo reads strictly (truncated, exotic): PIL decides below
    image, original = open_image(data, draft_size=size)
    return np.asarray(to_rgb(image)), original


def transform(data: bytes, size: int = 256, quality: int = 90, resample: str = RESIZE_FILTER):
    """Image bytes -> (JPEG bytes, RGB uint8 array HWC of the decoded JPEG, original (width, height)).

    The pixels returned are decoded back from the JPEG written, i.e. exactly what a reader of the shards
    gets: statistics over pre-encoding pixels would overstate the chroma variance that 4:2:0 JPEG removes
    (PCA eigenvalues off by 2-3%).
    """
    rgb, original = decode_rgb(data, size)
    jpeg = encode_jpeg(resize_and_center_crop(rgb, size, resample), quality)
    return jpeg, decode_jpeg(jpeg), original
