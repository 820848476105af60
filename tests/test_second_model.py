"""BOS handling of windows, model identity from the loaded model, and the second offline model (Gemma-3-270M).

The BOS logic is tested on tiny local tokenizers (one that adds BOS, one that does not) and on the default model's own
tokenizer; the Gemma tests need its packages (`make second-model`) and skip with that reason when they are absent."""
from __future__ import annotations

import importlib.util

import pytest
import torch

from lessons_lib import data, evaluate, models

WORDS = ["<unk>", "<bos>", "<eos>", "the", "of", "and", "to", "a", "in", "our", "we"]


def tiny_tokenizer(adds_bos: bool):
    """A word-level tokenizer over a few words (the rest is <unk>), with or without a BOS post-processor."""
    from tokenizers import Tokenizer, models as tmodels, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(tmodels.WordLevel({w: i for i, w in enumerate(WORDS)}, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    if adds_bos:
        tok.post_processor = processors.TemplateProcessing(single="<bos> $A", pair="<bos> $A <bos> $B",
                                                           special_tokens=[("<bos>", 1)])
    return PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="<unk>", bos_token="<bos>", eos_token="<eos>")


def test_bos_id_is_decided_by_what_the_tokenizer_does():
    assert data.bos_id(tiny_tokenizer(adds_bos=True)) == 1
    assert data.bos_id(tiny_tokenizer(adds_bos=False)) is None  # has a bos_token, but never puts it first


@pytest.mark.parametrize("name", ["test", "calib"])
def test_windows_start_with_bos_once_when_the_model_expects_it(name):
    tok = tiny_tokenizer(adds_bos=True)
    w = data.token_windows(tok, name, 6, 64)
    assert w.shape == (6, 64)
    assert (w[:, 0] == 1).all() and not (w[:, 1:] == 1).any()
    first = data.split_documents(name)[0].text  # window 0: BOS, then the first 63 tokens of the first document
    assert w[0, 1:].tolist() == tok(first, add_special_tokens=False).input_ids[:63]


def test_windows_without_bos_are_cut_as_before():
    tok = tiny_tokenizer(adds_bos=False)
    w = data.token_windows(tok, "test", 4, 64)
    first = data.split_documents("test")[0].text
    assert w[0].tolist() == tok(first).input_ids[:64] and not (w == 1).any()


def test_mixed_calibration_windows_each_start_with_one_bos():
    w = data.mixed_windows(tiny_tokenizer(adds_bos=True), ["calib", "shakespeare_dev"], 4, 32)
    assert (w[:, 0] == 1).all() and not (w[:, 1:] == 1).any()


class Recorder(torch.nn.Module):
    """A 'model' with uniform logits that remembers the ids it was given."""

    def __init__(self, vocab: int):
        super().__init__()
        self.config = type("C", (), {"max_position_embeddings": 10**6, "vocab_size": vocab})()
        self.w = torch.nn.Parameter(torch.zeros(1))
        self.seen = []

    def forward(self, ids):
        self.seen.append(ids)
        return type("O", (), {"logits": torch.zeros(*ids.shape, self.config.vocab_size) + self.w})()


@pytest.mark.parametrize("adds_bos", [True, False])
def test_bits_per_byte_scores_each_document_after_exactly_one_bos(adds_bos):
    tok, model = tiny_tokenizer(adds_bos), Recorder(len(WORDS))
    evaluate.bits_per_byte(model, tok, ["the state of our union", "we the people"])
    for ids in model.seen:
        assert ids[0, 0] == 1 and not (ids[0, 1:] == 1).any()


def _default_tokenizer():
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(models.offline_checkpoint())


def test_the_default_models_tokenizer_adds_no_bos_so_its_windows_are_unchanged():
    tok = _default_tokenizer()
    assert data.bos_id(tok) is None
    first = data.split_documents("test")[0].text
    assert data.token_windows(tok, "test", 2, 512)[0].tolist() == tok(first).input_ids[:512]


def test_identity_comes_from_the_loaded_model(monkeypatch):
    from transformers import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(vocab_size=32, hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                         num_attention_heads=2, num_key_value_heads=1)
    model = LlamaForCausalLM(config)
    model.config.name_or_path = str(models.cache_dir() / models.OFFLINE_MODELS[models.OFFLINE_MODEL].checkpoint)
    monkeypatch.setenv("QHT_MODEL", "someone/else")  # the switch must not decide what a loaded model is
    assert models.is_default(model) and models.identity(model) == models.identity(models.OFFLINE_MODEL)
    model.config.name_or_path = str(models.cache_dir() / models.OFFLINE_MODELS[models.GEMMA].checkpoint)
    assert not models.is_default(model) and models.identity(model).startswith(models.GEMMA + " (")
    model.config.name_or_path = "HuggingFaceTB/SmolLM2-135M"
    assert models.identity(model) == "HuggingFaceTB/SmolLM2-135M" and not models.is_default(model)


# ------------------------------------------------------------------------------------------ the second offline model
needs_gemma = pytest.mark.skipif(importlib.util.find_spec(models.GEMMA_CHUNKS[-1][0]) is None,
                                 reason="Gemma-3-270M packages not installed: run `make second-model`")


@pytest.fixture(scope="module")
def gemma():
    model, tok = models.load_model(models.GEMMA)
    return model, tok


@needs_gemma
def test_gemma_config_agrees_with_its_gguf(tmp_path):
    source = models.assemble_gemma(tmp_path)
    from transformers import AutoConfig

    config = AutoConfig.from_pretrained(models.offline_checkpoint(models.GEMMA))
    facts = models.gguf_config_facts(config, source)
    assert len(facts) >= 14
    for name, want, got in facts:
        assert (abs(want - got) <= 1e-6 * abs(want)) if isinstance(want, float) else want == got, name
    assert config.model_type == "gemma3_text" and config.head_dim * config.num_attention_heads != config.hidden_size


@needs_gemma
def test_gemma_tokenizer_is_the_bpe_one_and_adds_bos(gemma):
    _, tok = gemma
    assert tok("Hello world").input_ids == [2, 9259, 1902]  # <bos> Hello ▁world (a Unigram rebuild splits "world")
    assert data.bos_id(tok) == 2
    text = data.split_documents("test")[0].text[:3000]
    assert tok.decode(tok(text, add_special_tokens=False).input_ids) == text


@needs_gemma
def test_gemma_perplexity_with_bos_is_sane_and_bos_matters(gemma):
    model, tok = gemma
    with_bos = data.token_windows(tok, "test", 2, 256)
    without = torch.cat([with_bos[:, 1:], with_bos[:, 1:2]], dim=1)  # same text, no BOS in front
    ppl_bos, ppl_none = evaluate.perplexity(model, with_bos), evaluate.perplexity(model, without)
    assert 5 < ppl_bos < 40, ppl_bos
    assert ppl_none > 1.5 * ppl_bos, (ppl_none, ppl_bos)


@needs_gemma
def test_gemma_fold_keeps_the_logits(gemma):
    import copy

    from lessons_lib import awq

    model, tok = gemma
    folded = copy.deepcopy(model)
    g = torch.Generator().manual_seed(0)
    n = 0
    try:
        from lessons_lib.architecture import decoder_layers
    except ImportError:  # before the architecture map
        def decoder_layers(m):
            return m.model.layers
    for layer in decoder_layers(folded):
        for m in awq.layer_mappings(layer):
            awq.fold_scales(m, torch.rand(m.balance[0].in_features, generator=g) + 0.5)
            n += 1
    assert n >= 2 * model.config.num_hidden_layers  # at least norm -> q/k/v and norm -> gate/up in every layer
    ids = data.token_windows(tok, "test", 1, 64)
    with torch.no_grad():
        a, b = model(ids).logits, folded(ids).logits
    assert ((a - b).norm() / a.norm()).item() < 1e-4
