"""Shared test setup: offline hub, deterministic torch, small thread count."""

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

from pathlib import Path  # noqa: E402

import pytest  # noqa: E402
import torch  # noqa: E402

# Tiny tensors gain nothing from a second thread, and on a busy 2-core machine two spinning
# OpenMP threads make some steps 100x slower. Set at import so module fixtures get it too.
torch.set_num_threads(1)

SHARED_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"


@pytest.fixture(autouse=True)
def _seed_everything():
    torch.manual_seed(0)
    yield


@pytest.fixture
def shared_data() -> Path:
    """The real data in ../shared/data; tests using it skip when it is absent."""
    if not SHARED_DATA.is_dir():
        pytest.skip("../shared/data is not present")
    return SHARED_DATA


@pytest.fixture(scope="session")
def tiny_phase1(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Demo data (150 items) and a tiny phase-1 checkpoint with both heads, in a private workspace."""
    from unifashion_core.config import load_recipe
    from unifashion_core.data.adapters.demo import prepare_demo
    from unifashion_core.train.phase1 import run_training

    root = tmp_path_factory.mktemp("tiny-phase1")
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("UNIFASHION_HOME", str(root / "ws"))
        prepare_demo(root / "data", num_items=150, image_size=32)
        run_training(load_recipe(Path(__file__).resolve().parents[1] / "recipes" / "tiny.yaml"),
                     data=root / "data", out=root / "phase1")
    return root


@pytest.fixture(scope="session")
def tiny_index(tiny_phase1: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A captioned index of the tiny phase-1 run's test split (read only: tests that write copy it)."""
    from unifashion_core.retrieval.build import build_index

    out = tmp_path_factory.mktemp("tiny-index") / "index"
    build_index(tiny_phase1 / "phase1", tiny_phase1 / "data", out, captions=True)
    return out
