"""The image transform: every kind of input becomes the right 256x256 RGB image, or a clear skip reason."""

import io

import hard_cases as hc
import numpy as np
import pytest
from PIL import Image

from shards.transform import (
    EOI,
    BadImage,
    add_missing_eoi,
    center_crop,
    decode_rgb,
    encode_jpeg,
    open_image,
    resize_and_center_crop,
    resize_shorter_side,
    to_rgb,
    transform,
)


def reference(image: Image.Image, size=256) -> np.ndarray:
    """The two-step definition: resize the shorter side, then crop the centre."""
    return np.asarray(center_crop(resize_shorter_side(image.convert("RGB"), size), size), np.float64)


def mean_abs(a, b) -> float:
    return float(np.abs(np.asarray(a, np.float64) - np.asarray(b, np.float64)).mean())


@pytest.mark.parametrize(
    "size, tolerance",
    [
        # where the two-step geometry is exact (integral crop offset), both give the same pixels
        ((768, 512), 0.6),
        ((300, 600), 0.6),
        ((128, 64), 0.6),
        ((256, 256), 0.6),
        ((512, 512), 0.6),
        # elsewhere the two-step crop is off-centre by the rounding of its offset (< 1 px); one step is exact
        ((320, 240), 6.0),
        ((240, 320), 6.0),
        ((700, 300), 6.0),
        ((100, 60), 6.0),
        ((24, 18), 6.0),
    ],
)
def test_one_step_resize_crop_against_the_two_step_reference(size, tolerance):
    image = hc.photo(size)
    out = resize_and_center_crop(np.asarray(image), 256)
    assert out.shape == (256, 256, 3) and out.dtype == np.uint8
    assert mean_abs(out, reference(image)) < tolerance


@pytest.mark.parametrize("size", [(9, 8), (8, 9), (17, 16), (33, 32), (57, 16), (375, 300)])
def test_odd_width_minus_height_matches_two_step_reference(size):
    """The centre square starts half a source pixel off the grid: 8 px -> 256 px makes that 16 output pixels.
    At these sizes the two-step geometry is exact (integral resized width and crop offset), so both must agree."""
    image = hc.photo(size)
    assert mean_abs(resize_and_center_crop(np.asarray(image), 256), reference(image)) < 0.15


def test_crop_is_the_exact_fractional_centre_box_for_any_size():
    """Against PIL resampling exactly the centred square box (fractional), over random ImageNet-like sizes."""
    rng = np.random.default_rng(0)
    errors = []
    for _ in range(16):
        w, h = (int(v) for v in rng.integers(150, 700, 2))
        image = hc.photo((w, h))
        side = min(w, h)
        box = ((w - side) / 2, (h - side) / 2, (w + side) / 2, (h + side) / 2)
        exact = image.resize((256, 256), Image.Resampling.BICUBIC, box=box)
        errors.append(mean_abs(resize_and_center_crop(np.asarray(image), 256), exact))
    assert len(errors) == 16 and np.mean(errors) < 0.35 and max(errors) < 1.5


@pytest.mark.parametrize("name", sorted(hc.READABLE))
def test_every_readable_kind_becomes_256_rgb(name):
    jpeg, pixels, original = transform(hc.READABLE[name](), size=256, quality=90)
    assert pixels.shape == (256, 256, 3) and pixels.dtype == np.uint8
    decoded = Image.open(io.BytesIO(jpeg))
    assert decoded.format == "JPEG" and decoded.mode == "RGB" and decoded.size == (256, 256)
    assert not decoded.info.get("progressive") and not decoded.info.get("progression")
    assert (np.asarray(decoded) == pixels).all()  # the statistics see exactly what readers decode
    assert original[0] > 0 and original[1] > 0


@pytest.mark.parametrize("name", ["cmyk", "png_as_jpeg", "palette", "huge"])
def test_colour_kinds_match_the_rgb_photo(name):
    """CMYK is not inverted, a PNG named .JPEG is decoded as PNG, the DCT-draft path keeps the picture."""
    _, pixels, original = transform(hc.READABLE[name]())
    expected = reference(hc.photo(original))
    assert mean_abs(pixels, expected) < 6.0


def test_grayscale_and_16_bit_become_equal_channels_with_full_range():
    _, gray8, _ = transform(hc.grayscale_jpeg())
    _, gray16, _ = transform(hc.gray16_png())
    for pixels in (gray8, gray16):
        assert (pixels[..., 0] == pixels[..., 1]).all() and (pixels[..., 1] == pixels[..., 2]).all()
    assert 50 < gray16.mean() < 200  # neither clipped to white nor crushed to black by a naive I;16 -> L
    assert mean_abs(gray8, gray16) < 3.0


def test_transparent_pixels_become_white_background():
    _, pixels, _ = transform(hc.rgba_png())  # left quarter of a 320x240 photo is transparent
    assert pixels[:, :30].min() >= 250  # the centre crop starts 40 px in: its first ~43 columns are white
    assert pixels[:, 60:].mean() < 200


def test_upscales_tiny_images():
    _, pixels, original = transform(hc.tiny_jpeg())
    assert original == (24, 18) and pixels.shape == (256, 256, 3)
    assert pixels.std() > 5  # an image, not a flat fill


def test_upscales_an_8x8_handwritten_digit():
    _, pixels, original = transform(hc.handwritten_digit())
    assert original == (8, 8) and pixels.shape == (256, 256, 3)
    assert (pixels[..., 0] == pixels[..., 2]).all()  # still grey
    gray = pixels[..., 0].astype(np.float64)
    assert gray[:16, :16].mean() > 200 and gray.min() < 60  # white paper in the corner, dark ink in the stroke


def test_draft_decoding_only_for_large_jpegs():
    image, original = open_image(hc.huge_jpeg(), draft_size=256)
    assert original == (2600, 1800)
    assert min(image.size) >= 256 and image.size[0] < 2600  # DCT-scaled, never below the target
    small, _ = open_image(hc.grayscale_jpeg(), draft_size=256)
    assert small.size == (320, 240)
    fast, original = decode_rgb(hc.huge_jpeg(), 256)  # the libjpeg-turbo path scales in the DCT too
    assert original == (2600, 1800) and 256 <= min(fast.shape[:2]) < 900 and fast.shape[2] == 3


def test_fast_and_pil_decoders_agree():
    for maker in (hc.huge_jpeg, hc.grayscale_jpeg, hc.tiny_jpeg):
        fast, _ = decode_rgb(maker(), 10_000)  # no DCT scaling: full size
        pil = np.asarray(Image.open(io.BytesIO(maker())).convert("RGB"))
        assert fast.shape == pil.shape and mean_abs(fast, pil) < 0.5


@pytest.mark.parametrize("name", sorted(hc.UNREADABLE))
def test_unreadable_inputs_raise_bad_image_with_reason(name):
    maker, words = hc.UNREADABLE[name]
    with pytest.raises(BadImage, match=words):
        transform(maker())


def test_a_jpeg_missing_only_its_end_marker_is_repaired_to_the_whole_picture():
    whole = hc.encode(hc.photo(), "JPEG", quality=95)
    cut = hc.eoi_missing_jpeg()
    with pytest.raises(BadImage, match="truncated"):  # what transform alone says: the writer repairs, then retries
        transform(cut)
    repaired = add_missing_eoi(cut)
    assert repaired == cut + EOI == whole
    assert (transform(repaired)[1] == transform(whole)[1]).all()


@pytest.mark.parametrize("name", ["truncated", "cut_before_eoi", "progressive_cut", "empty", "text"])
def test_only_a_missing_end_marker_is_repaired(name):
    """Cut inside the scan data (libjpeg would pad grey), a progressive JPEG missing scans (it would decode,
    blurred, without a warning), and anything that is not a JPEG stay unreadable."""
    maker, _ = hc.UNREADABLE[name]
    assert add_missing_eoi(maker()) is None
    assert add_missing_eoi(hc.encode(hc.photo(), "JPEG")) is None  # nothing missing: nothing to repair


def test_to_rgb_modes():
    base = hc.photo((64, 48))
    for mode in ("L", "1", "CMYK", "YCbCr", "LA", "RGBA", "P", "I", "F"):
        assert to_rgb(base.convert(mode)).mode == "RGB"


def test_encode_is_deterministic():
    image = np.asarray(hc.photo())
    assert encode_jpeg(image, 90) == encode_jpeg(image, 90)
    assert len(encode_jpeg(image, 95)) > len(encode_jpeg(image, 50))
