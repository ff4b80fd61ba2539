"""pipelines.preview: the grid PNG of augmented training crops, through the library and the CLI."""

from __future__ import annotations

import os

import numpy as np
from click.testing import CliRunner
from PIL import Image

from cli import main
from pipelines.preview import write_preview


def test_preview_is_a_real_picture(sample_shards, tmp_path):
    out = write_preview(sample_shards, str(tmp_path / "grid.png"), count=6, seed=1)
    with Image.open(out) as image:
        assert image.format == "PNG" and image.width >= 400 and image.height >= 100
        pixels = np.asarray(image.convert("RGB")).astype(np.float32)
    assert pixels.std() > 20  # photographs, not a blank or flat canvas
    # the crops are denormalised: photo tiles hold mid-tones, not the near-black of mean-subtracted values
    assert 60 < pixels.mean() < 245


def test_preview_command(sample_shards, tmp_path):
    png = str(tmp_path / "p.png")
    result = CliRunner().invoke(main, ["preview", "--shards", sample_shards, "--out", png, "--n", "4"])
    assert result.exit_code == 0, result.output
    assert os.path.isfile(png) and f"wrote {png}" in result.output
    with Image.open(png) as image:
        assert image.format == "PNG"
