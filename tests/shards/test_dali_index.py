"""DALI's index format: what the writer writes is what DALI's own wds2idx writes, parsed and checked in one place."""

import pytest

from shards import dali_index

SAMPLES = [
    [("jpg", 1536, 1000, "a.jpg"), ("lbl", 3072, 4, "a.lbl")],
    [("jpg", 4096, 2000, "b.jpg"), ("lbl", 6656, 4, "b.lbl")],
]


def test_round_trip():
    index = dali_index.parse(dali_index.format_index(SAMPLES))
    assert index.version == (1, 2) and index.count == 2
    assert index.sample(1)["jpg"] == dali_index.Component("jpg", 4096, 2000, "b.jpg")
    assert index.key(0) == "a"


def test_versions_compare_as_numbers():
    text = dali_index.format_index(SAMPLES).replace("v1.2", "v1.10", 1)
    assert dali_index.parse(text).version > (1, 2)  # as strings, "v1.10" < "v1.2"
    assert dali_index.parse(text).sample(0)["lbl"].name == "a.lbl"  # read with the v1.2 layout (names)
    v11 = "v1.1 1\njpg 1536 1000 lbl 3072 4\n"
    assert dali_index.parse(v11).sample(0)["lbl"] == dali_index.Component("lbl", 3072, 4, None)


@pytest.mark.parametrize(
    "text, words",
    [
        ("", "is not 'vMAJOR.MINOR COUNT'"),
        ("v2.0 1\n", "not one this tool reads"),
        ("vX.1 1\n", "is not a number"),
    ],
)
def test_foreign_text_is_named(text, words):
    assert words in dali_index.problem(text, 1)


def test_problems_name_the_sample():
    text = dali_index.format_index(SAMPLES)
    assert dali_index.problem(text, 2, required=("jpg", "lbl"), sizes={"lbl": 4}) is None
    assert "lists 2 samples" in dali_index.problem(text, 3)
    assert dali_index.problem(text, 2, required=("json",)).startswith("sample 'a' has no .json component")
    assert "sample 'a' has a .lbl of 4 bytes, not 8" in dali_index.problem(text, 2, sizes={"lbl": 8})
