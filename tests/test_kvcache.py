"""KV cache INT8 / INT4: per-channel keys (KIVI) and per-token values, bytes per token, the attention hook."""
import pytest
import torch

from lessons_lib import hardware as hw
from lessons_lib import kvcache, validate


def _kv(seed=0):
    g = torch.Generator().manual_seed(seed)
    k = torch.randn(1, 2, 64, 16, generator=g)
    k[..., 3] *= 20  # an outlier channel, as real keys have
    return k, torch.randn(1, 2, 64, 16, generator=g)


def test_kivi_keys_per_channel_beat_per_token_on_outlier_channels():
    k, v = _kv()
    err = {}
    for fmt in ("int4_per_token", "int4_kivi", "int8_kivi"):
        kq, vq = kvcache.transform(fmt)(k, v)
        assert kq.shape == k.shape and vq.shape == v.shape
        err[fmt] = (kq - k)[..., [c for c in range(16) if c != 3]].pow(2).mean().item()  # the ordinary channels
    assert err["int4_kivi"] < 0.5 * err["int4_per_token"] and err["int8_kivi"] < err["int4_kivi"]
    kq, vq = kvcache.transform("fp16")(k, v)
    assert kq is k and vq is v


def test_per_channel_groups_of_tokens_share_one_scale():
    k = torch.arange(64.0).reshape(1, 1, 64, 1).repeat(1, 1, 1, 2)
    kq, _ = kvcache.transform("int8_kivi")(k, k)
    # tokens 0-31 share a range [0, 31], tokens 32-63 one of [0, 63] (the course's asymmetric grid keeps 0 exact)
    assert (kq - k)[0, 0, :32].abs().max() <= 31 / 255 / 2 + 1e-5 < (kq - k)[0, 0, 32:].abs().max() <= 63 / 255 / 2 + 1e-5


def test_bits_and_bytes_per_token():
    assert kvcache.bits_per_value("int8_per_token", 128) == 8 + 32 / 128
    assert kvcache.bits_per_value("int4_kivi", 128) == 4 + (32 / 32 + 32 / 128) / 2
    assert kvcache.bits_per_value("fp8_e4m3", 128) == 8
    assert kvcache.bytes_per_token(hw.LLAMA3_70B, "fp16") == hw.LLAMA3_70B.kv_bytes_per_token("fp16")
    assert kvcache.bytes_per_token(hw.LLAMA3_70B, "fp8_e4m3") == hw.LLAMA3_70B.kv_bytes_per_token("fp8")


def test_the_hook_changes_attention_and_restores_it():
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    cfg = LlamaConfig(vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=4,
                      num_key_value_heads=2, max_position_embeddings=128, attn_implementation="sdpa")
    model = LlamaForCausalLM(cfg).eval()
    ids = torch.randint(0, 64, (1, 40))
    with torch.no_grad():
        base = model(ids).logits
        with kvcache.cache(model, "int4_per_token"):
            q4 = model(ids).logits
        with kvcache.cache(model, "fp16"):
            same = model(ids).logits
        after = model(ids).logits
    assert not torch.allclose(base, q4) and torch.allclose(base, same) and torch.equal(base, after)


def test_bad_input():
    with pytest.raises(validate.UnknownName, match="int4_kivi"):
        kvcache.transform("int2_kivi")
    with pytest.raises(validate.BadInput):
        kvcache.bits_per_value("int8_kivi", 0)
