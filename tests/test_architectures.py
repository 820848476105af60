"""Every method of the course on tiny random-weight models of five families, built locally from transformers configs
(no hub). The weights are random because only code paths are checked here, never quality."""
import copy

import pytest
import torch

from lessons_lib import activations, architecture, awq, gptq, hardware, kernels, models, smoothquant, validate

VOCAB, HIDDEN, MLP = 256, 64, 128
COMMON = dict(vocab_size=VOCAB, hidden_size=HIDDEN, intermediate_size=MLP, num_hidden_layers=2, num_attention_heads=4,
              max_position_embeddings=128, pad_token_id=0, bos_token_id=1, eos_token_id=2)


def _config(family: str):
    import transformers as T

    if family == "llama":  # grouped-query attention: v -> o cannot fold
        return T.LlamaConfig(**COMMON, num_key_value_heads=2)
    if family == "qwen3":  # q/k norms, no grouped-query sharing: v -> o folds
        return T.Qwen3Config(**COMMON, num_key_value_heads=4, head_dim=16)
    if family == "gemma3":  # (1 + w) norms, sandwich norms, q/k norms, sliding and global layers, head_dim != 64 / 4
        return T.Gemma3TextConfig(**COMMON, num_key_value_heads=4, head_dim=32, sliding_window=8,
                                  layer_types=["sliding_attention", "full_attention"], query_pre_attn_scalar=32)
    if family == "phi3":  # fused qkv_proj and gate_up_proj
        return T.Phi3Config(**COMMON, num_key_value_heads=4)
    if family == "opt":  # LayerNorm with bias, biased linears, ungated ReLU MLP
        c = {k: v for k, v in COMMON.items() if k != "intermediate_size"}
        return T.OPTConfig(**c, ffn_dim=MLP, word_embed_proj_dim=HIDDEN, do_layer_norm_before=True)
    raise KeyError(family)


FAMILIES = ("llama", "qwen3", "gemma3", "phi3", "opt")
# How a scale folds into the module feeding each group (ROLES order), per family.
EXPECTED_FOLDS = {
    "llama": ["norm", "none", "norm", "linear"],
    "qwen3": ["norm", "linear", "norm", "linear"],
    "gemma3": ["offset_norm", "linear", "offset_norm", "linear"],
    "phi3": ["norm", "linear", "norm", "linear"],
    "opt": ["norm", "linear", "norm", "linear"],
}


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """Tiny matmuls run fastest on one thread (and do not fight other work for the cores)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def built():
    """One tiny model per family, norms given random weights (and biases) so that a wrong fold shows."""
    from transformers import AutoModelForCausalLM

    out = {}
    for family in FAMILIES:
        torch.manual_seed(0)
        model = AutoModelForCausalLM.from_config(_config(family), attn_implementation="eager").eval()
        with torch.no_grad():
            for m in model.modules():
                w, b = getattr(m, "weight", None), getattr(m, "bias", None)
                if isinstance(w, torch.Tensor) and w.dim() == 1:
                    w.copy_((0.0 if family == "gemma3" else 1.0) + 0.3 * torch.randn_like(w))
                    if isinstance(b, torch.Tensor):
                        b.copy_(0.1 * torch.randn_like(b))
        out[family] = model
    return out


@pytest.fixture(params=FAMILIES)
def tiny(request, built):
    return request.param, copy.deepcopy(built[request.param])


def _windows(n: int = 8, length: int = 32, seed: int = 0) -> torch.Tensor:
    return torch.randint(3, VOCAB, (n, length), generator=torch.Generator().manual_seed(seed))


def _logits(model, ids) -> torch.Tensor:
    with torch.no_grad():
        return model(ids).logits.float()


def _rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return ((a - b).norm() / b.norm()).item()


def _before(model) -> tuple[torch.Tensor, torch.Tensor]:
    """Fixed windows and the model's logits on them, before a method changes the model."""
    ids = _windows(1, 24, seed=5)
    return ids, _logits(model, ids)


def _assert_changed_but_finite(model, ids: torch.Tensor, ref: torch.Tensor) -> None:
    out = _logits(model, ids)
    assert torch.isfinite(out).all() and 0 < _rel(out, ref) < 1


def test_map_finds_layers_groups_folds_embedding_and_head(tiny):
    family, model = tiny
    layers = architecture.decoder_layers(model)
    assert len(layers) == 2
    for layer in layers:
        gs = architecture.groups(layer)
        assert [g.role for g in gs] == list(architecture.ROLES)
        assert [g.fold for g in gs] == EXPECTED_FOLDS[family], family
        assert all(g.why for g in gs if not g.foldable)
        linears = {id(m) for m in layer.modules() if isinstance(m, torch.nn.Linear)}
        assert {id(lin) for g in gs for lin in g.balance} == linears  # every linear in exactly one group
    assert architecture.embedding(model).weight.shape == (VOCAB, HIDDEN)
    assert architecture.head_name(model) not in models.decoder_linears(model)
    assert set(models.decoder_linears(model)) == set(architecture.linear_names(model))
    names = architecture.group_names(model, "mlp output")
    assert [architecture.layer_index(model, n) for n in names] == [0, 1]
    base = architecture.layers_path(model)
    assert architecture.short_name(model, names[1]) == "L1." + names[1][len(base) + 3:]
    with pytest.raises(validate.BadInput, match="not inside the decoder layers"):
        architecture.layer_index(model, architecture.head_name(model))


def test_folding_scales_keeps_the_logits(tiny):
    family, model = tiny
    ids = _windows(2, 24)
    ref = _logits(model, ids)
    g = torch.Generator().manual_seed(1)
    folded = 0
    for layer in architecture.decoder_layers(model):
        for m in awq.layer_mappings(layer):
            awq.fold_scales(m, torch.rand(m.balance[0].in_features, generator=g) * 1.5 + 0.5)
            folded += 1
    assert folded == 2 * sum(f != "none" for f in EXPECTED_FOLDS[family])
    assert _rel(_logits(model, ids), ref) < 1e-5, family


def test_a_wrong_fold_would_change_the_logits(built):
    """The fold test can fail: folding Gemma's (1 + w) norms as if they were plain weights changes the logits."""
    model = copy.deepcopy(built["gemma3"])
    ids = _windows(2, 24)
    ref = _logits(model, ids)
    for layer in architecture.decoder_layers(model):
        m = awq.layer_mappings(layer)[0]
        s = torch.full((m.balance[0].in_features,), 2.0)
        for lin in m.balance:
            lin.weight.data *= s
        architecture.fold_into(m.smooth, "norm", s)
    assert _rel(_logits(model, ids), ref) > 1e-2


def test_each_layer_gets_its_own_arguments(tiny):
    family, model = tiny
    ids = _windows(3, 24)
    layers = architecture.decoder_layers(model)
    outputs = []
    hooks = [layer.register_forward_hook(lambda _m, _a, out: outputs.append(gptq._first(out))) for layer in layers]
    with torch.no_grad():
        for w in ids.split(1):
            model(w, use_cache=False)
    for h in hooks:
        h.remove()
    hidden, kwargs = architecture.layer_inputs(model, ids)
    assert len(hidden) == 3 and len(kwargs) == len(layers) and all(len(k) == 3 for k in kwargs)
    with torch.no_grad():
        for i, layer in enumerate(layers):
            hidden = [gptq._first(layer(h, **kw)) for h, kw in zip(hidden, kwargs[i])]
            for w, h in enumerate(hidden):
                assert torch.allclose(h, outputs[w * len(layers) + i], atol=1e-5), (family, i, w)


def test_sliding_and_global_layers_differ(built):
    """Gemma3's layer 0 slides, layer 1 attends globally: replaying layer 0's arguments for layer 1 is wrong."""
    model = built["gemma3"]
    ids = _windows(1, 24)
    hidden, kwargs = architecture.layer_inputs(model, ids)
    layer = architecture.decoder_layers(model)[1]
    with torch.no_grad():
        h = gptq._first(architecture.decoder_layers(model)[0](hidden[0], **kwargs[0][0]))
        own, replayed = gptq._first(layer(h, **kwargs[1][0])), gptq._first(layer(h, **kwargs[0][0]))
    assert _rel(replayed, own) > 1e-3


def test_gptq_runs_end_to_end(tiny):
    family, model = tiny
    ids, ref = _before(model)
    before = {n: lin.weight.clone() for n, lin in models.decoder_linears(model).items()}
    gptq.quantize_model(model, _windows(), bits=4, group_size=architecture.group_size(model)[0], progress=False)
    after = models.decoder_linears(model)
    assert all(not torch.equal(before[n], after[n].weight) for n in before), family
    for n, lin in after.items():  # every row of every group holds at most 16 levels
        g = lin.weight.reshape(-1, 64)
        assert max(len(torch.unique(r)) for r in g[:8]) <= 16, n
    _assert_changed_but_finite(model, ids, ref)


def test_awq_runs_end_to_end(tiny):
    family, model = tiny
    ids, ref = _before(model)
    histories = awq.quantize_model(model, _windows(), bits=4, group_size=64, n_grid=4, apply_clip=True, progress=False)
    assert len(histories) == 2 * sum(f != "none" for f in EXPECTED_FOLDS[family])
    _assert_changed_but_finite(model, ids, ref)


def test_smoothquant_and_w8a8_run_end_to_end(tiny):
    family, model = tiny
    ids, ref = _before(model)
    stats = smoothquant.activation_absmax(model, _windows(), include_down=True)
    assert set(stats) == set(architecture.group_names(model, "attention input") + architecture.group_names(model, "mlp input")
                             + architecture.group_names(model, "mlp output"))
    smoothquant.smooth_model(model, stats, 0.5, include_down=True)
    assert _rel(_logits(model, ids), ref) < 1e-5  # smoothing alone computes the same function
    originals = smoothquant.w8a8(model)
    assert all(isinstance(model.get_submodule(n), kernels.QuantLinear) for n in originals)
    assert architecture.head_name(model) not in originals
    out = _logits(model, ids)
    assert torch.isfinite(out).all() and _rel(out, ref) < 0.1
    kernels.restore_linears(model, originals)


def test_int4_weight_only_swap_runs(tiny):
    family, model = tiny
    ids, ref = _before(model)
    names = architecture.linear_names(model)
    originals = kernels.swap_linears(model, "int4_weight_only", group_size=architecture.group_size(model)[0])
    assert sorted(originals) == sorted(names) == sorted(architecture.linear_names(model))  # the map sees kernels too
    assert isinstance(architecture.head(model), torch.nn.Linear)  # the head stays in float
    out = _logits(model, ids)
    assert torch.isfinite(out).all() and _rel(out, ref) < 0.5
    kernels.restore_linears(model, originals)
    assert torch.equal(_logits(model, ids), ref)


def test_activation_capture_and_shape(tiny):
    family, model = tiny
    names = architecture.group_names(model, "mlp output")
    acts = activations.capture_inputs(model, names, _windows(2, 16))
    assert all(acts[n].shape == (32, MLP) for n in names)
    first = names[:1]  # stopping each window's pass once layer 0 has its input captures the same tensor
    captured = []
    activations.run_with_input_hooks(model, _windows(2, 16), {first[0]: captured.append}, stop_early=False)
    assert torch.equal(activations.capture_inputs(model, first, _windows(2, 16))[first[0]],
                       torch.cat([x.reshape(-1, MLP).float() for x in captured]))
    assert set(activations.input_channel_absmax(model, _windows(1, 16))) == set(architecture.linear_names(model))
    shape = hardware.shape_of(model)
    c = model.config
    assert (shape.layers, shape.hidden, shape.mlp, shape.vocab) == (2, HIDDEN, MLP, VOCAB)
    assert shape.head_dim == getattr(c, "head_dim", None) or HIDDEN // 4
    assert shape.gated == (family != "opt")
    if family == "llama":  # no biases, no q/k norms: the count is exact
        assert shape.parameters == sum(p.numel() for p in model.parameters())
    assert shape.kv_bytes_per_token("fp16") == 2 * 2 * shape.kv_heads * shape.head_dim * 2


def test_group_size_and_sizes_follow_the_model(built):
    import transformers as T

    assert architecture.group_size(built["llama"])[0] == 64  # 128 does not divide the 64-wide inputs
    wide = T.LlamaForCausalLM(T.LlamaConfig(**(COMMON | dict(hidden_size=256, intermediate_size=512))))
    assert architecture.group_size(wide)[0] == 128
    odd = T.LlamaForCausalLM(T.LlamaConfig(**(COMMON | dict(hidden_size=96, intermediate_size=160))))
    g, why = architecture.group_size(odd)
    assert g == 32 and "largest power of two" in why
    s = architecture.sizes(built["llama"], eval_windows=8, window=512, calib_windows=1, calib_len=64)
    assert s.window == 128 and s.calib_len == 64 and "128 positions" in str(s)  # cut to max_position_embeddings
    assert s.calib_windows * s.calib_len > MLP and s.eval_windows == 8
    assert "group size 64" in str(s)


def test_an_unknown_architecture_is_named_with_where_to_add_it(built):
    import transformers as T

    gpt2 = T.GPT2LMHeadModel(T.GPT2Config(n_embd=32, n_layer=1, n_head=2, vocab_size=64, n_positions=32))
    with pytest.raises(validate.UnknownName, match="LAYER_PATHS in lessons_lib/architecture.py"):
        architecture.decoder_layers(gpt2)
    model = copy.deepcopy(built["llama"])
    for layer in architecture.decoder_layers(model):
        layer.mlp.proj_in = layer.mlp.up_proj
        del layer.mlp.up_proj
    with pytest.raises(validate.UnknownName, match="lacks .*up_proj.* LAYOUTS in lessons_lib/architecture.py"):
        gptq.quantize_model(model, _windows(), progress=False)
