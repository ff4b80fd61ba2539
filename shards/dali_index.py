"""DALI's webdataset index format, written, parsed and checked here and nowhere else.

One `.idx` beside each `.tar`: a header line `v1.2 N`, then one line per sample listing each component as
`ext offset size name` (v1.1 lists `ext offset size`, without the name). This is what DALI's own `wds2idx`
writes; `fn.readers.webdataset` needs it to read a tar without scanning it.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

VERSION = (1, 2)


def index_name(tar_name: str) -> str:
    return tar_name[: -len(".tar")] + ".idx"


def format_index(samples: list[list[tuple[str, int, int, str]]]) -> str:
    """The index text of a tar: per sample, its components as (ext, data offset, size, member name)."""
    lines = [" ".join(f"{ext} {offset} {size} {name}" for ext, offset, size, name in sample) for sample in samples]
    return f"v{VERSION[0]}.{VERSION[1]} {len(samples)}\n" + "".join(line + "\n" for line in lines)


@dataclass(frozen=True)
class Component:
    ext: str
    offset: int
    size: int
    name: str | None  # None in a v1.1 index


@dataclass(frozen=True)
class Index:
    version: tuple[int, ...]
    count: int  # what the header says
    lines: list[str]  # one per sample, unparsed (parsing 1.28M samples up front would cost seconds)

    def sample(self, number: int) -> dict[str, Component]:
        fields = self.lines[number].split()
        stride = 4 if self.version >= (1, 2) else 3
        return {
            fields[i]: Component(
                fields[i], int(fields[i + 1]), int(fields[i + 2]), fields[i + 3] if stride == 4 else None
            )
            for i in range(0, len(fields) - stride + 1, stride)
        }

    def key(self, number: int) -> str:
        """The sample's key (from its member names), or 'number N' in a v1.1 index."""
        names = [c.name for c in self.sample(number).values() if c.name]
        return names[0].split(".", 1)[0] if names else f"number {number}"

    def counts_of(self, ext: str) -> int:
        """How many samples list component `ext` (a fast text count: `ext` starts a line or follows a space)."""
        text = "\n" + "\n".join(self.lines)
        return text.count(f" {ext} ") + text.count(f"\n{ext} ")


def component_table(index: Index, exts: tuple[str, ...]) -> dict[str, np.ndarray]:
    """{ext: int64 array [samples, 2] of (offset, size)} for the components `exts` ((0, 0) where a sample lacks one).
    Vectorised for an index whose samples all list their components in the same order (every index this project
    writes); any other index is read sample by sample."""
    stride = 4 if index.version >= (1, 2) else 3
    n = len(index.lines)
    fields = " ".join(index.lines).split()
    width = len(index.lines[0].split()) if n else 0
    table = np.array(fields, dtype=object).reshape(n, width) if n and len(fields) == n * width else None
    columns = {table[0, i]: i for i in range(0, width - stride + 1, stride)} if table is not None else {}
    uniform = table is not None and all((table[:, i] == ext).all() for ext, i in columns.items())
    out = {}
    for ext in exts:
        if uniform:
            i = columns.get(ext)
            out[ext] = table[:, i + 1 : i + 3].astype(np.int64) if i is not None else np.zeros((n, 2), np.int64)
        else:
            found = [index.sample(k).get(ext) for k in range(n)]
            out[ext] = np.array([(c.offset, c.size) if c else (0, 0) for c in found], np.int64).reshape(n, 2)
    return out


class NotAnIndex(ValueError):
    """The text is not a DALI webdataset index."""


def parse(text: str) -> Index:
    lines = text.splitlines()
    header = lines[0].split() if lines else []
    if len(header) != 2 or not header[0].startswith("v") or not header[1].isdigit():
        raise NotAnIndex(f"first line {lines[:1]} is not 'vMAJOR.MINOR COUNT'")
    try:
        version = tuple(int(part) for part in header[0][1:].split("."))
    except ValueError:
        raise NotAnIndex(f"version {header[0]!r} is not a number") from None
    if version[:1] != (1,) or version < (1, 1):
        raise NotAnIndex(f"version {header[0]} is not one this tool reads (v1.1 or v1.2)")
    return Index(version, int(header[1]), lines[1:])


def problem(text: str, count: int, required: tuple[str, ...] = (), sizes: dict[str, int] | None = None) -> str | None:
    """None when the index describes `count` samples that each have the `required` components (and, for `sizes`,
    exactly that many bytes in the component); else what is wrong, naming the first bad sample."""
    try:
        index = parse(text)
    except NotAnIndex as e:
        return str(e)
    if index.count != count or len(index.lines) != count:
        return f"lists {len(index.lines)} samples (header says {index.count}), the shard has {count}"
    sizes = sizes or {}
    if count and all(index.counts_of(ext) == count for ext in required):
        first = index.sample(0)  # a foreign label size shows in every sample
        if all(first[ext].size == n for ext, n in sizes.items()):
            return None
    for number in range(count):
        sample = index.sample(number)
        missing = [ext for ext in required if ext not in sample]
        if missing:
            return (
                f"sample '{index.key(number)}' has no .{' / .'.join(missing)} component "
                f"(it has {', '.join(sample) or 'none'})"
            )
        for ext, n in sizes.items():
            if sample[ext].size != n:
                return f"sample '{index.key(number)}' has a .{ext} of {sample[ext].size} bytes, not {n}"
    return None
