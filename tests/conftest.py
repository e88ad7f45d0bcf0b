import os
from pathlib import Path

import numpy as np
import pytest
from hypothesis import settings

REPO = Path(__file__).resolve().parent.parent

# Property tests draw the same examples on every run (CI must not pass one run and fail the
# next); HYPOTHESIS_PROFILE=explore draws fresh ones, to look for new failures.
settings.register_profile("deterministic", derandomize=True, database=None)
settings.register_profile("explore", derandomize=False, database=None)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "deterministic"))


def drive_root():
    """The DRIVE dataset: $RETINA_PREP_DRIVE, else ../shared/data/DRIVE beside the repo."""
    env = os.environ.get("RETINA_PREP_DRIVE")
    p = Path(env) if env else REPO.parent / "shared" / "data" / "DRIVE"
    return p if (p / "training" / "images").is_dir() else None


@pytest.fixture
def drive():
    root = drive_root()
    if root is None:
        pytest.skip("DRIVE not found (set RETINA_PREP_DRIVE to the DRIVE folder)")
    return root


@pytest.fixture
def rng():
    return np.random.default_rng(12345)


@pytest.fixture
def sample_data():
    return REPO / "sample_data"
