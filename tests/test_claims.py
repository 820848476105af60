"""A lesson's claims: asserted on the default model, reported (held / not held) on any other, tabled at the end."""
import pytest

from lessons_lib import claims as C


class FakeComparison:
    def __init__(self, verdict):
        self.verdict = verdict

    def __str__(self):
        return f"verdict {self.verdict}"


@pytest.fixture
def on(monkeypatch):
    def make(default: bool, report: bool = False):
        monkeypatch.setattr(C, "is_default", lambda m: default)
        monkeypatch.setattr(C, "model_id_of", lambda m: "offline:default" if default else "someone/other-model")
        monkeypatch.setenv("QHT_CLAIMS", "report" if report else "")
        return C.Claims(object())
    return make


def test_a_failed_claim_fails_on_the_default_model(on):
    claims = on(default=True)
    assert claims.check("two is more than one", 2 > 1, "2 vs 1")
    with pytest.raises(C.ClaimFailed, match="one is more than two.*did not hold"):
        claims.check("one is more than two", 1 > 2, "1 vs 2")


def test_on_another_model_a_failed_claim_is_reported_and_the_lesson_goes_on(on, capsys):
    claims = on(default=False)
    assert not claims.check("one is more than two", 1 > 2, "1 vs 2")
    assert not claims.check("the default model has 30 layers", True, default_only=True)  # not checked here
    assert claims.compared("A beats B", FakeComparison("beats"), "beats")
    table = claims.table()
    assert list(table["outcome"]) == ["not held", "not checked (a fact of the default model)", "held"]
    assert table.index.name == "claims on someone/other-model" and "[NOT HELD] one is more than two" in capsys.readouterr().out
    assert [r["claim"] for r in claims.summary()] == ["one is more than two", "the default model has 30 layers", "A beats B"]


def test_report_mode_shows_every_outcome_and_default_only_facts_still_run(on):
    claims = on(default=True, report=True)
    assert not claims.compared("A matches B", FakeComparison("indistinguishable"), "matches within tol")
    assert claims.check("the default model has 30 layers", True, default_only=True)
    assert list(claims.table()["outcome"]) == ["not held", "held"]


def test_bad_claims_are_refused(on):
    claims = on(default=False)
    with pytest.raises(ValueError, match="claim must be a non-empty string"):
        claims.check("", True)
    with pytest.raises(KeyError, match="unknown expect 'wins'"):
        claims.compared("A wins", FakeComparison("beats"), "wins")
