"""The image transform, defined once: any image bytes -> RGB -> shorter side to SIZE -> centre SIZExSIZE -> JPEG.

Pure functions of bytes and PIL images; `convert.py` runs them in worker processes.
"""
from __future__ import annotations

import io
import warnings

import numpy as np
from PIL import Image, ImageFile

# Truncated files are an error, never half an image (PIL's default, stated so nobody flips it globally).
ImageFile.LOAD_TRUNCATED_IMAGES = False

RESIZE_FILTER = "bicubic"  # PIL's antialiased bicubic (support scales with the reduction factor)
FILTERS = {"bicubic": Image.Resampling.BICUBIC, "bilinear": Image.Resampling.BILINEAR,
           "lanczos": Image.Resampling.LANCZOS}
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


def center_square(width: float, height: float) -> tuple[float, float, float, float]:
    """The centred square of side min(width, height), as a (left, top, right, bottom) box in pixels."""
    side = min(width, height)
    left, top = (width - side) / 2, (height - side) / 2
    return left, top, left + side, top + side


def resize_and_center_crop(image: Image.Image, size: int, resample: str = RESIZE_FILTER) -> Image.Image:
    """Shorter side resized to `size`, then the centre size x size crop, in one antialiased resampling.

    PIL's `resize(box=...)` resamples only the centred square of the source: the same pixels as resizing the
    whole image and cropping (see `resize_shorter_side` + `center_crop`), without the intermediate image or
    the rounding of its size. Images smaller than `size` are upscaled the same way.
    """
    return image.resize((size, size), FILTERS[resample], box=center_square(*image.size))


def resize_shorter_side(image: Image.Image, size: int, resample: str = RESIZE_FILTER) -> Image.Image:
    """Reference (two-step) path: scale so the shorter side is `size`."""
    w, h = image.size
    scale = size / min(w, h)
    return image.resize((max(size, round(w * scale)), max(size, round(h * scale))), FILTERS[resample])


def center_crop(image: Image.Image, size: int) -> Image.Image:
    w, h = image.size
    left, top = (w - size) // 2, (h - size) // 2
    return image.crop((left, top, left + size, top + size))


def encode_jpeg(image: Image.Image, quality: int) -> bytes:
    """Baseline (not progressive) 4:2:0 JPEG without metadata: what nvJPEG's hardware decoder reads fastest."""
    buf = io.BytesIO()
    image.save(buf, "JPEG", quality=quality, subsampling="4:2:0", optimize=False, progressive=False)
    return buf.getvalue()


def transform(data: bytes, size: int = 256, quality: int = 90, resample: str = RESIZE_FILTER):
    """Image bytes -> (JPEG bytes, RGB uint8 array HWC of the decoded JPEG, original (width, height)).

    The pixels returned are decoded back from the JPEG written, i.e. exactly what a reader of the shards
    gets: statistics over pre-encoding pixels would overstate the chroma variance that 4:2:0 JPEG removes
    (PCA eigenvalues off by 2-3%). Decoding 256x256 costs ~1 ms, a small share of the source decode.
    """
    image, original = open_image(data, draft_size=size)
    image = resize_and_center_crop(to_rgb(image), size, resample)
    jpeg = encode_jpeg(image, quality)
    with Image.open(io.BytesIO(jpeg)) as decoded:
        pixels = np.asarray(decoded.convert("RGB"))
    return jpeg, pixels, original
