"""The measurement scripts (`python -m bench.NAME`) import and take their options: nothing else runs them."""

from __future__ import annotations

import importlib

import pytest
from click.testing import CliRunner

WITH_OPTIONS = ["match_time", "phash_threshold", "worker_cost"]


@pytest.mark.parametrize("name", [*WITH_OPTIONS, "partial_sum_size"])
def test_script_imports(name):
    assert callable(importlib.import_module(f"bench.{name}").main)


@pytest.mark.parametrize("name", WITH_OPTIONS)
def test_script_parses_its_options(name):
    result = CliRunner().invoke(importlib.import_module(f"bench.{name}").main, ["--help"])
    assert result.exit_code == 0 and result.output.startswith("Usage:") and "--" in result.output, result.output
