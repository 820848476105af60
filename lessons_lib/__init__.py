"""lessons_lib: the helper library of the Quantization Hardware Tradeoffs course.

One module per idea a learner meets; notebooks import what they need:
    from lessons_lib import models, data, evaluate, hardware
"""

__version__ = "0.1.0"
