"""The architecture map: where a transformers causal LM keeps its decoder layers, which linear layers of a layer read
the same input, the module that computes that input and how a per-channel scale folds into it, the embedding and the
head, and the arguments each layer is called with. It is the one module that names an architecture's modules: to
support a new family, add its layer path to LAYER_PATHS and its layout to LAYOUTS."""
from __future__ import annotations

import copy
import math
from dataclasses import dataclass, field

import torch
from torch import nn

from . import validate

# Where the decoder layers sit, tried in order (a path into the model returned by AutoModelForCausalLM).
LAYER_PATHS = ("model.layers", "model.language_model.layers", "model.decoder.layers", "model.language_model.model.layers")

# The four groups of linear layers that read one input each, in the order a decoder layer runs them.
ROLES = ("attention input", "attention output", "mlp input", "mlp output")

# How a per-channel scale s folds into the module that feeds a group, so the model computes the same function.
FOLDS = {
    "norm": "norm weight (and bias) / s",
    "offset_norm": "(1 + w) norm: w' = (1 + w) / s - 1",
    "linear": "the feeding linear's output rows (and bias) / s",
    "none": "cannot fold",
}


@dataclass(frozen=True)
class Layout:
    """Attribute paths inside one decoder layer of a family; `absent` paths must not exist (to tell families apart)."""

    family: str
    attn: str  # the attention module: AWQ protects its output when it rescales q/k/v
    qkv: tuple  # q, k and v projections, or one fused projection
    o: str
    mlp: str  # the MLP module ("" when the MLP's linears sit in the layer itself)
    up: tuple  # gate and up, one fused gate_up, or a single ungated fc1
    down: str
    attn_norm: str  # the norm whose output q/k/v read
    mlp_norm: str  # the norm whose output gate/up read
    act: str = ""  # ungated MLPs: the activation between up and down (a scale folds through it only if ReLU-like)
    pre_norm_flag: str = ""  # a layer attribute that must be true for the norms to feed the groups (pre-norm layers)
    absent: tuple = ()


_QKV = ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj")
LAYOUTS = (
    # Gemma 2 and 3 normalize the attention output with post_attention_layernorm; the MLP reads pre_feedforward_layernorm.
    Layout("Gemma 2/3 (sandwich norms)", "self_attn", _QKV, "self_attn.o_proj", "mlp", ("mlp.gate_proj", "mlp.up_proj"),
           "mlp.down_proj", "input_layernorm", "pre_feedforward_layernorm"),
    Layout("LLaMA-style (LLaMA, Mistral, Qwen2/3, SmolLM)", "self_attn", _QKV, "self_attn.o_proj", "mlp",
           ("mlp.gate_proj", "mlp.up_proj"), "mlp.down_proj", "input_layernorm", "post_attention_layernorm",
           absent=("pre_feedforward_layernorm",)),
    Layout("Phi-3 (fused qkv and gate_up)", "self_attn", ("self_attn.qkv_proj",), "self_attn.o_proj", "mlp",
           ("mlp.gate_up_proj",), "mlp.down_proj", "input_layernorm", "post_attention_layernorm",
           absent=("pre_feedforward_layernorm",)),
    Layout("OPT (LayerNorm with bias, ungated MLP)", "self_attn", _QKV, "self_attn.out_proj", "", ("fc1",), "fc2",
           "self_attn_layer_norm", "final_layer_norm", act="activation_fn", pre_norm_flag="do_layer_norm_before"),
)


@dataclass
class Group:
    """Linear layers that read one input (`balance`), the module computing that input (`smooth`) and how a
    per-channel scale folds into it (`fold`, a key of FOLDS; `why` says why not when it is "none")."""

    name: str  # the feeding module's attribute name (input_layernorm, v_proj, ...), or the role when none feeds it
    smooth: nn.Module | None
    balance: list
    parent: nn.Module  # the module whose output a scale search protects
    role: str = ""
    fold: str | None = None  # None: found from `smooth` (a linear, or a norm probed by norm_fold)
    why: str = ""
    rows: int = 0  # for a linear feeder: how many of its last output rows produce this input (a fused qkv's v part)
    paths: list = field(default_factory=list)  # the balance layers' paths inside the decoder layer

    def __post_init__(self):
        if self.fold is None:
            self.fold = "linear" if isinstance(self.smooth, nn.Linear) else norm_fold(self.smooth)
            self.why = "" if self.fold != "none" else f"{type(self.smooth).__name__} takes no per-channel scale"

    @property
    def foldable(self) -> bool:
        """Whether a per-channel scale can fold into the module that feeds this group."""
        return self.fold != "none"


def _get(root: nn.Module, path: str):
    """The submodule or attribute at a dotted path, or None."""
    obj = root
    for part in path.split("."):
        obj = getattr(obj, part, None)
        if obj is None:
            return None
    return obj


def layers_path(model: nn.Module) -> str:
    """The dotted path of the model's decoder layers (e.g. "model.layers"); error naming where to add a new one."""
    validate.model(model)
    for path in LAYER_PATHS:
        if isinstance(_get(model, path), nn.ModuleList):
            return path
    raise validate.UnknownName(
        f"{type(model).__name__}: no decoder layers at any of {list(LAYER_PATHS)}; add the path of its nn.ModuleList "
        "of decoder layers to LAYER_PATHS in lessons_lib/architecture.py")


def decoder_layers(model: nn.Module) -> nn.ModuleList:
    """The model's decoder layers, in order."""
    return _get(model, layers_path(model))


def layout(layer: nn.Module) -> Layout:
    """The Layout of LAYOUTS that this decoder layer matches; error naming what the closest one lacks."""
    validate.model(layer, "layer")
    if callable(getattr(layer, "get_input_embeddings", None)):  # a whole model (or its backbone), not one layer
        raise validate.BadInput(f"pass one decoder layer, not the whole {type(layer).__name__}: "
                                "architecture.decoder_layers(model)[i]")
    best = None
    for lay in LAYOUTS:
        paths = [lay.attn, *lay.qkv, lay.o, *lay.up, lay.down, lay.attn_norm, lay.mlp_norm] + ([lay.mlp] if lay.mlp else [])
        missing = [p for p in paths if not isinstance(_get(layer, p), nn.Module)]
        present = [p for p in lay.absent if _get(layer, p) is not None]
        if not missing and not present:
            return lay
        if best is None or len(missing) + len(present) < best[1]:
            best = (lay, len(missing) + len(present), missing, present)
    lay, _, missing, present = best
    what = (f"lacks {missing}" if missing else "") + (" and " if missing and present else "") + \
           (f"has {present}, which it must not" if present else "")
    raise validate.UnknownName(
        f"decoder layer {type(layer).__name__} matches no layout: the closest, {lay.family}, {what}; add a Layout for "
        "this family to LAYOUTS in lessons_lib/architecture.py (the paths of its q/k/v, o, gate/up, down and the norms "
        "that feed them)")


@torch.no_grad()
def norm_fold(norm: nn.Module) -> str:
    """How a per-channel scale folds into a norm, found by trying each fold on a copy: "norm", "offset_norm" or "none"."""
    validate.model(norm, "norm")
    weight = getattr(norm, "weight", None)
    if not isinstance(weight, torch.Tensor) or weight.dim() != 1:
        return "none"
    d = weight.numel()
    g = torch.Generator().manual_seed(0)
    x = torch.randn(4, d, generator=g)
    s = torch.rand(d, generator=g) + 0.5
    for kind in ("norm", "offset_norm"):
        probe = copy.deepcopy(norm).float().cpu()
        probe.weight.data.fill_(0.5)
        if getattr(probe, "bias", None) is not None:
            probe.bias.data.fill_(0.25)
        want = probe(x) / s
        fold_into(probe, kind, s)
        if torch.allclose(probe(x), want, rtol=1e-4, atol=1e-5):
            return kind
    return "none"


@torch.no_grad()
def _homogeneous(act) -> bool:
    """Whether act(x / s) == act(x) / s for s > 0 (ReLU yes, GELU and SiLU no): a scale then folds through it."""
    if not callable(act):
        return False
    x = torch.randn(64, generator=torch.Generator().manual_seed(0))
    return torch.allclose(act(x / 3.0), act(x) / 3.0, rtol=1e-5, atol=1e-6)


def _linears(layer: nn.Module, paths) -> list:
    mods = [_get(layer, p) for p in paths]
    bad = [p for p, m in zip(paths, mods) if not (isinstance(m, nn.Module) and hasattr(m, "in_features"))]
    if bad:
        raise validate.UnknownName(f"{type(layer).__name__}: {bad} are not linear layers; fix its Layout in "
                                   "LAYOUTS in lessons_lib/architecture.py")
    return mods


def groups(layer: nn.Module) -> list[Group]:
    """The layer's four groups (ROLES order): each group's linears, the module that feeds them and how a scale folds."""
    lay = layout(layer)
    qkv, (o,), up, (down,) = (_linears(layer, p) for p in (lay.qkv, (lay.o,), lay.up, (lay.down,)))
    attn, mlp = _get(layer, lay.attn), (_get(layer, lay.mlp) if lay.mlp else None)
    post_norm = bool(lay.pre_norm_flag) and not getattr(layer, lay.pre_norm_flag, True)
    out = []
    for role, norm_path, balance, paths, parent in (("attention input", lay.attn_norm, qkv, lay.qkv, attn),
                                                    ("mlp input", lay.mlp_norm, up, lay.up, mlp or up[0])):
        norm = _get(layer, norm_path)
        kind, why = ("none", f"{lay.pre_norm_flag} is False: the norm runs after the residual add, so nothing in this "
                             "layer feeds these linears with a per-channel weight") if post_norm else (norm_fold(norm), "")
        if kind == "none" and not why:
            why = f"{type(norm).__name__} scales its output in a way no fold reproduces"
        out.append(Group(norm_path.split(".")[-1], norm, balance, parent, role, kind, why, 0, list(paths)))
    # attention output: v -> o, only when every o input channel is one v channel (no grouped-query sharing)
    v = qkv[-1]
    v_rows = v.out_features if len(qkv) == 3 else (v.out_features - o.in_features) // 2
    ok = v_rows == o.in_features
    out.insert(1, Group(lay.qkv[-1].split(".")[-1], v, [o], o, "attention output", "linear" if ok else "none",
                        "" if ok else f"grouped-query attention: {o.in_features} o inputs share {v_rows} v outputs",
                        o.in_features, [lay.o]))
    # mlp output: up -> down; with a gate, down reads act(gate) * up (linear in up); without one, act(fc1) must be ReLU-like
    feeder = up[-1]
    ok = len(up) == 2 or feeder.out_features == 2 * down.in_features or _homogeneous(_get(layer, lay.act) if lay.act else None)
    fused = len(up) == 1 and feeder.out_features == 2 * down.in_features
    why = "" if ok else "the activation between the MLP's linears is not positively homogeneous (not ReLU)"
    out.append(Group(lay.up[-1].split(".")[-1], feeder, [down], down, "mlp output", "linear" if ok else "none", why,
                     down.in_features, [lay.down]))
    if not fused and len(up) == 1 and feeder.out_features != down.in_features:
        raise validate.UnknownName(f"{type(layer).__name__}: {lay.up[0]} has {feeder.out_features} outputs but {lay.down} "
                                   f"reads {down.in_features}; fix its Layout in lessons_lib/architecture.py")
    return out


def layer_map(model: nn.Module) -> list[list[Group]]:
    """Every decoder layer's groups (a list per layer, ROLES order)."""
    return [groups(layer) for layer in decoder_layers(model)]


@torch.no_grad()
def fold_into(module: nn.Module, kind: str, s: torch.Tensor, rows: int = 0) -> None:
    """Divide `module`'s output by s in place, the way FOLDS[kind] says (the balance layers multiply by s)."""
    validate.tensor(s, "s", dims=1, kind="float", todo="one positive scale per channel the module outputs")
    weight = getattr(module, "weight", None)
    dims = {"linear": 2, "norm": 1, "offset_norm": 1}.get(kind)
    if dims is not None and not (isinstance(weight, torch.Tensor) and weight.dim() == dims):
        raise validate.BadInput(f"fold_into(..., {kind!r}) needs a module with a {dims}-D weight (a "
                                f"{'linear layer' if dims == 2 else 'norm'}), got {type(module).__name__}: use the kind "
                                f"that architecture.layout(layer) gives this module")
    width = rows or module.weight.shape[0]
    if s.numel() != width or not bool((s > 0).all()):
        raise validate.BadInput(f"s must hold {width} positive scales (one per output channel folded), got "
                                f"{s.numel()}{'' if bool((s > 0).all()) else ' with some <= 0'}")
    if kind == "linear":
        rows = rows or s.numel()
        module.weight.data[-rows:] /= s.view(-1, 1).to(module.weight.dtype)
        if module.bias is not None:
            module.bias.data[-rows:] /= s.to(module.bias.dtype)
    elif kind in ("norm", "offset_norm"):
        w = module.weight.data
        w.copy_((1 + w.float()) / s.to(w.device) - 1 if kind == "offset_norm" else w.float() / s.to(w.device))
        if getattr(module, "bias", None) is not None:
            module.bias.data /= s.to(module.bias.dtype)
    else:
        raise validate.UnknownName(f"cannot fold a scale ({kind!r}); the folds are {list(FOLDS)}")


def embedding(model: nn.Module) -> nn.Embedding:
    """The token embedding (model.get_input_embeddings())."""
    validate.model(model)
    emb = model.get_input_embeddings() if hasattr(model, "get_input_embeddings") else None
    if not isinstance(emb, nn.Embedding):
        raise validate.UnknownName(f"{type(model).__name__} has no token embedding (get_input_embeddings())")
    return emb


def head(model: nn.Module) -> nn.Module | None:
    """The output head (model.get_output_embeddings()), or None when the model has none."""
    validate.model(model)
    return model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None


def head_name(model: nn.Module) -> str | None:
    """The module name of the output head, or None."""
    h = head(model)
    return next((n for n, m in model.named_modules() if m is h), None) if h is not None else None


def linear_names(model: nn.Module, role: str | None = None) -> list[str]:
    """Full module names of the decoder layers' linears, layer by layer (only those of one ROLES group if given)."""
    if role is not None:
        validate.choice(role, "role", ROLES)
    base = layers_path(model)
    return [f"{base}.{i}.{p}" for i, layer in enumerate(decoder_layers(model))
            for g in groups(layer) if role in (None, g.role) for p in g.paths]


def group_names(model: nn.Module, role: str) -> list[str]:
    """One name per layer: the first linear of the layer's `role` group (its input is the whole group's input)."""
    validate.choice(role, "role", ROLES)
    base = layers_path(model)
    return [f"{base}.{i}.{next(g for g in groups(layer) if g.role == role).paths[0]}"
            for i, layer in enumerate(decoder_layers(model))]


def layer_index(model: nn.Module, name: str) -> int:
    """The decoder layer that module `name` belongs to (e.g. 5 for "model.layers.5.mlp.down_proj")."""
    base = layers_path(model) + "."
    if not isinstance(name, str) or not name.startswith(base) or not name[len(base):].split(".")[0].isdigit():
        raise validate.BadInput(f"{name!r} is not inside the decoder layers ({base}N...); see linear_names(model)")
    index = int(name[len(base):].split(".")[0])
    if index >= len(decoder_layers(model)):
        raise validate.BadInput(f"{name!r} names layer {index}, but the model has {len(decoder_layers(model))} decoder "
                                f"layers; see linear_names(model)")
    return index


def short_name(model: nn.Module, name: str) -> str:
    """`name` with the decoder-layer prefix shortened, as "L5.mlp.down_proj"."""
    i = layer_index(model, name)
    try:
        model.get_submodule(name)
    except AttributeError:
        raise validate.BadInput(f"the model has no module {name!r}; see linear_names(model)") from None
    return f"L{i}.{name[len(layers_path(model)) + len(str(i)) + 2:]}"


def kind_of(name: str) -> str:
    """The last part of a module name (its kind within a layer: "down_proj", "fc2", ...)."""
    validate.text(name, "name", "pass a module name such as 'model.layers.0.mlp.down_proj'")
    return name.rsplit(".", 1)[-1]


class _Stop(Exception):
    """Raised by a hook to end a forward pass once every decoder layer's arguments are caught."""


@torch.no_grad()
def layer_inputs(model: nn.Module, windows: torch.Tensor) -> tuple[list, list]:
    """Hidden states entering the first decoder layer for each window, and each layer's own keyword arguments
    for each window (kwargs[layer][window]): layers that alternate attention kinds get their own masks and RoPE.

    The layers are skipped while their arguments are caught (each returns its input), so this costs about one
    embedding lookup per window."""
    layers = decoder_layers(model)
    validate.in_vocabulary(model, windows)
    hidden: list = []
    kwargs: list = [[] for _ in layers]

    def catch(index):
        def hook(_module, args, kw):
            kw = dict(kw)
            h = args[0] if args else kw.pop("hidden_states")
            if index == 0:
                hidden.append(h)
            kwargs[index].append({k: v for k, v in kw.items() if k != "hidden_states"})
            if index == len(layers) - 1:
                raise _Stop
        return hook

    def skip(*args, **kw):
        return args[0] if args else kw["hidden_states"]

    handles = [layer.register_forward_pre_hook(catch(i), with_kwargs=True) for i, layer in enumerate(layers)]
    for layer in layers[:-1]:
        layer.forward = skip
    device = next(model.parameters()).device
    try:
        for window in windows.split(1):
            try:
                model(window.to(device), use_cache=False)
            except _Stop:
                pass
    finally:
        for h in handles:
            h.remove()
        for layer in layers[:-1]:
            del layer.forward
    return hidden, kwargs


# ------------------------------------------------------------------------------------------- per-model parameters
def quantized_widths(model: nn.Module) -> dict[str, int]:
    """Input width of each kind of decoder linear (what a quantization group must divide)."""
    return {kind_of(n): m.in_features for n, m in ((n, model.get_submodule(n)) for n in linear_names(model))}


def group_size(model: nn.Module, most: int = 128) -> tuple[int, str]:
    """The group size for this model and why: `most` (128) where it divides every quantized input width, else 64,
    else the largest power of two that divides them all."""
    most = validate.integer(most, "most", lo=1)
    widths = quantized_widths(model)
    for g in (most, 64):
        if all(w % g == 0 for w in widths.values()):
            bad = {k: w for k, w in widths.items() if w % most}
            return g, (f"{g} divides every quantized input width {sorted(set(widths.values()))}" if g == most else
                       f"{most} does not divide {bad}; 64 divides every width {sorted(set(widths.values()))}")
    common = math.gcd(*widths.values())
    g = common & -common
    return g, f"neither {most} nor 64 divides every width {sorted(set(widths.values()))}; {g} is the largest power of two that does"


def max_positions(model: nn.Module) -> int | None:
    """The longest sequence the model's config allows, or None when it states none."""
    validate.model(model)
    c = getattr(model, "config", None)
    c = getattr(c, "get_text_config", lambda: c)()
    for key in ("max_position_embeddings", "n_positions", "max_sequence_length", "seq_length"):
        v = getattr(c, key, None)
        if isinstance(v, int) and v > 0:
            return v
    return None


@dataclass(frozen=True)
class Sizes:
    """Per-model settings: the group size (and why), and evaluation and calibration sizes that fit the model."""

    group_size: int
    group_reason: str
    window: int
    eval_windows: int
    calib_len: int
    calib_windows: int
    notes: tuple = ()

    def __str__(self) -> str:
        lines = [f"group size {self.group_size}: {self.group_reason}",
                 f"evaluation: {self.eval_windows} windows of {self.window} tokens; "
                 f"calibration: {self.calib_windows} windows of {self.calib_len} tokens"]
        return "\n".join(lines + list(self.notes))


CPU_TOKEN_PARAMETERS = 1e12  # parameters x evaluated tokens one CPU lesson affords (8 x 512 tokens of a 135M model: 5.5e11)


def sizes(model: nn.Module, eval_windows: int = 8, window: int = 512, calib_windows: int = 16, calib_len: int = 256,
          device: str | torch.device | None = None) -> Sizes:
    """The requested sizes, cut to fit the model: windows no longer than its context, on a CPU no more tokens than
    CPU_TOKEN_PARAMETERS allows, and enough calibration tokens for a positive-definite GPTQ Hessian."""
    validate.model(model)
    for v, n in ((eval_windows, "eval_windows"), (calib_windows, "calib_windows"), (calib_len, "calib_len")):
        validate.integer(v, n, lo=1)
    validate.integer(window, "window", lo=2, todo="a window needs two tokens at least: one to predict from and one "
                     "to predict")
    notes = []
    most = max_positions(model)
    if most is not None and max(window, calib_len) > most:
        notes.append(f"windows cut to the model's {most} positions")
        window, calib_len = min(window, most), min(calib_len, most)
    params = sum(p.numel() for p in model.parameters())
    dev = validate.device(device) if device is not None else next(model.parameters()).device
    if dev.type == "cpu":
        fit = max(1, int(CPU_TOKEN_PARAMETERS // (params * window)))
        if fit < eval_windows:
            notes.append(f"on a CPU, {fit} evaluation windows for {params / 1e6:.0f}M parameters (asked {eval_windows})")
            eval_windows = fit
    widest = max(quantized_widths(model).values())
    need = math.ceil(widest / calib_len) + 1  # more tokens than the widest input, so X^T X can be full rank
    if calib_windows < need:
        notes.append(f"{need} calibration windows: the widest quantized input has {widest} channels")
        calib_windows = need
    g, why = group_size(model)
    return Sizes(g, why, window, eval_windows, calib_len, calib_windows, tuple(notes))


def no_clip(layer: nn.Module) -> list:
    """The linears computing queries and keys (or a fused qkv): AutoAWQ does not clip them, since the attention
    softmax reshapes their errors."""
    lay = layout(layer)
    qkv = _linears(layer, lay.qkv)
    return qkv[:2] if len(qkv) == 3 else qkv
