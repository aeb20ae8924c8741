"""Checkpoint folders in Hugging Face format: inspect, fingerprint and build demo ones.

Django-free so import commands, the worker and the benchmarks can share it. Weights are only
ever read with safetensors: a pickled checkpoint can run code when loaded, so it is refused.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import cast

from safetensors import SafetensorError, safe_open

from models_registry.training import CorpusSplit, train_language_model

WEIGHTS_FILE = "model.safetensors"
# How a trained demo checkpoint was trained (steps, time, validation perplexity); beside the weights, not in them.
TRAINING_FILE = "training.json"
PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".ckpt", ".pkl")
EOS_TOKEN = "<|endoftext|>"
DEMO_VOCAB_SIZE = 2000

# What GPT2Config assumes when config.json leaves a field out.
_CONFIG_DEFAULTS = {
    "n_layer": 12,
    "n_embd": 768,
    "n_head": 12,
    "n_positions": 1024,
    "vocab_size": 50257,
}
# Causal-mask buffers that older exports saved next to the weights; they are not parameters.
_BUFFER_SUFFIXES = (".attn.bias", ".attn.masked_bias")
_CHUNK = 1024 * 1024


@dataclass(frozen=True)
class GPT2Shape:
    """The architecture a checkpoint must have to be served as `name`; None means any."""

    name: str
    n_layer: int
    n_embd: int
    n_head: int
    n_positions: int = 1024
    vocab_size: int | None = 50257
    parameter_count: int | None = None


@dataclass(frozen=True)
class WeightsInfo:
    """What the registry stores about an accepted checkpoint."""

    sha256: str
    parameter_count: int
    n_layer: int
    n_embd: int
    n_head: int
    n_positions: int
    vocab_size: int


class WeightsError(Exception):
    """A checkpoint folder that must not be served; the message says what to fix."""


GPT2_SHAPES: dict[str, GPT2Shape] = {
    "gpt2": GPT2Shape("gpt2", 12, 768, 12, parameter_count=124_439_808),
    "gpt2-medium": GPT2Shape("gpt2-medium", 24, 1024, 16, parameter_count=354_823_168),
    "gpt2-large": GPT2Shape("gpt2-large", 36, 1280, 20, parameter_count=774_030_080),
    "gpt2-xl": GPT2Shape("gpt2-xl", 48, 1600, 25, parameter_count=1_557_611_200),
}

# Distinct per stage so a mix-up between stages shows, yet all four build in seconds on a laptop.
# The vocabulary comes from the demo tokenizer, so it is left open.
DEMO_SHAPES: dict[str, GPT2Shape] = {
    "gpt2": GPT2Shape("demo gpt2", 2, 64, 2, vocab_size=None),
    "gpt2-medium": GPT2Shape("demo gpt2-medium", 3, 96, 4, vocab_size=None),
    "gpt2-large": GPT2Shape("demo gpt2-large", 4, 128, 4, vocab_size=None),
    "gpt2-xl": GPT2Shape("demo gpt2-xl", 6, 160, 5, vocab_size=None),
}

DEMO_CORPUS_PATH = Path(__file__).with_name("demo_corpus.txt")


def file_sha256(path: Path) -> str:
    """Hex SHA-256, streamed so a 6 GB gpt2-xl file never sits in memory."""
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        while chunk := fh.read(_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def inspect_checkpoint(folder: Path, *, expected: GPT2Shape | None = None) -> WeightsInfo:
    """Check that `folder` is a servable GPT-2 checkpoint and describe it.

    Cheap checks run first so a wrong folder is refused before a multi-gigabyte file is hashed.
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise WeightsError(f"{folder} is not a folder.")
    weights = folder / WEIGHTS_FILE
    if not weights.is_file():
        pickled = sorted(p.name for p in folder.iterdir() if p.suffix in PICKLE_SUFFIXES)
        if pickled:
            raise WeightsError(
                f"Pickled weights are refused ({', '.join(pickled)}): loading a pickle can run "
                f"arbitrary code. Convert the checkpoint to safetensors ({WEIGHTS_FILE}) first."
            )
        raise WeightsError(f"{folder} has no {WEIGHTS_FILE}.")

    config = _read_config(folder)
    _check_tokenizer(folder, config["vocab_size"])
    shapes = _read_tensor_shapes(weights)
    parameter_count = _check_tensors(shapes, config)
    if expected is not None:
        _check_expected(config, parameter_count, expected)
    return WeightsInfo(
        sha256=file_sha256(weights),
        parameter_count=parameter_count,
        n_layer=config["n_layer"],
        n_embd=config["n_embd"],
        n_head=config["n_head"],
        n_positions=config["n_positions"],
        vocab_size=config["vocab_size"],
    )


def _read_config(folder: Path) -> dict[str, int]:
    path = folder / "config.json"
    if not path.is_file():
        raise WeightsError(f"{folder} has no config.json.")
    try:
        raw = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise WeightsError(f"config.json is not readable JSON: {exc}") from exc
    if not isinstance(raw, dict):
        raise WeightsError("config.json must hold a JSON object.")
    model_type = raw.get("model_type")
    if model_type != "gpt2":
        raise WeightsError(f'config.json has model_type "{model_type}"; only GPT-2 checkpoints ("gpt2") are served.')
    config: dict[str, int] = {}
    for field, default in _CONFIG_DEFAULTS.items():
        value = raw.get(field, default)
        if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
            raise WeightsError(f"config.json has {field}={value!r}; it must be a positive integer.")
        config[field] = value
    if config["n_embd"] % config["n_head"]:
        raise WeightsError(
            f"config.json has n_embd={config['n_embd']}, which n_head={config['n_head']} does not divide."
        )
    n_inner = raw.get("n_inner")
    config["n_inner"] = n_inner if isinstance(n_inner, int) and n_inner > 0 else 4 * config["n_embd"]
    # A tied head shares the embedding matrix, so it must not be counted (or shipped) twice.
    config["tied"] = int(raw.get("tie_word_embeddings", True) is not False)
    return config


def _check_tokenizer(folder: Path, vocab_size: int) -> None:
    if (folder / "tokenizer.json").is_file():
        path = folder / "tokenizer.json"
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
            ids = list(data["model"]["vocab"].values())
            ids += [token["id"] for token in data.get("added_tokens", [])]
        except (OSError, UnicodeDecodeError, json.JSONDecodeError, KeyError, TypeError) as exc:
            raise WeightsError(f"tokenizer.json is not a readable BPE tokenizer: {exc}") from exc
    elif (folder / "vocab.json").is_file() and (folder / "merges.txt").is_file():
        path = folder / "vocab.json"
        try:
            ids = list(json.loads(path.read_text(encoding="utf-8")).values())
        except (OSError, UnicodeDecodeError, json.JSONDecodeError, AttributeError) as exc:
            raise WeightsError(f"vocab.json is not readable: {exc}") from exc
    else:
        raise WeightsError(f"{folder} has no tokenizer: add tokenizer.json, or vocab.json and merges.txt.")
    # A token id past the embedding matrix fails at generation time, far from its cause.
    largest = max((i for i in ids if isinstance(i, int)), default=-1)
    if largest >= vocab_size:
        raise WeightsError(f"{path.name} uses token id {largest}, but config.json has vocab_size={vocab_size}.")


def _read_tensor_shapes(weights: Path) -> dict[str, tuple[list[int], str]]:
    """Shapes and dtypes from the safetensors header, which safetensors checks covers the file."""
    try:
        with safe_open(weights, framework="pt") as fh:
            return {
                name: (list(fh.get_slice(name).get_shape()), fh.get_slice(name).get_dtype())
                for name in fh.keys()  # noqa: SIM118 (safe_open is not iterable)
            }
    except (SafetensorError, OSError) as exc:
        raise WeightsError(f"{WEIGHTS_FILE} is corrupt or unreadable: {exc}") from exc


def _expected_tensors(config: dict[str, int]) -> dict[str, list[int]]:
    """Every tensor a GPT-2 of this config must have (GPT-2's Conv1D stores weights as [in, out])."""
    e, inner = config["n_embd"], config["n_inner"]
    tensors = {
        "wte.weight": [config["vocab_size"], e],
        "wpe.weight": [config["n_positions"], e],
        "ln_f.weight": [e],
        "ln_f.bias": [e],
    }
    per_layer = {
        "ln_1.weight": [e],
        "ln_1.bias": [e],
        "attn.c_attn.weight": [e, 3 * e],
        "attn.c_attn.bias": [3 * e],
        "attn.c_proj.weight": [e, e],
        "attn.c_proj.bias": [e],
        "ln_2.weight": [e],
        "ln_2.bias": [e],
        "mlp.c_fc.weight": [e, inner],
        "mlp.c_fc.bias": [inner],
        "mlp.c_proj.weight": [inner, e],
        "mlp.c_proj.bias": [e],
    }
    for layer in range(config["n_layer"]):
        tensors.update({f"h.{layer}.{name}": shape for name, shape in per_layer.items()})
    return tensors


def _check_tensors(shapes: dict[str, tuple[list[int], str]], config: dict[str, int]) -> int:
    """Refuse weights that do not match config.json; return the parameter count."""
    wanted = _expected_tensors(config)
    found: dict[str, list[int]] = {}
    for name, (shape, dtype) in shapes.items():
        # GPT2LMHeadModel saves under "transformer."; a bare GPT2Model (the hub's gpt2) does not.
        short = name.removeprefix("transformer.")
        if short.endswith(_BUFFER_SUFFIXES):
            continue
        if dtype not in ("F32", "F16", "BF16"):
            raise WeightsError(f"tensor {name} has dtype {dtype}; weights must be floating point.")
        found[short] = shape
    head = found.pop("lm_head.weight", None)
    if head is not None and head != wanted["wte.weight"]:
        raise WeightsError(f"tensor lm_head.weight has shape {head}, config.json needs {wanted['wte.weight']}.")
    if head is None and not config["tied"]:
        raise WeightsError("config.json unties the output head, but lm_head.weight is missing.")

    for name, shape in wanted.items():
        if name not in found:
            raise WeightsError(f"tensor {name} is missing, though config.json has n_layer={config['n_layer']}.")
        if found[name] != shape:
            raise WeightsError(f"tensor {name} has shape {found[name]}, config.json needs {shape}.")
    extra = sorted(set(found) - set(wanted))
    if extra:
        raise WeightsError(f"unexpected tensors for this config.json: {', '.join(extra[:5])}.")

    count = sum(_numel(shape) for shape in found.values())
    if head is not None and not config["tied"]:
        count += _numel(head)
    return count


def _numel(shape: list[int]) -> int:
    n = 1
    for dim in shape:
        n *= dim
    return n


def _check_expected(config: dict[str, int], parameter_count: int, expected: GPT2Shape) -> None:
    actual = {**config, "parameter_count": parameter_count}
    wanted = {
        "n_layer": expected.n_layer,
        "n_embd": expected.n_embd,
        "n_head": expected.n_head,
        "n_positions": expected.n_positions,
        "vocab_size": expected.vocab_size,
        "parameter_count": expected.parameter_count,
    }
    differences = [
        f"{'weights have' if field == 'parameter_count' else 'config has'} {field}={actual[field]:,}, "
        f"{expected.name} needs {want:,}"
        for field, want in wanted.items()
        if want is not None and actual[field] != want
    ]
    if differences:
        raise WeightsError("Wrong shape: " + "; ".join(differences) + ".")


def build_demo_checkpoint(
    folder: Path,
    *,
    n_layer: int,
    n_embd: int,
    n_head: int,
    seed: int,
    corpus: str,
    train_steps: int = 0,
    split: CorpusSplit | None = None,
) -> WeightsInfo:
    """Build a small GPT-2 with a tokenizer trained on `corpus`.

    For one-machine runs and tests, where real weights are not at hand. With `train_steps`, the
    weights are trained that many steps on `split` (default: the English corpus of
    models_registry.training) and TRAINING_FILE records how far; without, they stay random. The
    same arguments give the same bytes on one machine, so the stored SHA-256 stays valid when the
    demo is rebuilt.
    """
    # Imported here: inspecting a checkpoint should not pay for importing torch and transformers.
    import torch
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import GPT2Config, GPT2LMHeadModel, GPT2Tokenizer

    folder = Path(folder)
    folder.parent.mkdir(parents=True, exist_ok=True)
    # Build beside the target and swap it in, so no reader ever sees a half-written checkpoint.
    staging = folder.parent / f".{folder.name}.building-{uuid.uuid4().hex}"
    staging.mkdir()
    try:
        bpe = Tokenizer(models.BPE())
        bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
        bpe.decoder = decoders.ByteLevel()
        bpe.post_processor = processors.ByteLevel(trim_offsets=False)
        trainer = trainers.BpeTrainer(
            vocab_size=DEMO_VOCAB_SIZE,
            special_tokens=[EOS_TOKEN],
            initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
            show_progress=False,
        )
        bpe.train_from_iterator(corpus.splitlines(keepends=True), trainer=trainer)
        tokenizer = GPT2Tokenizer(
            tokenizer_object=bpe,
            bos_token=EOS_TOKEN,
            eos_token=EOS_TOKEN,
            unk_token=EOS_TOKEN,
            model_max_length=1024,
        )
        tokenizer.save_pretrained(staging)

        eos_id = cast(int, tokenizer.convert_tokens_to_ids(EOS_TOKEN))  # one token in, one id out
        config = GPT2Config(
            n_layer=n_layer,
            n_embd=n_embd,
            n_head=n_head,
            n_positions=1024,
            vocab_size=len(tokenizer),
            bos_token_id=eos_id,
            eos_token_id=eos_id,
        )
        if train_steps:
            # A few hundred steps on a megabyte are far from overfitting; dropout would only slow learning.
            config.resid_pdrop = config.embd_pdrop = config.attn_pdrop = 0.0
        # fork_rng: seeding must not disturb the caller's random stream.
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            model = GPT2LMHeadModel(config)
        if train_steps:
            report = train_language_model(
                model, lambda text: bpe.encode(text).ids, steps=train_steps, seed=seed, split=split
            )
            (staging / TRAINING_FILE).write_text(json.dumps(report.as_json(), indent=2) + "\n", encoding="utf-8")
        # transformers 5 only writes safetensors (its `safe_serialization` argument is gone).
        model.save_pretrained(staging)
        # safetensors writes the file owner-only; a worker running as another user must read it.
        (staging / WEIGHTS_FILE).chmod(0o644)
        info = inspect_checkpoint(staging)

        previous = None
        if folder.exists():
            previous = folder.parent / f".{folder.name}.old-{uuid.uuid4().hex}"
            os.replace(folder, previous)
        os.replace(staging, folder)
        if previous is not None:
            shutil.rmtree(previous, ignore_errors=True)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return info


def read_training_report(folder: Path) -> dict[str, object] | None:
    """What TRAINING_FILE says about a demo checkpoint's training, or None for random or foreign weights."""
    try:
        data = json.loads((Path(folder) / TRAINING_FILE).read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        return None
    return data if isinstance(data, dict) else None
