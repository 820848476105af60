import pytest
import torch

from lessons_lib import kernels, toolkit
from test_gptq import tiny_llama


@pytest.fixture(scope="module")
def w4_checkpoint(tmp_path_factory):
    """A tiny LLaMA quantized by llm-compressor (W4A16, symmetric groups of 32, data-free RTN) and saved compressed."""
    from compressed_tensors.quantization import QuantizationArgs, QuantizationScheme
    from llmcompressor import oneshot
    from llmcompressor.modifiers.quantization import QuantizationModifier

    from transformers import LlamaForCausalLM

    src, out = tmp_path_factory.mktemp("float"), tmp_path_factory.mktemp("w4")
    tiny_llama().save_pretrained(src)
    model = LlamaForCausalLM.from_pretrained(src)  # oneshot reads the config back from model.config.name_or_path
    scheme = QuantizationScheme(targets=["Linear"], weights=QuantizationArgs(num_bits=4, type="int", symmetric=True,
                                                                              strategy="group", group_size=32))
    with toolkit._quiet_progress():
        oneshot(model=model, recipe=QuantizationModifier(config_groups={"w4": scheme}, ignore=["lm_head"]))
        model.save_pretrained(out, save_compressed=True)
    return out


def test_checkpoint_runs_on_the_int4_kernel_with_the_same_logits(w4_checkpoint):
    reference = toolkit.reload(w4_checkpoint)  # weights decompressed to float by transformers
    fast = toolkit.load_on_kernels(w4_checkpoint)
    swapped = [m for m in fast.modules() if isinstance(m, kernels.QuantLinear)]
    assert len(swapped) == 2 * 7 and all(m.qw.fmt == "int4_wo" for m in swapped)
    ids = torch.randint(0, 128, (2, 16), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        a, b = fast(ids).logits, reference(ids).logits
    assert kernels.relative_error(a, b) < 2e-2  # bf16 activations and scales in the kernel
    name = "model.layers.1.mlp.down_proj"
    w = reference.get_submodule(name).weight.detach()
    assert torch.allclose(fast.get_submodule(name).qw.dequantize(), w, rtol=1e-2, atol=1e-4)  # same codes


def test_other_schemes_are_refused(w4_checkpoint):
    from types import SimpleNamespace

    q = toolkit.reload(w4_checkpoint).config.quantization_config
    q = q if isinstance(q, dict) else q.to_dict()
    assert toolkit._w4_group_size(SimpleNamespace(quantization_config=q)) == 32
    next(iter(q["config_groups"].values()))["weights"]["symmetric"] = False
    with pytest.raises(ValueError, match="4-bit, symmetric, groups"):
        toolkit._w4_group_size(SimpleNamespace(quantization_config=q))
