import os
from pathlib import Path

import numpy as np
import pytest

REPO = Path(__file__).resolve().parent.parent


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
