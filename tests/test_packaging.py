"""lessons_lib is a real package: its wheel carries the data it reads, and an installed copy works from anywhere."""
import shutil
import subprocess
import sys
import tomllib
import zipfile
from pathlib import Path

import pytest

import lessons_lib

ROOT = Path(__file__).resolve().parent.parent
RESOURCES = ROOT / "lessons_lib" / "resources"


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    """The wheel `pip wheel` builds from a clean copy of the package sources (no network, no build isolation)."""
    src, out = tmp_path_factory.mktemp("src"), tmp_path_factory.mktemp("wheel")
    for name in ("pyproject.toml", "README.md", "LICENSE"):
        shutil.copy(ROOT / name, src / name)
    shutil.copytree(ROOT / "lessons_lib", src / "lessons_lib", ignore=shutil.ignore_patterns("__pycache__"))
    subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation",
                    "--wheel-dir", str(out), str(src)], check=True)
    (path,) = out.glob("lessons_lib-*.whl")
    return path


def test_wheel_holds_every_data_file_and_the_metadata(wheel):
    names = set(zipfile.ZipFile(wheel).namelist())
    data = {p.relative_to(ROOT).as_posix() for p in RESOURCES.rglob("*") if p.is_file()}
    assert {"lessons_lib/resources/gpus.csv", "lessons_lib/resources/text/MANIFEST.json"} <= data
    assert data - names == set(), "package-data in pyproject.toml misses these files"
    assert not [n for n in names if n.endswith(".pyc") or n.startswith(("tests/", "scripts/", "notebooks/"))]
    meta = zipfile.ZipFile(wheel).read(next(n for n in names if n.endswith(".dist-info/METADATA"))).decode()
    assert f"Version: {lessons_lib.__version__}\n" in meta and "Requires-Python: >=3.11" in meta
    assert "License-Expression: Apache-2.0" in meta and "Requires-Dist: torch" in meta
    assert any(n.endswith(".dist-info/licenses/LICENSE") for n in names)


def test_installed_wheel_reads_its_data_from_another_directory(wheel, tmp_path):
    """Installed (not editable) into a folder of its own, run from elsewhere: the data comes from inside it."""
    target = tmp_path / "site"
    subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--target", str(target), str(wheel)],
                   check=True)
    code = ("import lessons_lib; from lessons_lib import bench, data, hardware; "
            "print(lessons_lib.__file__); print(hardware.gpu('H200').bandwidth_gbs, len(data.load_text()), "
            "sorted(bench.committed('nvidia-h200')))")
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    out = subprocess.run([sys.executable, "-c", code], cwd=elsewhere, env={"PYTHONPATH": str(target)},
                         capture_output=True, text=True, check=True).stdout.splitlines()
    assert out[0].startswith(str(target)), f"imported {out[0]}, not the installed wheel"
    assert out[1].startswith("4800.0 ") and "'ceilings'" in out[1]


def test_version_is_written_once():
    with open(ROOT / "pyproject.toml", "rb") as f:
        project = tomllib.load(f)["project"]
    assert "version" not in project and project["dynamic"] == ["version"]
    assert all("lessons_lib" not in d for d in project["dependencies"])


def test_every_notebook_sets_up_colab_from_the_one_repository_url():
    result = subprocess.run([sys.executable, str(ROOT / "scripts" / "colab_setup.py"), "--check"],
                            capture_output=True, text=True)
    assert result.returncode == 0, result.stdout
    for nb in sorted((ROOT / "notebooks").glob("*.ipynb")):
        assert "sys.path.insert" not in nb.read_text(), f"{nb.name}: install the package instead of editing sys.path"


def test_every_library_import_is_a_declared_dependency():
    """Each third-party module lessons_lib imports (at the top or inside a function) comes from a distribution that
    pyproject.toml declares, as a dependency or in an extra: `pip install .[toolkits,kernels]` gives all of them."""
    import ast
    import re
    from importlib.metadata import packages_distributions

    with open(ROOT / "pyproject.toml", "rb") as f:
        project = tomllib.load(f)["project"]
    declared = project["dependencies"] + [d for extra in project["optional-dependencies"].values() for d in extra]
    names = {re.split(r"[<>=!~\[; ]", d, maxsplit=1)[0].lower().replace("_", "-") for d in declared}
    owners = packages_distributions()
    missing = {}
    for path in sorted((ROOT / "lessons_lib").glob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            modules = ([a.name for a in node.names] if isinstance(node, ast.Import) else
                       [node.module] if isinstance(node, ast.ImportFrom) and node.level == 0 and node.module else [])
            for module in modules:
                top = module.split(".")[0]
                if top in sys.stdlib_module_names or top == "lessons_lib":
                    continue
                dists = {d.lower().replace("_", "-") for d in owners.get(top, [top])}
                if not dists & names:
                    missing.setdefault(top, set()).add(path.name)
    assert not missing, f"imported but not declared in pyproject.toml: {missing}"
