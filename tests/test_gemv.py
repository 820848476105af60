"""lessons_lib.gemv: the Triton W4A16 and FP8 kernels, checked under Triton's interpreter on small shapes."""
import os

import pytest
import torch

from lessons_lib import gemv, kernels  # gemv first sets TRITON_INTERPRET=1 on a machine without a GPU

CPU = torch.device("cpu")


@pytest.fixture(autouse=True, scope="module")
def _leave_environment_as_found():
    """The interpreter needs TRITON_INTERPRET while its kernels run; later processes (notebook kernels) should not inherit it."""
    yield
    if gemv._INTERPRET_ENV is None:
        os.environ.pop("TRITON_INTERPRET", None)


def random_w4(n: int, k: int, group: int, seed: int = 0, act=torch.bfloat16) -> gemv.W4A16:
    g = torch.Generator().manual_seed(seed)
    q = torch.randint(0, 16, (n, k), generator=g)
    scale = torch.rand(n, k // group, generator=g) * 0.02 + 0.001
    zero = torch.randn(n, k // group, generator=g) * 0.01
    return gemv.W4A16.from_codes(q, scale, zero, group, act)


def x_of(m: int, k: int, seed: int = 1, dtype=torch.bfloat16) -> torch.Tensor:
    return torch.randn(m, k, generator=torch.Generator().manual_seed(seed)).to(dtype)


def with_split(w, m: int, split: int) -> gemv.Config:
    c = gemv.default_config(m, w.out_features, w.in_features, getattr(w, "group_size", None))
    return gemv.Config(c.block_m, c.block_n, c.block_k, split)


def test_runs_under_the_interpreter_here():
    assert gemv.INTERPRET == (not torch.cuda.is_available())


def test_pack_puts_the_even_column_in_the_high_nibble():
    q = torch.tensor([[3, 12, 15, 0]])
    packed = gemv.pack_int4(q)
    assert packed.tolist() == [[0x3C, 0xF0]]
    assert torch.equal(gemv.unpack_int4(packed).long(), q)
    codes = torch.randint(0, 16, (7, 64))
    assert torch.equal(gemv.unpack_int4(gemv.pack_int4(codes)).long(), codes)


def test_dequantize_follows_the_course_formula():
    w = random_w4(8, 64, 32)
    q = gemv.unpack_int4(w.packed).float().reshape(8, 2, 32)
    expected = ((q - 8) * w.scale.float()[..., None] + w.zero.float()[..., None]).reshape(8, 64)
    assert torch.equal(w.dequantize(), expected)


# (out, in, group, batch, split): batches 1..16, GEMV and tensor-core paths, odd N (masking), split-K, per-channel
W4_CASES = [(64, 256, 64, 1, 1), (97, 256, 32, 1, 3), (40, 128, 128, 2, 2), (64, 256, 64, 3, 1),
            (100, 192, 64, 5, 2), (48, 128, 32, 8, 1), (64, 256, 128, 16, 1), (33, 128, 64, 16, 2)]


@pytest.mark.parametrize("n,k,group,m,split", W4_CASES)
def test_w4a16_matches_dequantize_then_matmul(n, k, group, m, split):
    w = random_w4(n, k, group, seed=n + k)
    x = x_of(m, k)
    r = gemv.check(w, x, config=with_split(w, m, split))
    assert r["passes"], r
    assert gemv.W4A16(w.packed, w.scale, w.zero, group)(x).shape == (m, n)


def test_w4a16_fp16_runs_the_16_bit_dot_itself():
    w = random_w4(64, 128, 64, act=torch.float16)
    r = gemv.check(w, x_of(16, 128, dtype=torch.float16))
    assert r["passes"] and r["relative_error"] < 2e-3, r


def test_split_k_is_the_same_sum():
    w, x = random_w4(64, 512, 64), x_of(1, 512)
    one = w(x, config=with_split(w, 1, 1)).float()
    four = w(x, config=with_split(w, 1, 4)).float()
    assert kernels.relative_error(four, one) < 1e-2


@pytest.mark.parametrize("n,k,m,split", [(64, 128, 1, 1), (45, 100, 3, 2), (64, 96, 16, 1), (30, 80, 12, 3)])
def test_fp8_matches_dequantize_then_matmul(n, k, m, split):
    w = gemv.FP8.from_float(torch.randn(n, k, generator=torch.Generator().manual_seed(k)))
    r = gemv.check(w, x_of(m, k), config=with_split(w, m, split))
    assert r["passes"], r


def test_same_codes_as_the_course_int4_and_fp8_weights():
    wf = torch.randn(64, 256, generator=torch.Generator().manual_seed(3)) * 0.02
    qw = kernels.quantize("int4_weight_only", wf, group_size=64)
    mine = gemv.W4A16.from_int4(qw)
    assert torch.equal(mine.dequantize(), qw.dequantize())
    x = x_of(2, 256)
    assert kernels.relative_error(mine(x), qw(x)) < 2e-2  # beside torch's own int4 kernel on the same codes
    f8 = kernels.quantize("fp8_w8a8", wf)
    mine8 = gemv.FP8.from_fp8(f8)
    assert torch.equal(mine8.dequantize(), f8.dequantize())
    assert mine.nbytes == 64 * 128 + 2 * 2 * 64 * 4 and mine8.nbytes == 64 * 256 + 4 * 64


def test_bad_input_is_refused_with_what_to_do():
    w = random_w4(64, 128, 64)
    with pytest.raises(gemv.KernelError, match="16-bit"):
        w(torch.randn(1, 128))
    with pytest.raises(gemv.KernelError, match="features"):
        w(x_of(1, 64))
    with pytest.raises(gemv.KernelError, match="2-D"):
        w(x_of(1, 128)[None])
    with pytest.raises(gemv.KernelError, match="divides in_features"):
        gemv.W4A16.from_codes(torch.zeros(4, 96, dtype=torch.long), torch.ones(4, 1), torch.zeros(4, 1), 64)
    with pytest.raises(gemv.KernelError, match="multiple of 16"):
        gemv.W4A16.from_codes(torch.zeros(4, 96, dtype=torch.long), torch.ones(4, 4), torch.zeros(4, 4), 24)
    with pytest.raises(gemv.KernelError, match="scale and zero"):
        gemv.W4A16.from_codes(torch.zeros(4, 128, dtype=torch.long), torch.ones(4, 1), torch.zeros(4, 1), 64)
    with pytest.raises(gemv.KernelError, match="0..15"):
        gemv.pack_int4(torch.full((2, 4), 16))
    with pytest.raises(gemv.KernelError, match="integer"):
        gemv.pack_int4(torch.ones(2, 4, dtype=torch.bool))
    with pytest.raises(gemv.KernelError, match="uint8"):
        gemv.unpack_int4(torch.zeros(2, 2, dtype=torch.int32))
    with pytest.raises(gemv.KernelError, match="must divide the group"):
        w(x_of(1, 128), config=gemv.Config(1, 32, 128))
    with pytest.raises(gemv.KernelError, match="power of two"):
        w(x_of(1, 128), config=gemv.Config(1, 24, 32))
    with pytest.raises(gemv.KernelError, match="float8_e4m3fn"):
        gemv.FP8(torch.zeros(4, 8), torch.ones(4))
    with pytest.raises(gemv.KernelError, match="one scale per output row"):
        gemv.FP8(torch.zeros(4, 8).to(torch.float8_e4m3fn), torch.ones(2))
    with pytest.raises(gemv.KernelError, match="keep_codes"):
        gemv.W4A16.from_int4(kernels.quantize("int4_weight_only", torch.randn(32, 128), group_size=64, keep_codes=False))
    with pytest.raises(gemv.KernelError, match="'w4a16', 'fp8' or 'bf16'"):
        gemv.gemv_bytes("int3", 1, 8, 8)


def test_a_compiled_launch_on_cpu_tensors_is_refused(monkeypatch):
    monkeypatch.setattr(gemv, "INTERPRET", False)
    with pytest.raises(gemv.KernelError, match="compiled for a GPU"):
        random_w4(32, 64, 32)(x_of(1, 64))


def test_default_config_splits_k_only_when_programs_are_few():
    assert gemv.default_config(1, 4096, 4096, 128).split_k == 1  # no GPU: no split
    c = gemv.default_config(1, 4096, 4096, 128, programs=4 * 132)
    assert c.split_k > 1 and c.block_m == 1 and 4096 // c.block_n * c.split_k >= 4 * 132 / 2
    assert gemv.default_config(1, 14336, 4096, 128, programs=4 * 132).split_k < c.split_k
    assert gemv.default_config(3, 64, 64).block_m == 4 and gemv.default_config(9, 64, 64).block_m == 16


def test_bytes_per_gemv():
    n, k = 14336, 4096
    assert gemv.gemv_bytes("w4a16", 1, n, k, 128) == n * k // 2 + n * (k // 128) * 4 + 2 * k + 2 * n
    assert gemv.gemv_bytes("fp8", 1, n, k) == n * k + 4 * n + 2 * k + 2 * n
    assert gemv.gemv_bytes("bf16", 1, n, k) / gemv.gemv_bytes("w4a16", 1, n, k, 128) > 3.5


def test_benchmark_script_quick_mode_runs_every_section_here(tmp_path):
    import json
    import subprocess
    import sys
    from pathlib import Path

    script = Path(__file__).resolve().parent.parent / "scripts" / "bench_gemv.py"
    done = subprocess.run([sys.executable, str(script), "--quick", "--out", str(tmp_path)], capture_output=True,
                          text=True, timeout=600)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    (path,) = tmp_path.glob("*-quick-gemv.json")
    r = json.loads(path.read_text())
    assert r["finished"] and not r["errors"], r["errors"]
    assert r["interpreter"] and all(c["passes"] for c in r["correctness"])
    methods = {p["method"] for p in r["gemm"] if "gb_per_s" in p}
    assert methods == {"bf16", "int4_weight_only", "fp8_w8a8", "w4a16", "fp8"}
    assert {"bf16", "w4a16", "fp8"} <= {m for m, res in r["decode"]["results"].items() if "batches" in res}
    assert r["tuned"] and set(r["targets"]) >= {"w4a16_decode_speedup", "fp8_decode_speedup"}


def test_code_exercise_checker_says_what_differs(capsys):
    from pathlib import Path

    from lessons_lib import exercises

    def swapped(packed, scale, zero, g):
        return gemv.dequantize_int4(((packed & 0xF) << 4 | packed >> 4).to(torch.uint8), scale, zero, g)

    def no_offset(packed, scale, zero, g):
        return gemv.dequantize_int4(packed, scale, zero + 8 * scale, g)

    assert exercises.check("08b.dequantize_int4", gemv.dequantize_int4)
    assert not exercises.check("08b.dequantize_int4", swapped)
    assert "swapped" in capsys.readouterr().out
    assert not exercises.check("08b.dequantize_int4", no_offset)
    assert "offset" in capsys.readouterr().out
    assert not exercises.check("08b.dequantize_int4", lambda p, s, z, g: gemv.unpack_int4(p).float())
    assert "element" in capsys.readouterr().out
    assert not exercises.check("08b.dequantize_int4", lambda p, s, z, g: p.float())
    assert "shape" in capsys.readouterr().out
    assert not exercises.check("08b.dequantize_int4", 3) and "expected a function" in capsys.readouterr().out
    assert not exercises.check("08b.dequantize_int4", None) and "not answered" in capsys.readouterr().out
    solutions = "".join(p.read_text() for p in (Path(__file__).resolve().parent.parent / "solutions").glob("*.py"))
    assert all(f'"{key}"' in solutions for key in exercises.CODE_EXERCISES)
