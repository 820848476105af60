"""lessons_lib: the helper library of the Quantization Hardware Tradeoffs course.

One module per idea a learner meets; notebooks import what they need:
    from lessons_lib import models, data, evaluate, hardware
The data files the library reads (GPU table, text sets, committed results) ship inside it, in resources/.
"""
import logging as _logging
from importlib.resources import files
from importlib.resources.abc import Traversable

# Known harmless import-time warnings, silenced at their source so notebooks do not store them (they print this
# machine's paths): torchao's CUDA extensions that a CPU-only torch cannot load, and torch's note on the enums
# torchao registers. Errors still show.
for _name in ("torchao", "torch.utils._pytree"):
    _logging.getLogger(_name).setLevel(_logging.ERROR)

__version__ = "0.1.0"


def resource(*parts: str) -> Traversable:
    """A file shipped in lessons_lib/resources/ (e.g. resource("text", "eval.txt")), readable from a wheel too."""
    return files(__name__).joinpath("resources", *parts)
