import math

import pytest
import torch

from lessons_lib import evaluate


class Uniform(torch.nn.Module):
    """A 'model' whose logits are all equal: its perplexity must be exactly the vocabulary size."""

    def __init__(self, vocab=50):
        super().__init__()
        self.vocab = vocab
        self.dummy = torch.nn.Parameter(torch.zeros(1))

    def forward(self, ids):
        return type("Out", (), {"logits": torch.zeros(*ids.shape, self.vocab)})()


def test_uniform_model_has_perplexity_vocab_size():
    windows = torch.randint(0, 50, (3, 17))
    assert math.isclose(evaluate.perplexity(Uniform(50), windows, progress=False), 50, rel_tol=1e-6)
    assert math.isclose(evaluate.perplexity(Uniform(50), windows, batch_size=2, progress=False), 50, rel_tol=1e-6)


def test_bad_windows_are_refused():
    with pytest.raises(ValueError, match="2-D LongTensor"):
        evaluate.perplexity(Uniform(), torch.zeros(10, dtype=torch.long), progress=False)
    with pytest.raises(ValueError, match="2-D LongTensor"):
        evaluate.perplexity(Uniform(), torch.zeros(2, 5), progress=False)


def test_empty_docs_are_refused():
    with pytest.raises(ValueError, match="docs must be a non-empty list"):
        evaluate.bits_per_byte(Uniform(), None, [])


def test_nan_model_is_reported():
    class Broken(Uniform):
        def forward(self, ids):
            return type("Out", (), {"logits": torch.full((*ids.shape, self.vocab), float("nan"))})()

    with pytest.raises(FloatingPointError, match="non-finite"):
        evaluate.perplexity(Broken(), torch.randint(0, 50, (1, 8)), progress=False)
