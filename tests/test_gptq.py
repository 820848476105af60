import pytest
import torch

from lessons_lib import gptq


@pytest.fixture(scope="module")
def layer():
    """A weight and two independent samples of the same correlated input distribution (calibration, held-out)."""
    g = torch.Generator().manual_seed(1)
    mix = torch.randn(64, 64, generator=g) / 8 + torch.eye(64)
    w = torch.randn(48, 64, generator=g)
    return w, torch.randn(2048, 64, generator=g) @ mix, torch.randn(2048, 64, generator=g) @ mix


def test_hessian_is_symmetric_psd_and_refuses_empty_input(layer):
    _, x, _ = layer
    h = gptq.hessian(x)
    assert h.shape == (64, 64) and torch.allclose(h, h.T) and torch.linalg.eigvalsh(h).min() > -1e-9
    with pytest.raises(ValueError, match="empty"):
        gptq.hessian(torch.zeros(0, 64))


def test_without_error_feedback_it_is_round_to_nearest(layer):
    w, x, _ = layer
    out = gptq.gptq_quantize(w, gptq.hessian(x), 4, 16, error_feedback=False).weight
    for start in range(0, 64, 16):
        s, z, qmin, qmax = gptq.grid(w[:, start:start + 16], 4, True)
        assert torch.allclose(out[:, start:start + 16], gptq.quantize_column(w[:, start:start + 16], s, z, qmin, qmax))


@pytest.mark.parametrize("kw", [{}, {"act_order": True}, {"group_size": None}, {"symmetric": False}, {"bits": 3}])
def test_gptq_beats_rtn_on_held_out_inputs(layer, kw):
    w, x, held = layer
    args = {"bits": 4, "group_size": 16} | kw
    h = gptq.hessian(x)
    ours = gptq.gptq_quantize(w, h, **args).weight
    rtn = gptq.gptq_quantize(w, h, **args, error_feedback=False).weight
    assert gptq.output_error(w, ours, held) < 0.9 * gptq.output_error(w, rtn, held)


def test_result_stays_on_the_grid(layer):
    w, x, _ = layer
    out = gptq.gptq_quantize(w, gptq.hessian(x), 4, 16, act_order=True).weight
    for row in out.reshape(-1, 16):
        assert row.unique().numel() <= 16


def test_clear_errors(layer):
    w, x, _ = layer
    h = gptq.hessian(x)
    with pytest.raises(ValueError, match=r"group_size 24 does not divide the input dimension 64.*\[16, 32, 64\]"):
        gptq.gptq_quantize(w, h, 4, 24)
    with pytest.raises(ValueError, match="does not match"):
        gptq.gptq_quantize(w, torch.eye(32), 4, 16)
    singular = -torch.eye(64, dtype=torch.float64)  # not positive definite, and dampening cannot fix it
    with pytest.raises(ValueError, match="not positive definite even after dampening"):
        gptq.gptq_quantize(w, singular, 4, 16, damp=0.0)
    with pytest.raises(ValueError, match="bits must be"):
        gptq.gptq_quantize(w, h, 17, 16)
    with pytest.raises(ValueError, match="NaN or Inf"):
        gptq.gptq_quantize(torch.full_like(w, float("nan")), h, 4, 16)


def tiny_llama():
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    cfg = LlamaConfig(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
                      num_key_value_heads=2, vocab_size=128, max_position_embeddings=64)
    return LlamaForCausalLM(cfg).eval()  # random weights: this checks mechanics, never quality


def test_whole_model_gptq_matches_quantizing_each_linear_on_its_own_inputs():
    from lessons_lib import activations

    model = tiny_llama()
    calib = torch.randint(0, 128, (8, 32), generator=torch.Generator().manual_seed(0))
    name = "model.layers.0.self_attn.k_proj"
    x = activations.capture_inputs(model, [name], calib)[name]  # layer 0 sees float inputs either way
    w = dict(model.named_modules())[name].weight.detach().clone()
    expected = gptq.gptq_quantize(w, gptq.hessian(x), 4, 16).weight
    gptq.quantize_model(model, calib, 4, 16, progress=False)
    assert torch.allclose(dict(model.named_modules())[name].weight, expected, atol=1e-6)
    with pytest.raises(ValueError, match="0 tokens, too few"):
        gptq.quantize_model(model, torch.zeros(0, 8, dtype=torch.long))
    with pytest.raises(ValueError, match="token ids"):
        gptq.quantize_model(model, calib.float())


def test_vectorized_rtn_is_gptq_without_error_feedback(layer):
    w, x, _ = layer
    slow = gptq.gptq_quantize(w, gptq.hessian(x), 3, 16, error_feedback=False).weight
    assert torch.allclose(gptq.rtn(w, 3, 16), slow)
    with pytest.raises(ValueError, match="does not divide"):
        gptq.rtn(w, 4, 24)


def test_inverse_cholesky_is_the_upper_factor_of_the_inverse(layer):
    _, x, _ = layer
    h = gptq.hessian(x) + 0.01 * torch.eye(x.shape[-1], dtype=torch.float64)
    u = gptq._inverse_cholesky(h)
    assert torch.equal(u, u.triu()) and bool((u.diagonal() > 0).all())
    assert torch.allclose(u.T @ u, torch.linalg.inv(h), rtol=1e-8, atol=1e-10)
