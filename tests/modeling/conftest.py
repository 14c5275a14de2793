"""Model tests run on one thread: deterministic, and fair to the other tests on 2 cores."""

from __future__ import annotations

import pytest
import torch


@pytest.fixture(autouse=True)
def _one_thread() -> None:
    torch.set_num_threads(1)
