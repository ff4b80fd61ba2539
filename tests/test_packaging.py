"""pyproject.toml declares what the code imports, and the wheel holds our four top-level names and nothing else."""

from __future__ import annotations

import ast
import importlib.metadata
import os
import re
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10
    import tomli as tomllib

ROOT = Path(__file__).resolve().parents[1]
INSTALLED = ["cli", "pipelines", "shards", "trainer"]  # the top-level names our users asked for
RUNTIME_EXTRAS = ["s3", "gcs", "cluster"]  # what the installed code may import beyond the dependencies
# our own names: the top-level modules and packages, and the tests' helper modules (each test folder is on sys.path)
OURS = {p.stem for p in ROOT.glob("*.py")} | {p.parent.name for p in ROOT.glob("*/__init__.py")}
OURS |= {p.stem for p in (ROOT / "tests").rglob("*.py")}


def normalized(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()  # PEP 503


def declared(extras: list[str]) -> set[str]:
    """The distributions pyproject.toml names in its dependencies and the given extras."""
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    requirements = project["dependencies"] + [r for e in extras for r in project["optional-dependencies"][e]]
    return {normalized(re.match(r"[A-Za-z0-9][A-Za-z0-9._-]*", r.strip())[0]) for r in requirements}


def imported_names(path: Path) -> set[str]:
    """Top-level names a module imports anywhere in it: import statements, and the names handed as a literal to
    pytest.importorskip, importlib.import_module or importlib.util.find_spec."""
    names = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0:
            names.add(node.module)
        elif (
            isinstance(node, ast.Call)
            and getattr(node.func, "attr", getattr(node.func, "id", None))
            in ("importorskip", "import_module", "find_spec")
            and node.args
            and isinstance(node.args[0], ast.Constant)
            and isinstance(node.args[0].value, str)
        ):
            names.add(node.args[0].value)
    return {name.split(".")[0] for name in names}


def undeclared(files: list[Path], allowed: set[str]) -> dict[str, list[str]]:
    """{import name: [files]} for every third-party import none of whose distributions is in `allowed`. A name no
    installed distribution provides stands for a distribution of its own name."""
    distributions = importlib.metadata.packages_distributions()
    found: dict[str, list[str]] = {}
    for path in files:
        for name in imported_names(path) - OURS - set(sys.stdlib_module_names):
            if not {normalized(d) for d in distributions.get(name, [name])} & allowed:
                found.setdefault(name, []).append(os.path.relpath(path, ROOT))
    return found


def python_files(*tops: str) -> list[Path]:
    return sorted(p for top in tops for p in ([ROOT / top] if top.endswith(".py") else (ROOT / top).rglob("*.py")))


def test_every_import_is_declared_in_pyproject():
    package = python_files("cli.py", "shards", "pipelines", "trainer")
    checkout_only = python_files("bench", "tests")  # run from a checkout, with the test extra installed
    assert undeclared(package, declared(RUNTIME_EXTRAS)) == {}
    assert undeclared(package + checkout_only, declared([*RUNTIME_EXTRAS, "test"])) == {}


def test_an_undeclared_import_is_found(tmp_path):
    module = tmp_path / "card_like.py"
    module.write_text("import os\nimport yaml\nfrom shards import io\n\ndef f():\n    from numpy import linalg\n")
    files = python_files("shards") + [module]
    with_yaml = declared(RUNTIME_EXTRAS)
    assert "pyyaml" in with_yaml
    assert undeclared([module], with_yaml) == {}
    without_yaml = with_yaml - {"pyyaml"}
    assert undeclared(files, without_yaml) == {"yaml": ["shards/card.py", os.path.relpath(module, ROOT)]}
    assert undeclared(files, without_yaml - {"numpy"}).keys() >= {"yaml", "numpy"}


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    """The wheel `pip install .` builds, from a copy of the checkout's sources (the build writes beside them)."""
    src, out = tmp_path_factory.mktemp("src"), tmp_path_factory.mktemp("wheel")
    shutil.copy(ROOT / "pyproject.toml", src)
    for top in python_files(*[p.name for p in ROOT.iterdir() if p.suffix == ".py" or (p / "__init__.py").exists()]):
        (src / top.relative_to(ROOT)).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(top, src / top.relative_to(ROOT))
    command = [sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation", "--no-index"]
    subprocess.run([*command, "-w", str(out), str(src)], check=True, capture_output=True)
    (built,) = out.glob("alexnet_wds-*.whl")
    return built


def test_the_wheel_installs_our_top_level_names_only(wheel, tmp_path):
    names = zipfile.ZipFile(wheel).namelist()
    assert sorted({n.split("/")[0].removesuffix(".py") for n in names if ".dist-info/" not in n}) == INSTALLED
    packaged = {str(p.relative_to(ROOT)) for p in python_files(*INSTALLED[1:])}
    assert packaged <= set(names)  # no subpackage left behind
    entry_points = next(n for n in names if n.endswith(".dist-info/entry_points.txt"))
    assert "alexnet-wds = cli:main" in zipfile.ZipFile(wheel).read(entry_points).decode()

    site, elsewhere = tmp_path / "site", tmp_path / "elsewhere"
    zipfile.ZipFile(wheel).extractall(site)
    elsewhere.mkdir()
    env = {**os.environ, "PYTHONPATH": str(site)}
    where = "import cli, shards, trainer; print(cli.__file__, shards.__file__, trainer.__file__)"
    done = subprocess.run([sys.executable, "-c", where], cwd=elsewhere, env=env, capture_output=True, text=True)
    assert [Path(f).parent for f in done.stdout.split()] == [site, site / "shards", site / "trainer"], done.stderr
    console_script = [sys.executable, "-c", "import cli; cli.main()"]  # what the alexnet-wds script runs
    done = subprocess.run([*console_script, "--help"], cwd=elsewhere, env=env, capture_output=True, text=True)
    assert done.returncode == 0 and "Convert raw ImageNet" in done.stdout, done.stderr
    done = subprocess.run([*console_script, "bench", "shard"], cwd=elsewhere, env=env, capture_output=True, text=True)
    assert done.returncode == 2, done.stderr
    assert done.stderr.startswith("error: the benchmarks run from a checkout") and done.stderr.count("\n") == 1
