import pytest
import torch

from lessons_lib import kernels, toolkit
from test_gptq import tiny_llama


def _save_quantized(tmp_path_factory, scheme_or_groups: dict) -> object:
    """A tiny LLaMA quantized by llm-compressor (data-free RTN) with this scheme, saved compressed; its folder."""
    from llmcompressor import oneshot
    from llmcompressor.modifiers.quantization import QuantizationModifier
    from transformers import LlamaForCausalLM

    src, out = tmp_path_factory.mktemp("float"), tmp_path_factory.mktemp("quantized")
    tiny_llama().save_pretrained(src)
    model = LlamaForCausalLM.from_pretrained(src)  # oneshot reads the config back from model.config.name_or_path
    with toolkit._quiet_progress():
        oneshot(model=model, recipe=QuantizationModifier(**scheme_or_groups, ignore=["lm_head"]))
        model.save_pretrained(out, save_compressed=True)
    return out


@pytest.fixture(scope="module")
def w4_checkpoint(tmp_path_factory):
    """W4A16, symmetric groups of 32."""
    from compressed_tensors.quantization import QuantizationArgs, QuantizationScheme

    scheme = QuantizationScheme(targets=["Linear"], weights=QuantizationArgs(num_bits=4, type="int", symmetric=True,
                                                                              strategy="group", group_size=32))
    return _save_quantized(tmp_path_factory, {"config_groups": {"w4": scheme}})


@pytest.fixture(scope="module")
def w8a8_checkpoint(tmp_path_factory):
    """llm-compressor's W8A8 preset: int8 per-channel weights, dynamic per-token int8 activations."""
    return _save_quantized(tmp_path_factory, {"targets": "Linear", "scheme": "W8A8"})


def _same_logits(checkpoint, fmt: str, tolerance: float) -> None:
    reference = toolkit.reload(checkpoint)  # weights decompressed to float by transformers (and activations fake-quantized)
    fast = toolkit.load_on_kernels(checkpoint)
    swapped = [m for m in fast.modules() if isinstance(m, kernels.QuantLinear)]
    assert len(swapped) == 2 * 7 and all(m.qw.fmt == fmt for m in swapped)
    ids = torch.randint(0, 128, (2, 16), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        a, b = fast(ids).logits, reference(ids).logits
    assert kernels.relative_error(a, b) < tolerance
    name = "model.layers.1.mlp.down_proj"
    w = reference.get_submodule(name).weight.detach()
    assert torch.allclose(fast.get_submodule(name).qw.dequantize(), w, rtol=1e-2, atol=1e-4)  # same codes


def test_w4a16_checkpoint_runs_on_the_int4_kernel_with_the_same_logits(w4_checkpoint):
    _same_logits(w4_checkpoint, "int4_weight_only", 2e-2)  # bf16 activations and scales in the kernel


def test_w8a8_checkpoint_runs_on_int_mm_with_the_same_logits(w8a8_checkpoint):
    # Same int8 codes, and activations rounded on compressed-tensors' own grid (absmax / 127.5, codes -128..127):
    # one layer agrees to float rounding; through the model, an activation that float rounding moves across a code
    # boundary flips its code, and later layers carry that on, so the logits differ by a little more.
    _same_logits(w8a8_checkpoint, "int8_w8a8", 1e-2)
    name = "model.layers.1.mlp.down_proj"
    reference, fast = toolkit.reload(w8a8_checkpoint).get_submodule(name), toolkit.load_on_kernels(w8a8_checkpoint).get_submodule(name)
    x = torch.randn(1, 9, reference.in_features, generator=torch.Generator().manual_seed(1))  # [batch, tokens, features]
    with torch.no_grad():
        assert kernels.relative_error(fast(x), reference(x)) < 1e-5


def test_other_schemes_are_refused(w4_checkpoint, w8a8_checkpoint):
    from types import SimpleNamespace

    def config(folder):
        q = toolkit.reload(folder).config.quantization_config
        return q if isinstance(q, dict) else q.to_dict()

    assert toolkit._kernel_scheme(SimpleNamespace(quantization_config=config(w4_checkpoint))) == ("w4a16", 32)
    assert toolkit._kernel_scheme(SimpleNamespace(quantization_config=config(w8a8_checkpoint))) == ("w8a8", None)
    q = config(w4_checkpoint)
    next(iter(q["config_groups"].values()))["weights"]["symmetric"] = False
    with pytest.raises(ValueError, match="takes two schemes"):
        toolkit._kernel_scheme(SimpleNamespace(quantization_config=q))


def test_w4a16_checkpoint_codes_run_in_the_course_triton_kernel(w4_checkpoint):
    """llm-compressor's own 4-bit codes and group scales, unpacked by load_on_kernels, go into lesson 08b's Triton
    W4A16 kernel unchanged: the same dequantized weight, and the same product as the checkpoint's float weight."""
    from lessons_lib import gemv

    reference, fast = toolkit.reload(w4_checkpoint), toolkit.load_on_kernels(w4_checkpoint)
    for name in ("model.layers.0.self_attn.q_proj", "model.layers.1.mlp.down_proj"):
        ours = gemv.W4A16.from_int4(fast.get_submodule(name).qw)
        w = reference.get_submodule(name).weight.detach().float()
        assert torch.allclose(ours.dequantize(), w, rtol=1e-2, atol=1e-4)  # the checkpoint's codes, bf16 scales
        x = torch.randn(2, ours.in_features, generator=torch.Generator().manual_seed(2)).to(torch.bfloat16)
        assert kernels.relative_error(ours(x), x.float() @ w.T) < 2e-2


@pytest.mark.parametrize("family", ["llama", "gemma3", "phi3", "opt"])
def test_llm_compressor_mappings_come_from_the_architecture_map(family, tmp_path):
    """Every mapping names one module per decoder layer; on LLaMA they are llm-compressor's own; on OPT, whose
    names llm-compressor does not know, its AWQ runs with them (its own LLaMA guess raises)."""
    import re

    from transformers import AutoModelForCausalLM
    from test_architectures import _config

    from lessons_lib import architecture, models

    torch.manual_seed(0)
    AutoModelForCausalLM.from_config(_config(family)).save_pretrained(tmp_path / "float")
    model = AutoModelForCausalLM.from_pretrained(tmp_path / "float")  # oneshot reads the config from its folder
    names = [n for n, _ in model.named_modules()]
    layers = len(architecture.decoder_layers(model))
    for method in ("awq", "smoothquant"):
        maps = toolkit.mappings(model, method)
        pairs = [(m.smooth_layer, m.balance_layers) for m in maps] if method == "awq" else [(s, b) for b, s in maps]
        assert pairs and all(len([n for n in names if re.match(p[3:], n)]) == layers
                             for smooth, balance in pairs for p in [smooth, *balance])
    if family == "llama":
        assert [m.smooth_layer.rsplit(".", 1)[-1] for m in toolkit.mappings(model, "awq")] == \
            ["input_layernorm$", "post_attention_layernorm$", "up_proj$"]  # v -> o left out: grouped-query attention
    if family == "opt":
        from llmcompressor.modifiers.transform import AWQModifier
        from llmcompressor.modifiers.quantization import QuantizationModifier

        _, tokenizer = models.load_model()
        from compressed_tensors.quantization import QuantizationArgs, QuantizationScheme

        w4 = QuantizationScheme(targets=["Linear"], weights=QuantizationArgs(num_bits=4, type="int", symmetric=True,
                                                                          strategy="group", group_size=32))
        recipe = [AWQModifier(mappings=toolkit.mappings(model, "awq"), n_grid=3),
                  QuantizationModifier(config_groups={"w4": w4}, ignore=["lm_head"])]
        toolkit.oneshot(model, tokenizer, recipe, torch.randint(3, 250, (2, 16)), tmp_path / "awq")
        assert (tmp_path / "awq" / "config.json").is_file() and not list(tmp_path.glob("awq.partial-*"))
    with pytest.raises(ValueError, match="method"):
        toolkit.mappings(model, "gptq")
