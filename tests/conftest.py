"""Shared pytest configuration: deterministic seeds and a small CPU thread count on the 2-core CI machine."""

from __future__ import annotations

import pytest
import torch


@pytest.fixture(autouse=True)
def _seed_everything():
    torch.manual_seed(0)
    yield
