"""Shared fixtures: where the real data lives, and skips when it does not."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

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
