"""Checkpoint folders: what is accepted, what is refused and why (no Django needed)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file
from transformers import AutoTokenizer, GPT2Config, GPT2LMHeadModel

from models_registry.weights import (
    DEMO_CORPUS_PATH,
    DEMO_SHAPES,
    EOS_TOKEN,
    GPT2_SHAPES,
    WeightsError,
    WeightsInfo,
    build_demo_checkpoint,
    file_sha256,
    inspect_checkpoint,
)

SHAPE = DEMO_SHAPES["gpt2"]


def build(folder: Path, *, seed: int = 1) -> WeightsInfo:
    return build_demo_checkpoint(
        folder,
        n_layer=SHAPE.n_layer,
        n_embd=SHAPE.n_embd,
        n_head=SHAPE.n_head,
        seed=seed,
        corpus=DEMO_CORPUS_PATH.read_text(encoding="utf-8"),
    )


@pytest.fixture(scope="session")
def demo(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, WeightsInfo]:
    folder = tmp_path_factory.mktemp("weights") / "gpt2"
    return folder, build(folder)


@pytest.fixture
def copy(demo: tuple[Path, WeightsInfo], tmp_path: Path) -> Path:
    """A private copy of the demo checkpoint for a test to damage."""
    return Path(shutil.copytree(demo[0], tmp_path / "checkpoint"))


def test_demo_checkpoint_is_accepted_with_its_true_parameter_count(demo: tuple[Path, WeightsInfo]) -> None:
    folder, info = demo
    model = GPT2LMHeadModel.from_pretrained(folder, local_files_only=True, use_safetensors=True)
    assert info.parameter_count == model.num_parameters()
    assert (info.n_layer, info.n_embd, info.n_head, info.n_positions) == (2, 64, 2, 1024)
    assert info.vocab_size == model.config.vocab_size
    assert info.sha256 == file_sha256(folder / "model.safetensors")
    assert inspect_checkpoint(folder, expected=SHAPE) == info
    assert not list(folder.glob("*.bin")), "only safetensors weights are written"


def test_demo_tokenizer_loads_as_a_gpt2_tokenizer(demo: tuple[Path, WeightsInfo]) -> None:
    folder, info = demo
    tokenizer = AutoTokenizer.from_pretrained(folder, local_files_only=True)
    assert tokenizer.eos_token == tokenizer.bos_token == EOS_TOKEN
    assert len(tokenizer) == info.vocab_size
    text = "The Partner will label every synthetic sample."
    assert tokenizer.decode(tokenizer(text)["input_ids"]) == text


def test_rebuilding_the_demo_gives_the_same_hash(demo: tuple[Path, WeightsInfo], tmp_path: Path) -> None:
    assert build(tmp_path / "again").sha256 == demo[1].sha256
    assert build(tmp_path / "other-seed", seed=2).sha256 != demo[1].sha256


def test_rebuilding_in_place_replaces_the_folder_cleanly(tmp_path: Path) -> None:
    folder = tmp_path / "gpt2"
    first = build(folder, seed=1)
    second = build(folder, seed=2)
    assert inspect_checkpoint(folder).sha256 == second.sha256 != first.sha256
    assert [p.name for p in tmp_path.iterdir()] == ["gpt2"], "no staging folders are left behind"


def test_real_gpt2_shapes_have_the_published_parameter_counts() -> None:
    for shape in GPT2_SHAPES.values():
        config = GPT2Config(n_layer=shape.n_layer, n_embd=shape.n_embd, n_head=shape.n_head)
        with torch.device("meta"):  # shapes only, no memory
            model = GPT2LMHeadModel(config)
        assert model.num_parameters() == shape.parameter_count, shape.name


def test_the_hub_layout_of_real_gpt2_is_accepted(demo: tuple[Path, WeightsInfo], copy: Path) -> None:
    # openai-community/gpt2 saves a bare GPT2Model (no "transformer." prefix) plus causal-mask buffers.
    weights = copy / "model.safetensors"
    tensors = {name.removeprefix("transformer."): tensor for name, tensor in load_file(weights).items()}
    tensors.update({f"h.{layer}.attn.bias": torch.ones(1, 1, 8, 8) for layer in range(SHAPE.n_layer)})
    save_file(tensors, weights, metadata={"format": "pt"})
    assert inspect_checkpoint(copy).parameter_count == demo[1].parameter_count


def test_pickled_weights_are_refused(copy: Path) -> None:
    (copy / "model.safetensors").unlink()
    (copy / "pytorch_model.bin").write_bytes(b"\x80\x04not really a pickle")
    with pytest.raises(WeightsError, match="Pickled weights are refused") as excinfo:
        inspect_checkpoint(copy)
    assert "safetensors" in str(excinfo.value)


def test_a_folder_without_config_is_refused(copy: Path) -> None:
    (copy / "config.json").unlink()
    with pytest.raises(WeightsError, match=r"no config\.json"):
        inspect_checkpoint(copy)


def test_a_model_that_is_not_gpt2_is_refused(copy: Path) -> None:
    config = json.loads((copy / "config.json").read_text())
    config["model_type"] = "llama"
    (copy / "config.json").write_text(json.dumps(config))
    with pytest.raises(WeightsError, match='model_type "llama"'):
        inspect_checkpoint(copy)


def test_a_truncated_safetensors_file_is_refused(copy: Path) -> None:
    weights = copy / "model.safetensors"
    with open(weights, "r+b") as fh:
        fh.truncate(weights.stat().st_size // 2)
    with pytest.raises(WeightsError, match="corrupt or unreadable"):
        inspect_checkpoint(copy)


def test_weights_that_disagree_with_their_config_are_refused(copy: Path) -> None:
    config = json.loads((copy / "config.json").read_text())
    config["n_layer"] = 3
    (copy / "config.json").write_text(json.dumps(config))
    with pytest.raises(WeightsError, match=r"tensor h\.2\..* is missing"):
        inspect_checkpoint(copy)


def test_a_shape_mismatch_names_what_differs(demo: tuple[Path, WeightsInfo]) -> None:
    with pytest.raises(WeightsError, match="config has n_layer=2, gpt2-medium needs 24") as excinfo:
        inspect_checkpoint(demo[0], expected=GPT2_SHAPES["gpt2-medium"])
    assert "n_embd=64, gpt2-medium needs 1,024" in str(excinfo.value)


def test_a_checkpoint_without_tokenizer_is_refused(copy: Path) -> None:
    (copy / "tokenizer.json").unlink()
    with pytest.raises(WeightsError, match="no tokenizer"):
        inspect_checkpoint(copy)


def test_changing_one_byte_changes_the_hash(demo: tuple[Path, WeightsInfo], copy: Path) -> None:
    weights = copy / "model.safetensors"
    with open(weights, "r+b") as fh:
        fh.seek(-1, 2)
        last = fh.read(1)
        fh.seek(-1, 2)
        fh.write(bytes([last[0] ^ 0x01]))
    # Still a well-formed file: only the fingerprint can tell it is not the registered one.
    assert inspect_checkpoint(copy).sha256 != demo[1].sha256
