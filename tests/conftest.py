"""Shared fixtures: where the real data lives, and skips when it does not."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from hypothesis import settings

# CI must not go red on a commit that changed nothing: there every property test draws the same
# examples on every run (derandomize) and no example database carries state between runs. Local
# runs keep exploring with fresh random examples. `CI` is set by .ci/run and by hosted CI services;
# NUCSEG_HYPOTHESIS_PROFILE picks a profile by hand.
settings.register_profile("ci", derandomize=True, database=None, print_blob=True)
settings.register_profile("dev", print_blob=True)
settings.load_profile(os.environ.get("NUCSEG_HYPOTHESIS_PROFILE", "ci" if os.environ.get("CI") else "dev"))

# ../shared/data beside the checkout (the project's convention); NUCSEG_DATA overrides.
_DATA = Path(os.environ.get("NUCSEG_DATA", Path(__file__).resolve().parents[1].parent / "shared" / "data"))


@pytest.fixture(scope="session")
def tnbc_dir() -> Path:
    """The TNBC dataset folder, or skip when it is not on this machine."""
    path = _DATA / "tnbc"
    if not (path / "Slide_01").is_dir():
        pytest.skip(f"TNBC data not found at {path} (set NUCSEG_DATA to shared/data)")
    return path


@pytest.fixture(scope="session")
def cmu_slide() -> Path:
    """The small real Aperio slide, or skip when it is not on this machine."""
    path = _DATA / "wsi" / "CMU-1-Small-Region.svs"
    if not path.is_file():
        pytest.skip(f"real slide not found at {path} (set NUCSEG_DATA to shared/data)")
    return path


@pytest.fixture
def torch_one_thread():
    """Run a torch test on one thread (CI has 2 cores), restoring the setting after."""
    import torch  # imported here: most tests never need torch

    old = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(old)
