"""Instructor solutions for lesson 09 (tests/test_exercises.py runs them against the checkers)."""
from lessons_lib import bench, decide, results
from lessons_lib import hardware as hw
from lessons_lib.exercises import check

recorded = {lesson: results.committed(lesson) for lesson in ("03", "04", "05", "06", "07")}
quality = decide.quality_costs(recorded)
efficiency = decide.kernel_efficiency(bench.committed("nvidia-h200"))


def best(**requirements) -> str:
    rows = [decide.assess(hw.LLAMA3_70B, c, quality, decide.PRICES, efficiency, **requirements) for c in decide.CANDIDATES_70B]
    return decide.choose(rows)["deployment"]


assert check("09.scenario_chat", best(batch=1, latency_ms=50.0, max_quality_cost=0.05))
assert check("09.scenario_strict", best(batch=1, latency_ms=50.0, max_quality_cost=0.01))
assert check("09.scenario_batch", best(batch=16, latency_ms=100.0, max_quality_cost=0.05))
assert check("09.a100_to_h100_floor", 3350 / 2039)  # both formats store one byte per weight
