import os

import pytest
from hypothesis import HealthCheck, settings

from difftest.config import ENV_VARS

settings.register_profile(
    "default", deadline=None, max_examples=40, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large]
)
settings.register_profile(
    "thorough", deadline=None, max_examples=1000, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large]
)
settings.load_profile(os.environ.get("DIFFTEST_HYPOTHESIS_PROFILE", "default"))


@pytest.fixture(autouse=True)
def _no_difftest_settings_from_the_shell(monkeypatch):
    """A developer's DIFFTEST_* variables must not change what the suite runs."""
    for name in ENV_VARS.values():
        monkeypatch.delenv(name, raising=False)
