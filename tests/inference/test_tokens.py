"""The web tier counts prompt tokens without torch or transformers, and gets the engine's counts."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from inference import engine, tokens

PROMPTS = [
    "",
    " ",
    "The Lab keeps a record of every request.",
    "  leading and trailing spaces  ",
    "line one\nline two\r\n\ttabbed",
    "Unicode: café, naïve, Ωmega, 東京, emoji 🤖🧪, combining e\u0301",
    "<|endoftext|>A prompt after the end-of-text marker<|endoftext|>",
    "numbers 1234567890 and punctuation!?;:'\"()[]{}",
    "zero\u200bwidth\u200bspaces and \u00a0non-breaking",
    "word " * 700,
]


@pytest.mark.parametrize("prompt", PROMPTS, ids=range(len(PROMPTS)))
def test_web_tier_counts_match_the_engine(demo_weights: dict[str, Path], prompt: str) -> None:
    folder = demo_weights["gpt2"]
    assert tokens.count_prompt_tokens(folder, prompt) == engine.count_prompt_tokens(folder, prompt)


def test_counts_match_for_a_checkpoint_with_vocab_and_merges_only(demo_weights: dict[str, Path], tmp_path) -> None:
    # The original GPT-2 release ships vocab.json + merges.txt rather than tokenizer.json.
    source = json.loads((demo_weights["gpt2"] / "tokenizer.json").read_text())
    folder = tmp_path / "legacy"
    folder.mkdir()
    vocab = source["model"]["vocab"]
    (folder / "vocab.json").write_text(json.dumps(vocab))
    merges = source["model"]["merges"]
    lines = [" ".join(pair) if isinstance(pair, list) else pair for pair in merges]
    (folder / "merges.txt").write_text("#version: 0.2\n" + "\n".join(lines) + "\n")
    for prompt in PROMPTS:
        assert tokens.count_prompt_tokens(folder, prompt) == tokens.count_prompt_tokens(demo_weights["gpt2"], prompt)


def test_counting_loads_neither_torch_nor_transformers(demo_weights: dict[str, Path]) -> None:
    code = (
        "import sys; from inference.tokens import count_prompt_tokens; "
        f"n = count_prompt_tokens({str(demo_weights['gpt2'])!r}, 'Hello there'); "
        "print(n, 'torch' in sys.modules, 'transformers' in sys.modules)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=Path.cwd())
    count, torch_loaded, transformers_loaded = out.stdout.split()
    assert int(count) > 0
    assert (torch_loaded, transformers_loaded) == ("False", "False")
