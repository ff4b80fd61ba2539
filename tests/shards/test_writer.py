"""The writer's tar members: its USTAR headers are tarfile's, byte for byte."""

import io
import tarfile

import pytest

from shards import dali_index
from shards.writer import TarBuilder, tar_header, tarfile_header


@pytest.mark.parametrize(
    "name, size",
    [
        ("n01440764_10026.jpg", 23_456),
        ("ILSVRC2012_val_00000001.json", 97),
        ("k.cls", 0),
        ("é" * 30 + ".lbl", 4),  # UTF-8 name
        ("x" * 96 + ".jpg", 1),  # 100 bytes: the longest name without a prefix
        ("x" * 8 + ".jpg", 8**11 - 1),  # the largest size of the octal field
    ],
)
def test_tar_header_is_tarfiles_header(name, size):
    assert tar_header(name, size) == tarfile_header(name, size)


def test_names_and_sizes_tarfile_refuses_are_refused_alike():
    for name, size in [("x" * 101, 1), ("k.jpg", 8**11)]:
        with pytest.raises(ValueError) as ours:
            tar_header(name, size)
        with pytest.raises(ValueError) as theirs:
            tarfile_header(name, size)
        assert str(ours.value) == str(theirs.value)


def test_tar_builder_bytes_read_back_with_tarfile():
    builder = TarBuilder()
    members = {"a.jpg": b"\xff\xd8" + b"x" * 1000, "a.cls": b"7", "b.jpg": b"y" * 512, "b.cls": b""}
    for key in ("a", "b"):
        builder.add(key, [(ext, members[f"{key}.{ext}"]) for ext in ("jpg", "cls")])
    data, index = builder.finish()
    assert len(data) % tarfile.RECORDSIZE == 0
    with tarfile.open(fileobj=io.BytesIO(data)) as tar:
        read = {m.name: tar.extractfile(m).read() for m in tar}
        assert all(m.mtime == 0 and m.mode == 0o644 and m.uid == m.gid == 0 for m in tar.getmembers())
    assert read == members
    parsed = dali_index.parse(index)  # the DALI index points at each member's bytes
    assert parsed.count == 2
    for number, key in enumerate(("a", "b")):
        for ext, component in parsed.sample(number).items():
            assert data[component.offset : component.offset + component.size] == members[f"{key}.{ext}"]
