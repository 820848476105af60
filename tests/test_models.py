import pytest
import torch

from lessons_lib import data, evaluate, hardware, models


@pytest.fixture(scope="module")
def offline():
    return models.load_model()


def test_offline_model_is_the_real_smollm2(offline):
    model, tokenizer = offline
    facts = models.describe(model)
    assert facts["parameters"] == hardware.SMOLLM2_135M.parameters
    assert (facts["layers"], facts["hidden"], facts["kv_heads"], facts["vocab"]) == (30, 576, 3, 49152)
    assert hardware.shape_of(model).parameters == facts["parameters"]


def test_offline_model_is_trained(offline):
    """A trained model predicts held-out prose far better than chance (ln 49152 = 10.8 nats)."""
    model, tokenizer = offline
    ppl = evaluate.perplexity(model, data.token_windows(tokenizer, "eval", 2, 256), progress=False)
    assert 10 < ppl < 40


def test_linear_weights_sit_on_the_q4_1_grid(offline):
    weights = models.linear_weights(offline[0])
    assert len(weights) == 30 * 7
    assert models.q4_1_grid_fraction(weights["model.layers.5.mlp.down_proj"]) == 1.0
    assert models.q4_1_grid_fraction(torch.randn(64, 64)) == 0.0
    with pytest.raises(ValueError, match="not a multiple of block"):
        models.q4_1_grid_fraction(torch.randn(4, 48))


def test_cache_dir_follows_environment(monkeypatch, tmp_path):
    monkeypatch.setenv("QHT_CACHE", str(tmp_path))
    assert models.cache_dir() == tmp_path


def test_uncached_hub_model_offline_gives_clear_error(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(OSError, match="not in the local Hugging Face cache"):
        models.load_model("HuggingFaceTB/SmolLM2-360M-not-cached")


def test_gpu_request_without_gpu_is_clear():
    if torch.cuda.is_available():
        pytest.skip("this machine has a GPU")
    with pytest.raises(RuntimeError, match="no CUDA GPU"):
        models.resolve_device("cuda")


def test_quantized_weights_swap_and_restore(offline):
    from lessons_lib import quantize as Q

    model, _ = offline
    name = "model.layers.3.mlp.up_proj"
    before = models.linear_weights(model)[name].detach().clone()
    with Q.quantized_weights(model, 4, "group", 64, names=[name]):
        inside = models.linear_weights(model)[name].detach()
        assert not torch.equal(inside, before)
        assert max(row.unique().numel() for row in inside.reshape(-1, 64)) <= 15  # symmetric 4-bit: 15 levels
    assert torch.equal(models.linear_weights(model)[name], before)


def test_q4_1_layout_is_reproduced_only_with_a_float_offset(offline):
    from lessons_lib import quantize as Q

    w = models.linear_weights(offline[0])["model.layers.7.self_attn.o_proj"].detach()
    exact = Q.fake_quant(w, 4, "group", 32, symmetric=False, float_offset=True)
    assert (exact - w).abs().max() < 1e-5
    assert (Q.fake_quant(w, 4, "group", 32, symmetric=False) - w).abs().max() > 1e-3


def test_activation_capture_and_quantization_hooks(offline):
    from lessons_lib import activations
    from lessons_lib import quantize as Q

    model, tokenizer = offline
    windows = data.token_windows(tokenizer, "eval", 1, 64)
    acts = activations.capture_inputs(model, ["model.layers.0.mlp.down_proj"], windows)
    assert acts["model.layers.0.mlp.down_proj"].shape == (64, 1536)
    with pytest.raises(KeyError, match="no modules named"):
        activations.capture_inputs(model, ["model.layers.99.mlp"], windows)
    base = evaluate.perplexity(model, windows, progress=False)
    with Q.quantized_activations(model, 8, "token"):
        assert evaluate.perplexity(model, windows, progress=False) != base
    assert evaluate.perplexity(model, windows, progress=False) == base  # hooks removed
    with pytest.raises(ValueError, match="per 'tensor' or per 'token'"):
        with Q.quantized_activations(model, 8, "group"):
            pass


def test_storage_counts_packed_4bit_weights_and_their_scales():
    from transformers import BitsAndBytesConfig

    cfg = BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_compute_dtype=torch.float32)
    q, _ = models.load_model(quantization_config=cfg)
    assert models.logical_parameters(q) == hardware.SMOLLM2_135M.parameters
    assert sum(p.numel() for p in q.parameters()) < 0.7 * hardware.SMOLLM2_135M.parameters
    linear = sum(w.numel() for w in models.linear_weights(models.load_model()[0]).values())
    embed = q.get_input_embeddings().weight
    norms = sum(p.numel() * p.element_size() for n, p in q.named_parameters() if "norm" in n)
    expected = linear * 4.5 / 8 + embed.numel() * embed.element_size() + norms
    assert abs(models.storage_bytes(q) - expected) < 1e3 and q.get_memory_footprint() < models.storage_bytes(q)
