import json

import pytest

from lessons_lib import decide, results, validate

SETTINGS = dict(model="m", eval="8x512", group=64)


@pytest.fixture
def cache(tmp_path, monkeypatch):
    monkeypatch.setenv("QHT_CACHE", str(tmp_path))
    return tmp_path


def test_record_and_read_round_trip(cache):
    with pytest.raises(LookupError, match="run notebooks/98_"):
        results.read("98")
    results.record("98", SETTINGS, ppl={"RTN": 30.5})
    results.record("98", SETTINGS, seconds={"ours": 40.0})  # same settings: merged
    got = results.read("98", model="m", group=64)
    assert got["ppl"] == {"RTN": 30.5} and got["seconds"] == {"ours": 40.0} and got["group"] == 64
    stored = json.loads(results.path("98").read_text())
    assert stored["schema"] == results.SCHEMA and stored["settings"]["versions"] == results.versions()
    assert stored["settings"]["versions"]["torch"]  # the library versions it was measured with
    assert not list(results.path("98").parent.glob("*.tmp"))  # written through a temporary file, renamed
    with pytest.raises(LookupError, match="run notebooks/98_.* again"):
        results.read("98", model="other")


def test_new_settings_replace_the_record_instead_of_mixing(cache):
    results.record("98", SETTINGS, ppl={"RTN": 30.5}, seconds={"ours": 40.0})
    results.record("98", {**SETTINGS, "group": 32}, ppl={"RTN": 28.0})
    got = results.read("98", group=32)
    assert got["ppl"] == {"RTN": 28.0} and "seconds" not in got
    with pytest.raises(LookupError, match="group"):
        results.read("98", group=64)


def test_a_record_from_other_library_versions_is_not_used(cache, monkeypatch):
    results.record("98", SETTINGS, ppl={"RTN": 30.5})
    monkeypatch.setattr(results, "versions", lambda: {"torch": "9.9"})
    with pytest.raises(LookupError, match="versions"):
        results.read("98", **SETTINGS)


@pytest.mark.parametrize("damage", ["", "{", '{"ppl": {"RTN": 30.5}', "[1, 2]", "null",
                                    '{"model": "None", "eval": "8x512", "ppl": {}}'],
                         ids=["empty", "one brace", "truncated", "a list", "null", "old schema"])
def test_a_corrupt_file_is_named_and_not_used(cache, damage):
    results.record("98", SETTINGS, ppl={"RTN": 30.5})
    results.path("98").write_text(damage)
    with pytest.raises(LookupError) as err:
        results.read("98", **SETTINGS)
    assert "98.json" in str(err.value) and "again" in str(err.value)
    with pytest.warns(UserWarning, match="98.json"):  # the re-run that should fix it does
        results.record("98", SETTINGS, ppl={"RTN": 31.0})
    assert results.read("98", **SETTINGS)["ppl"] == {"RTN": 31.0}


def test_record_refuses_what_it_cannot_store(cache):
    with pytest.raises(validate.BadInput, match="settings"):
        results.record("98", {}, ppl={"a": 1.0})
    with pytest.raises(validate.BadInput, match="at least one value"):
        results.record("98", SETTINGS)
    with pytest.raises(validate.BadInput, match="JSON"):
        results.record("98", SETTINGS, ppl=float("nan"))
    with pytest.raises(validate.BadInput, match="JSON"):
        results.record("98", SETTINGS, ppl={"a": object()})
    with pytest.raises(validate.BadInput, match="setting names"):
        results.record("98", SETTINGS, group=3)
    for lesson in (4, "4", "../04", None):
        with pytest.raises(validate.BadInput, match="two-digit"):
            results.path(lesson)
    assert not results.path("98").exists()


def test_committed_records_carry_their_settings_and_keep_their_numbers():
    fp32 = {}
    for lesson in ("00", "02", "03", "04", "05", "06", "07"):
        r = results.committed(lesson)
        assert r["eval"] == "8x512" and r["model"].startswith("offline:SmolLM2-135M-Instruct")
        stored = json.loads(results.resource("results", f"{lesson}.json").read_text())
        assert stored["settings"]["versions"]["text sets"] == results.versions()["text sets"]  # measured on today's text
        fp32[lesson] = r["ppl"]["fp32"]
        assert {"kl", "ppl_diff", "window_nll", "windows_sha"} <= set(r), lesson  # intervals and KL (evaluate.record_values)
    assert max(fp32.values()) - min(fp32.values()) < 1e-9 * min(fp32.values()), fp32  # one evaluation set, one fp32 model
    assert results.committed_settings("04")["group"] == 64 and results.committed_settings("04")["calib"] == "16x256"
    r04 = results.committed("04")
    assert r04["ppl"]["RTN W4"] > r04["ppl"][r04["chosen"]["W4"]] > fp32["04"]  # GPTQ between fp32 and plain rounding


def _local_copy(lesson, **changes):
    """This machine's record of a lesson: the committed values, with some settings changed."""
    r = results.committed(lesson)
    settings = {**results.committed_settings(lesson), **changes}
    values = {k: v for k, v in r.items() if k not in settings and k != "versions"}
    results.record(lesson, settings, **values)


def test_lesson_09_read_path_uses_this_machine_only_with_the_course_settings(cache):
    model, ev = results.committed("04")["model"], "8x512"
    _local_copy("04")
    r, source = results.read_or_committed("04", model=model, eval=ev)
    assert source == "this machine"
    _local_copy("04", group=128)  # the case: another group size
    r, source = results.read_or_committed("04", model=model, eval=ev)
    assert source.startswith("committed") and "group" in source and "04.json" in source and r["group"] == 64
    results.path("04").write_text('{"schema": 2, "settings": ')  # truncated
    r, source = results.read_or_committed("04", model=model, eval=ev)
    assert source.startswith("committed") and "corrupt" in source and "04.json" in source
    assert str(cache) not in source  # notebooks print it: no machine path


def test_lesson_09_never_mixes_two_models_records(cache):
    """One lesson measured here on another model, the others not: every lesson's committed record is used."""
    ev = "8x512"
    for lesson in ("03", "04"):
        _local_copy(lesson, model="someone/other-model")
    recorded, source = results.read_all_or_committed(("03", "04"), model="someone/other-model", eval=ev)
    assert {r["model"] for r in recorded.values()} == {"someone/other-model"} and set(source.values()) == {"this machine"}
    results.path("04").unlink()  # now 03 is this machine's other model, 04 would be the committed default model
    recorded, source = results.read_all_or_committed(("03", "04"), model="someone/other-model", eval=ev)
    assert len({r["model"] for r in recorded.values()}) == 1 and all("one model" in s for s in source.values())


def test_lesson_09_never_mixes_this_machines_records_with_the_course_machines(cache):
    """Lesson 04 run here, lesson 03 not: both committed (fp32 itself differs between kinds of CPU), and it says which."""
    model, ev = results.committed("04")["model"], "8x512"
    _local_copy("04")
    recorded, source = results.read_all_or_committed(("03", "04"), model=model, eval=ev)
    assert all(s.startswith("committed") and "one machine" in s and "lessons 03)" in s for s in source.values())
    assert recorded == {k: results.committed(k) for k in ("03", "04")}
    _local_copy("03")
    recorded, source = results.read_all_or_committed(("03", "04"), model=model, eval=ev)
    assert set(source.values()) == {"this machine"}


def test_quality_costs_refuses_records_made_with_other_settings():
    recorded = {k: results.committed(k) for k in ("03", "04", "05", "06", "07")}
    base = decide.quality_costs(recorded)
    other_group = {**recorded, "04": {**recorded["04"], "group": 128, "ppl": {**recorded["04"]["ppl"], "ours W4 damp 0.1": 23.13}}}
    with pytest.raises(LookupError, match="lesson 04.*group"):
        decide.quality_costs(other_group)
    other_eval = {**recorded, "06": {**recorded["06"], "eval": "2x128"}}
    with pytest.raises(LookupError, match="eval"):
        decide.quality_costs(other_eval)
    with pytest.raises(KeyError, match="missing"):
        decide.quality_costs({k: v for k, v in recorded.items() if k != "05"})
    assert base == decide.quality_costs(recorded)


def test_records_name_the_text_sets_they_were_measured_on(cache, monkeypatch):
    """A record made before the evaluation or calibration text changed is not used (its text-set hash differs)."""
    v = results.versions()
    assert len(v["text sets"]) == 16 and int(v["text sets"], 16) >= 0
    results.record("98", SETTINGS, ppl={"RTN": 30.5})
    monkeypatch.setattr(results, "versions", lambda: {**v, "text sets": "0" * 16})
    with pytest.raises(LookupError, match="text sets"):
        results.read("98", **SETTINGS)


def test_publish_copies_a_checked_record_into_the_committed_ones(cache, tmp_path):
    results.record("98", SETTINGS, ppl={"RTN": 30.5})
    out = results.publish("98", tmp_path / "committed")
    assert json.loads(out.read_text())["values"]["ppl"] == {"RTN": 30.5}
    results.path("97").parent.mkdir(parents=True, exist_ok=True)
    results.path("97").write_text("{")
    with pytest.raises(LookupError, match="corrupt"):
        results.publish("97", tmp_path / "committed")


def test_the_fallback_says_when_the_committed_record_used_other_text(cache, monkeypatch):
    v = results.versions()
    monkeypatch.setattr(results, "versions", lambda: {**v, "text sets": "f" * 16})
    _, source = results.read_or_committed("04")
    assert source.startswith("committed") and "other text sets" in source


def test_the_committed_two_model_table_reads_per_lesson():
    table = results.cross_model("04")
    models = set(table.index.get_level_values("model"))
    assert models == set(results.cross_model_perplexity().columns) and len(models) == 2
    assert set(table["outcome"]) <= {"held", "did not hold"}
    assert set(table["verdict"]) <= {"beats", "loses to", "indistinguishable", "matches within", ""}
    assert not table["numbers"].str.contains("ours GPTQ").any()  # the label that repeats the claim is cut
    assert results.cross_model_perplexity().loc["fp32"].gt(1).all()
    with pytest.raises(KeyError, match="has no claims of lesson 09"):
        results.cross_model("09")
    with pytest.raises(validate.BadInput, match="two-digit"):
        results.cross_model("4")
