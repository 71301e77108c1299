"""The diagnostics tests run tiny models: one intra-op thread is much faster than two there
(no thread hand-off per kernel), and the suite's thread setting is restored afterwards."""

from __future__ import annotations

import pytest
import torch


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
