"""The pins live in requirements.lock; every other file that names a version must agree with it."""
import re
from importlib import metadata
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parent.parent
PIN = re.compile(r"^([A-Za-z0-9_.\-]+)==([^\s;#]+)")


def pins(lines) -> dict:
    out = {}
    for line in lines:
        m = PIN.match(line.strip())
        if m:
            out[m.group(1).lower().replace("_", "-")] = m.group(2)
    return out


LOCK = pins((ROOT / "requirements.lock").read_text().splitlines())


def test_lock_pins_torch_cpu_lane_and_key_versions():
    assert LOCK["torch"] == "2.13.0" and LOCK["transformers"] == "5.17.0"
    assert all("+" not in v for v in LOCK.values()), "local version labels do not install from an index"


@pytest.mark.parametrize("name", ["requirements.in", "requirements-colab.txt"])
def test_requirement_files_agree_with_lock(name):
    declared = pins((ROOT / name).read_text().splitlines())
    assert declared, f"{name} pins nothing"
    assert {k: LOCK.get(k) for k in declared} == declared


def test_environment_yml_agrees_with_lock():
    env = yaml.safe_load((ROOT / "environment.yml").read_text())
    pip_section = next(d["pip"] for d in env["dependencies"] if isinstance(d, dict))
    assert "-r requirements.lock" in pip_section and "python=3.11" in env["dependencies"]
    declared = pins(pip_section)
    assert declared == pins((ROOT / "requirements.in").read_text().splitlines())
    assert {k: LOCK.get(k) for k in declared} == declared


def test_installed_versions_match_lock():
    for name in ["torch", "transformers", "bitsandbytes", "llmcompressor", "nbval", "matplotlib"]:
        assert metadata.version(name).split("+")[0] == LOCK[name], f"{name}: run `make clean test` to rebuild .venv"
