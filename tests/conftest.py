"""Shared pytest fixtures: every test starts from the same random state."""

from __future__ import annotations

import pytest
import torch


@pytest.fixture(autouse=True)
def _seed() -> None:
    """Seed torch's generator so random inputs (and their ties and kinks) are reproducible."""
    torch.manual_seed(0)
