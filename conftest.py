"""pytest set-up for unit tests and notebooks: offline hub, and a time summary per notebook (for the README)."""
import os
import re
from collections import defaultdict

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # the course never needs the hub; never wait on it in tests
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TQDM_DISABLE", "1")  # stored outputs hold no progress bars (`make execute` sets it too)

_durations: dict = defaultdict(float)


def pytest_configure(config):
    from nbval.plugin import IPyNbCell

    if not getattr(IPyNbCell.compare_outputs, "tolerant", False):
        IPyNbCell.compare_outputs = _tolerant(IPyNbCell.compare_outputs)
    config.addinivalue_line("markers", "conversion: converts the real offline model (slow; deselect with -m 'not conversion')")


def pytest_runtest_logreport(report):
    path = report.nodeid.split("::")[0]
    lane = (f"smoke lane (every notebook, tiny {os.environ.get('QHT_SMOKE_FAMILY', 'gemma3')})"
            if path.endswith("test_smoke_lane.py") else "unit tests")
    _durations[path if path.endswith(".ipynb") else lane] += report.duration


_executed: dict = {}  # QHT_SAVE_OUTPUTS=DIR: each notebook nbval ran, its cells holding this run's outputs


def pytest_runtest_teardown(item):
    """With QHT_SAVE_OUTPUTS=DIR, keep what each notebook cell printed (scripts/record_cpu_outputs.py DIR stores it)."""
    if os.environ.get("QHT_SAVE_OUTPUTS") and getattr(item, "test_outputs", None) is not None and hasattr(item, "cell"):
        if item.cell.get("execution_count") is None:  # a cell never run before: nbval skips an unrun cell with outputs
            item.cell["execution_count"] = item.parent.nb.cells.index(item.cell) + 1
        for out in item.test_outputs:  # nbval numbers no results; give them the cell's number, as Jupyter does
            if out.get("output_type") == "execute_result":
                out["execution_count"] = item.cell.get("execution_count")
        item.cell.outputs = item.test_outputs
        _executed[str(item.parent.fspath)] = item.parent.nb


def pytest_sessionfinish(session):
    if _executed:
        import nbformat

        out = os.environ["QHT_SAVE_OUTPUTS"]
        os.makedirs(out, exist_ok=True)
        for path, nb in _executed.items():
            nbformat.write(nb, os.path.join(out, os.path.basename(path)))


def pytest_terminal_summary(terminalreporter):
    if _durations:
        terminalreporter.section("time per notebook (s)")
        for path, seconds in sorted(_durations.items()):
            terminalreporter.write_line(f"{seconds:8.1f}  {path}")


# Stored outputs are compared as text, except that printed numbers may differ by a little: CPUs of another kind (AVX2
# against AVX512 BLAS paths) sum in another order, and a perplexity moves in its fifth digit. Words, labels, verdicts
# ([held] / [NOT HELD]) and the layout of every output must match exactly; a number may differ by at most
# NUMBER_REL_TOL of its size or by one unit of its last printed digit, whichever is larger.
NUMBER = re.compile(r"[-+]?(?:\d+\.\d*|\.\d+|\d+)(?:[eE][-+]?\d+)?")
NUMBER_REL_TOL = 0.005


def _last_digit(token: str) -> float:
    """One unit of the last digit printed: '25.49' -> 0.01, '7.0e-04' -> 1e-05, '937' -> 1."""
    mantissa, _, exponent = token.lower().partition("e")
    decimals = len(mantissa.partition(".")[2])
    return 10.0 ** (int(exponent or 0) - decimals)


def outputs_agree(ref: str, test: str, rel_tol: float = NUMBER_REL_TOL) -> bool:
    """The same text apart from whitespace runs, with every pair of numbers within tolerance."""
    if " ".join(NUMBER.sub("#", ref).split()) != " ".join(NUMBER.sub("#", test).split()):
        return False
    for a, b in zip(NUMBER.findall(ref), NUMBER.findall(test)):
        x, y = float(a), float(b)
        if a != b and abs(x - y) > max(rel_tol * max(abs(x), abs(y)), 1.0001 * max(_last_digit(a), _last_digit(b))):
            return False
    return True


def cpu_kind() -> str:
    """The CPU's vector unit as torch dispatches on it ("AVX2", "AVX512", ...), with " AMD" after it on an AMD CPU:
    torch's own kernels sum in an order set by the first, and MKL (torch's BLAS) takes other paths on AMD CPUs, so an
    AMD AVX512 CPU reproduces neither an Intel AVX512 one nor an AMD AVX2 one."""
    import torch

    kind = torch.backends.cpu.get_cpu_capability()
    return f"{kind} AMD" if _cpu_vendor() == "AuthenticAMD" else kind


def _cpu_vendor() -> str:
    """The CPU's vendor string (GenuineIntel, AuthenticAMD, ...) from /proc/cpuinfo; "" where there is none."""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("vendor_id"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return ""


def _tolerant(compare):
    """Wrap nbval's comparison: a cell whose outputs differ between CPU kinds (metadata "qht_outputs_by_cpu") may match
    this kind's recorded outputs or the stored ones (lesson 09 prints the committed records' numbers when run alone);
    a cell recorded only on other kinds runs but is not compared here (scripts/record_cpu_outputs.py adds this kind);
    a remaining difference is accepted if only numbers moved, within tolerance."""
    def agrees(self, test, ref, skip_compare) -> bool:
        if compare(self, test, ref, skip_compare):
            return True
        if texts_agree(ref, test, skip_compare or self.parent.skip_compare, self.sanitize):
            self.comparison_traceback = []
            return True
        return False

    def compare_outputs(self, test, ref, skip_compare=None):
        from nbformat import from_dict
        from nbval.plugin import coalesce_streams

        by_cpu = self.cell.metadata.get("qht_outputs_by_cpu")
        if by_cpu is None:
            return agrees(self, test, ref, skip_compare)
        if cpu_kind() not in by_cpu:
            return True
        own = coalesce_streams([from_dict(o) for o in by_cpu[cpu_kind()]])
        return agrees(self, test, ref, skip_compare) or agrees(self, test, own, skip_compare)  # a failure reports `own`
    compare_outputs.tolerant = True
    return compare_outputs


SKIP_FIELDS = ("metadata", "traceback", "prompt_number", "output_type", "name", "execution_count",
               "application/vnd.jupyter.widget-view+json", "image/png", "image/jpeg")  # what nbval does not compare


def texts(outputs, skip=SKIP_FIELDS, sanitize=lambda s: s) -> list:
    """(kind, sanitized text) of every compared text field of a cell's outputs, streams joined as nbval joins them."""
    from nbval.plugin import transform_streams_for_comparison

    found = []
    for out in transform_streams_for_comparison(outputs):
        fields = dict(out.get("data", {}))
        fields.update({k: v for k, v in out.items() if k != "data"})
        found += [(k, sanitize(v)) for k, v in sorted(fields.items()) if k not in skip and isinstance(v, str)]
    return found


def texts_agree(ref, test, skip=SKIP_FIELDS, sanitize=lambda s: s) -> bool:
    """Two cells' outputs hold the same text fields, each pair equal under outputs_agree."""
    old, new = texts(ref, skip, sanitize), texts(test, skip, sanitize)
    return len(old) == len(new) and all(k1 == k2 and outputs_agree(a, b) for (k1, a), (k2, b) in zip(old, new))
