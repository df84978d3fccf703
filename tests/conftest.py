import os

import pytest
import torch

# Two cores on CI: keep torch from oversubscribing (OMP_NUM_THREADS, when set, wins; under
# pytest-xdist, `make test`'s two worker processes, one thread each), and tests independent of each other.
_workers = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT") or 1)
torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS") or max(1, min(2, os.cpu_count() or 1) // _workers)))


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


@pytest.fixture(scope="session", autouse=True)
def _cache(tmp_path_factory):
    """Probe networks go to a fresh cache, never the user's ~/.cache."""
    os.environ["LATENTFORGE_CACHE"] = str(tmp_path_factory.mktemp("cache"))


@pytest.fixture(scope="session")
def shapes_probe(_cache):
    """A small Shapes probe (400 steps on 2,000 scenes), cached where default-Shapes runs look."""
    from latentforge.data.sets import ShapesDataConfig
    from latentforge.eval.probe import ProbeTrainConfig, train_probe

    return train_probe(ShapesDataConfig(), ProbeTrainConfig(steps=400, train_size=2000, test_size=500),
                       progress=False)


@pytest.fixture(scope="session")
def digits_probe(_cache):
    from latentforge.data.sets import DigitsDataConfig
    from latentforge.eval.probe import ProbeTrainConfig, train_probe

    return train_probe(DigitsDataConfig(), ProbeTrainConfig(steps=150), progress=False)
