import os

import pytest
import torch

# Two cores on CI: keep torch from oversubscribing (OMP_NUM_THREADS, when set, wins), and tests
# independent of each other.
torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS") or min(2, os.cpu_count() or 1)))


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)
