import pytest

from lessons_lib import results


def test_record_and_read_round_trip(tmp_path, monkeypatch):
    monkeypatch.setenv("QHT_CACHE", str(tmp_path))
    with pytest.raises(LookupError, match="run notebooks/98_"):
        results.read("98")
    results.record("98", model="m", ppl={"RTN": 30.5})
    results.record("98", seconds={"ours": 40.0})
    assert results.read("98", model="m") == {"model": "m", "ppl": {"RTN": 30.5}, "seconds": {"ours": 40.0}}
    with pytest.raises(LookupError, match="run it again"):
        results.read("98", model="other")
