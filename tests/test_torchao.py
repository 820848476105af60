"""torchao (pinned) as a second opinion on the course's kernel wrappers: same weights, same torch kernels, same answer.

Where the two differ, the difference is systematic and named: torchao's int8 grid is absmax / 127.5 (codes -128..127,
as compressed-tensors stores them) where kernels.Int8W8A8 defaults to absmax / 127; torchao's int4 path computes
scales, zero points and codes in the weight's own dtype, the course in float32 (then stores scales in bf16).
"""
import logging
import warnings

import pytest
import torch
from torch import nn
from torch.utils._python_dispatch import TorchDispatchMode

from lessons_lib import kernels

with warnings.catch_warnings():  # torchao's CUDA extensions do not load on a CPU-only torch: only a warning
    warnings.simplefilter("ignore")
    logging.disable(logging.WARNING)
    import torchao
    from torchao.prototype.quantization.int4 import PrototypeInt4WeightOnlyConfig
    from torchao.quantization import Int8DynamicActivationInt8WeightConfig, quantize_
    logging.disable(logging.NOTSET)


class AtenOps(TorchDispatchMode):
    """Records the name of every aten op that runs inside the block."""

    def __init__(self):
        super().__init__()
        self.seen = set()

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        self.seen.add(func.overloadpacket.__name__)
        return func(*args, **(kwargs or {}))


def torchao_linear(w: torch.Tensor, config) -> nn.Linear:
    lin = nn.Linear(w.shape[1], w.shape[0], bias=False, dtype=w.dtype)
    lin.weight.data = w.clone()
    quantize_(lin, config)
    return lin


@pytest.fixture(scope="module")
def case():
    gen = torch.Generator().manual_seed(0)
    return torch.randn(256, 512, generator=gen) * 0.02, torch.randn(7, 512, generator=gen) * 3


def test_the_pinned_torchao_is_the_one_these_tests_were_written_for():
    assert torchao.__version__.startswith("0.18.0")


def test_torchao_int8_dynamic_runs_the_same_int_mm_kernel(case):
    w, x = case
    lin = torchao_linear(w, Int8DynamicActivationInt8WeightConfig())
    with torch.no_grad(), AtenOps() as ops:
        lin(x)
    assert "_int_mm" in ops.seen and "mm" not in ops.seen and "addmm" not in ops.seen


def test_int8_w8a8_on_torchao_codes_gives_torchao_output(case):
    w, x = case
    lin = torchao_linear(w, Int8DynamicActivationInt8WeightConfig())
    ours = kernels.Int8W8A8.from_codes(lin.weight.qdata, lin.weight.scale, torch.float32, act_half_range=127.5)
    with torch.no_grad():
        assert kernels.relative_error(ours(x), lin(x)) < 1e-3  # float rounding in the rescale, at most


def test_int8_w8a8_default_grid_differs_from_torchao_by_its_half_range(case):
    w, x = case
    lin = torchao_linear(w, Int8DynamicActivationInt8WeightConfig())
    ours = kernels.quantize("int8_w8a8", w, act_dtype=torch.float32)
    ratio = lin.weight.scale.flatten() / ours.scale.flatten()
    assert torch.allclose(ratio, torch.full_like(ratio, 127 / 127.5))  # absmax / 127.5 against absmax / 127
    flips = (lin.weight.qdata.int() - ours.q.int()).abs()
    assert flips.max() == 1 and 0 < flips.float().mean() < 0.3  # a slightly finer grid moves some codes by one
    with torch.no_grad():
        ref = x @ w.T
        ya, yk = lin(x), ours(x)
    assert kernels.relative_error(yk, ya) < 0.02  # two 8-bit grids: within their own quantization noise
    assert abs(kernels.relative_error(yk, ref) - kernels.relative_error(ya, ref)) < 0.005


def test_int4_weight_only_matches_torchao_cpu_int4_exactly_in_float32(case):
    w, x = case
    lin = torchao_linear(w, PrototypeInt4WeightOnlyConfig(group_size=64))
    ours = kernels.quantize("int4_weight_only", w, group_size=64, act_dtype=torch.float32)
    with torch.no_grad(), AtenOps() as ops:
        ya = lin(x)
    assert "_weight_int4pack_mm_for_cpu" in ops.seen
    assert torch.equal(ours(x), ya)  # same grid (min/max, zero at code 8), same codes, same kernel


def test_int4_weight_only_in_bf16_agrees_with_torchao_within_its_quantization_error(case):
    w, x = case
    lin = torchao_linear(w.to(torch.bfloat16), PrototypeInt4WeightOnlyConfig(group_size=64))
    ours = kernels.quantize("int4_weight_only", w, group_size=64)  # bf16 activations and scales
    xb = x.to(torch.bfloat16)
    with torch.no_grad():
        ya, yk = lin(xb), ours(xb)
    ref = x @ w.T
    # torchao rounds in bf16 before choosing codes, the course in float32: some codes move by one
    assert kernels.relative_error(yk, ya) < 0.08
    assert kernels.relative_error(yk, ref) <= kernels.relative_error(ya, ref) + 0.005  # float32 codes are no worse
    assert kernels.relative_error(yk, ref) < 0.12


def test_stored_bytes_of_torchao_weights_are_their_packed_tensors(case):
    w, _ = case
    int4 = torchao_linear(w.to(torch.bfloat16), PrototypeInt4WeightOnlyConfig(group_size=64)).weight
    assert kernels.tensor_bytes(int4) == 256 * 512 // 2 + (512 // 64) * 256 * 2 * 2  # nibbles + bf16 scale and zero
    int8 = torchao_linear(w, Int8DynamicActivationInt8WeightConfig()).weight
    assert 256 * 512 + 256 * 4 <= kernels.tensor_bytes(int8) < 256 * 512 + 256 * 16  # codes + per-row scales
    assert kernels.tensor_bytes(w) == 256 * 512 * 4
