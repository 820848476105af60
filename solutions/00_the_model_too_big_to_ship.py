"""Instructor solutions for lesson 00 (tests/test_solutions.py runs them against the checkers)."""
from lessons_lib import hardware as hw
from lessons_lib.exercises import check

llama8 = hw.LLAMA3_8B
assert check("00.kv_bytes_8b", 2 * llama8.layers * llama8.kv_heads * llama8.head_dim * 2)

int4_bytes = hw.LLAMA3_70B.parameters * 0.5
assert check("00.h100_int4_floor_ms", int4_bytes / (hw.gpu("H100 SXM").bandwidth_gbs * 1e9) * 1e3)

free = 0.9 * hw.gpu("H200").memory_gb * 1e9 - hw.LLAMA3_70B.parameters * 1
assert check("00.h200_fp8_kv_tokens", free // hw.LLAMA3_70B.kv_bytes_per_token("fp16"))

a100 = hw.gpu("A100 80GB")
step_s = (hw.LLAMA3_70B.parameters * 2 + 4096 * hw.LLAMA3_70B.kv_bytes_per_token()) / (2 * a100.bandwidth_gbs * 1e9)
assert check("00.share_of_180ms", step_s * 1e3 / 180)
