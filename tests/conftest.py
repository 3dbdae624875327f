"""Shared fixtures and the hypothesis profile."""

from __future__ import annotations

import os

import numpy as np
import pytest
from hypothesis import HealthCheck, settings

settings.register_profile(
    "otlabel",
    deadline=None,
    max_examples=int(os.environ.get("OTLABEL_HYPOTHESIS_EXAMPLES", "60")),
    suppress_health_check=[HealthCheck.too_slow],
)
settings.load_profile("otlabel")


@pytest.fixture
def rng() -> np.random.Generator:
    return np.random.default_rng(20261129)
