"""pytest set-up for unit tests and notebooks: offline hub, and a time summary per notebook (for the README)."""
import os
from collections import defaultdict

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # the course never needs the hub; never wait on it in tests
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TQDM_DISABLE", "1")  # stored outputs hold no progress bars (`make execute` sets it too)

_durations: dict = defaultdict(float)


def pytest_configure(config):
    config.addinivalue_line("markers", "conversion: converts the real offline model (slow; deselect with -m 'not conversion')")


def pytest_runtest_logreport(report):
    path = report.nodeid.split("::")[0]
    lane = "smoke lane (every notebook, tiny Gemma 3)" if path.endswith("test_smoke_lane.py") else "unit tests"
    _durations[path if path.endswith(".ipynb") else lane] += report.duration


def pytest_terminal_summary(terminalreporter):
    if _durations:
        terminalreporter.section("time per notebook (s)")
        for path, seconds in sorted(_durations.items()):
            terminalreporter.write_line(f"{seconds:8.1f}  {path}")
