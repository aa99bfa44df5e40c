"""Shared pytest fixtures: every test starts from the same random state.

Hypothesis profiles: ``ci`` (loaded by default: a fixed number of examples, no deadline,
derandomized so every run draws the same examples) and ``dev`` (more examples, random draws),
selected with ``HYPOTHESIS_PROFILE=dev``.
"""

from __future__ import annotations

import os

import pytest
import torch
from hypothesis import settings

settings.register_profile("ci", max_examples=30, deadline=None, derandomize=True, print_blob=True)
settings.register_profile("dev", max_examples=300, deadline=None, print_blob=True)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci"))


@pytest.fixture(autouse=True)
def _seed() -> None:
    """Seed torch's generator so random inputs (and their ties and kinks) are reproducible."""
    torch.manual_seed(0)
