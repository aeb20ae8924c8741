"""Demo checkpoints built once per session, registered per test; Partner A with an active agreement."""

from __future__ import annotations

from pathlib import Path

import pytest

from models_registry import services as registry
from models_registry.models import Checkpoint
from models_registry.weights import DEMO_CORPUS_PATH, DEMO_SHAPES, build_demo_checkpoint, inspect_checkpoint
from tests.agreements.conftest import active, draft, published_version, sent, small_checkpoints  # noqa: F401


@pytest.fixture(scope="session")
def demo_weights(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("checkpoints")
    corpus = Path(DEMO_CORPUS_PATH).read_text()
    folders = {}
    for slug in ("gpt2", "gpt2-medium"):
        shape = DEMO_SHAPES[slug]
        folders[slug] = root / slug
        build_demo_checkpoint(
            folders[slug], n_layer=shape.n_layer, n_embd=shape.n_embd, n_head=shape.n_head, seed=7, corpus=corpus
        )
    return folders


@pytest.fixture
def demo_checkpoints(gpt2_stages, demo_weights) -> dict[str, Checkpoint]:
    registered = {}
    for slug, folder in demo_weights.items():
        checkpoint = Checkpoint.objects.get(slug=slug)
        registered[slug] = registry.checkpoint_register_weights(
            actor=None, checkpoint=checkpoint, folder=folder, info=inspect_checkpoint(folder), is_demo=True
        )
    return registered


@pytest.fixture
def gpt2(demo_checkpoints) -> Checkpoint:
    return demo_checkpoints["gpt2"]
