import time

import pytest
import torch

from lessons_lib import bench


def test_known_sleep_is_measured():
    median, spread = bench.time_call(lambda: time.sleep(0.01), warmup=1, repeats=8)
    assert 0.009 < median < 0.03 and spread >= 0


def test_known_copy_scales_with_size():
    small, big = torch.empty(2**16), torch.empty(2**24)
    t_small, _ = bench.time_call(lambda: small.clone(), repeats=10)
    t_big, _ = bench.time_call(lambda: big.clone(), repeats=10)
    assert t_big > 5 * t_small


def test_too_few_repeats_refused():
    with pytest.raises(ValueError, match="at least 4"):
        bench.time_call(lambda: None, repeats=2)
