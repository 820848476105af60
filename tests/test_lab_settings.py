"""`make lab` opens the course as `make test` runs it: hub offline unless the learner opts in, no news pop-up."""
import json
import re
import subprocess
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def recipe(target: str) -> str:
    """The commands `make -n TARGET` would run (setup already done: .ready is not rebuilt in a dry run)."""
    out = subprocess.run(["make", "-n", "-o", ".venv/.ready", target], cwd=ROOT, capture_output=True, text=True,
                         check=True, env={"PATH": "/usr/bin:/bin", "QHT_ONLINE": ""})
    return out.stdout


def test_lab_test_and_execute_keep_the_hub_offline_alike():
    for target in ("lab", "test", "execute"):
        assert "HF_HUB_OFFLINE=1" in recipe(target), target


def test_the_learner_opts_in_to_the_hub_with_qht_online():
    out = subprocess.run(["make", "-n", "-o", ".venv/.ready", "lab"], cwd=ROOT, capture_output=True, text=True,
                         check=True, env={"PATH": "/usr/bin:/bin", "QHT_ONLINE": "1"}).stdout
    assert "jupyter lab" in out and "HF_HUB_OFFLINE" not in out


def test_stored_outputs_and_their_comparison_run_without_progress_bars():
    assert "TQDM_DISABLE=1" in recipe("test") and "TQDM_DISABLE=1" in recipe("execute")
    assert "TQDM_DISABLE=1" not in recipe("lab")  # a learner sees the bars


def test_lab_installs_the_course_settings_without_news_or_update_check():
    overrides = json.loads((ROOT / "jupyter" / "overrides.json").read_text())
    notification = overrides["@jupyterlab/apputils-extension:notification"]
    assert notification["fetchNews"] == "false" and notification["checkForUpdates"] is False
    lab = recipe("lab")
    assert re.search(r"cp jupyter/overrides\.json \S*share/jupyter/lab/settings/overrides\.json", lab)
    assert "--LabApp.check_for_updates_class=jupyterlab.NeverCheckForUpdate" in lab


def test_library_bars_follow_tqdm_disable_even_in_a_notebook(monkeypatch):
    """tqdm's notebook bars ignore TQDM_DISABLE, so lessons_lib decides: off for stored outputs, on in the lab."""
    from lessons_lib import validate

    monkeypatch.setenv("TQDM_DISABLE", "1")
    assert validate.quiet() and validate.progress(None) == {"disable": True}
    assert validate.progress(True) == {"disable": False}  # asked for explicitly
    monkeypatch.delenv("TQDM_DISABLE")
    assert not validate.quiet() and validate.progress(None) == {"disable": False}
