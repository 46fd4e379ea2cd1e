"""Fixtures shared by the test modules."""
from __future__ import annotations

import pytest
import torch


@pytest.fixture(scope="module")
def one_thread():
    """The tensors in most tests are tiny: one thread is as fast, and avoids OpenMP spin-waits
    (seconds per test) when other processes keep the cores busy. The count is restored after the
    module, so no module changes the arithmetic of the ones after it (a float sum over 1 thread
    and over 2 differs in the last bits)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
