"""English text for the demo checkpoints, and the brief training that makes them write it.

Random weights sample near-uniform tokens, and a watermark detector measured on those flatters
itself; a few hundred steps on real prose gives samples with the statistics of (poor) English.
The text is assembled from what every Python install ships, never downloaded: the language
reference (`pydoc_data.topics`), the licence texts under /usr/share/common-licenses, and the
docstrings of a fixed list of standard-library modules. Every twentieth passage is held out: it
measures validation perplexity here and serves as human-written text for watermark false-positive
rates elsewhere, so it is never trained on.

Django-free, and torch is imported only by `train_language_model`, so reading the corpus is cheap.
"""

from __future__ import annotations

import ast
import functools
import importlib.util
import math
import re
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from transformers import GPT2LMHeadModel

LICENCES_DIR = Path("/usr/share/common-licenses")
# Modules whose docstrings are mostly prose; a fixed order keeps the corpus the same on every build.
DOCSTRING_MODULES = (
    "argparse", "asyncio.events", "calendar", "codecs", "collections", "configparser", "contextlib", "csv",
    "dataclasses", "datetime", "_pydecimal", "difflib", "doctest", "email.message", "enum", "fractions",
    "ftplib", "functools", "heapq", "http.client", "http.cookiejar", "imaplib", "inspect", "ipaddress",
    "json", "locale", "logging", "mailbox", "optparse", "pathlib", "pickle", "pdb", "poplib", "pydoc",
    "random", "shutil", "smtplib", "socket", "ssl", "statistics", "subprocess", "tarfile", "tempfile",
    "textwrap", "threading", "traceback", "turtle", "typing", "unittest.case", "unittest.mock",
    "urllib.parse", "urllib.request", "uuid", "warnings", "zipfile",
)  # fmt: skip
HOLD_OUT_EVERY = 20  # every twentieth passage: about 5%, spread over all three sources
MIN_PASSAGE_CHARS = 400
PASSAGE_SEPARATOR = "\n\n"
SEQUENCE_LENGTH = 128
BATCH_SIZE = 4
_EVAL_ROWS = 16
_PARAGRAPH_BREAK = re.compile(r"\n\s*\n")


@dataclass(frozen=True)
class CorpusSplit:
    """The corpus as passages: what a model may learn from, and what it never sees."""

    train: tuple[str, ...]
    held_out: tuple[str, ...]

    @property
    def train_text(self) -> str:
        return PASSAGE_SEPARATOR.join(self.train)

    @property
    def held_out_text(self) -> str:
        return PASSAGE_SEPARATOR.join(self.held_out)


@dataclass(frozen=True)
class TrainingReport:
    """What a brief training achieved; stored beside the weights as training.json."""

    steps: int
    seconds: float
    train_tokens: int
    validation_tokens: int
    validation_perplexity: float
    uniform_perplexity: int

    def as_json(self) -> dict[str, Any]:
        return asdict(self)


def _documents() -> Iterator[str]:
    """Each source text in a fixed order."""
    from pydoc_data.topics import topics

    for name in sorted(topics):
        yield topics[name]
    if LICENCES_DIR.is_dir():
        seen: set[Path] = set()
        # GPL is a link to GPL-3 and so on: read each file once.
        for path in sorted(LICENCES_DIR.iterdir()):
            real = path.resolve()
            if real in seen or not real.is_file():
                continue
            seen.add(real)
            try:
                yield real.read_text(encoding="utf-8", errors="replace")
            except OSError:
                continue
    for module in DOCSTRING_MODULES:
        # One document per module: most docstrings are a line or two, too short to be a passage.
        yield PASSAGE_SEPARATOR.join(_module_docstrings(module))


def _module_docstrings(module: str) -> Iterator[str]:
    # Parsed, not imported: importing turtle or ssl has side effects and costs time.
    spec = importlib.util.find_spec(module)
    if spec is None or not spec.origin or not spec.origin.endswith(".py"):
        return
    try:
        tree = ast.parse(Path(spec.origin).read_text(encoding="utf-8"))
    except (OSError, SyntaxError, UnicodeDecodeError):
        return
    for node in ast.walk(tree):
        if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)):
            docstring = ast.get_docstring(node)
            if docstring:
                yield docstring


@functools.cache
def corpus_split() -> CorpusSplit:
    """All passages, split into training and held-out ones (deterministic).

    A passage is one or more consecutive paragraphs of one source, each reflowed onto one line, at
    least MIN_PASSAGE_CHARS long.
    Repeated paragraphs (the licences share whole sections) are kept once, so no held-out passage
    also occurs in the training part.
    """
    seen: set[str] = set()
    passages: list[str] = []
    for document in _documents():
        first = len(passages)
        pending: list[str] = []
        for raw in _PARAGRAPH_BREAK.split(document):
            # Reflowed: hard line breaks and indentation would otherwise be much of what a model learns.
            paragraph = " ".join(raw.split())
            if not paragraph or paragraph in seen:
                continue
            seen.add(paragraph)
            pending.append(paragraph)
            if sum(len(p) for p in pending) >= MIN_PASSAGE_CHARS:
                passages.append(PASSAGE_SEPARATOR.join(pending))
                pending = []
        if pending and len(passages) > first:
            # A short tail belongs with the passage before it, not alone.
            passages[-1] = PASSAGE_SEPARATOR.join([passages[-1], *pending])
        elif pending:
            passages.append(PASSAGE_SEPARATOR.join(pending))
    held_out = tuple(p for i, p in enumerate(passages) if i % HOLD_OUT_EVERY == HOLD_OUT_EVERY - 1)
    train = tuple(p for i, p in enumerate(passages) if i % HOLD_OUT_EVERY != HOLD_OUT_EVERY - 1)
    return CorpusSplit(train=train, held_out=held_out)


def corpus_text() -> str:
    """The whole corpus (training and held-out passages, in source order)."""
    split = corpus_split()
    passages = list(split.train)
    for index, passage in enumerate(split.held_out):
        passages.insert(index * HOLD_OUT_EVERY + HOLD_OUT_EVERY - 1, passage)
    return PASSAGE_SEPARATOR.join(passages)


def held_out_passages() -> list[str]:
    """Human-written passages no demo checkpoint was trained on."""
    return list(corpus_split().held_out)


def train_language_model(
    model: GPT2LMHeadModel,
    encode: Callable[[str], list[int]],
    *,
    steps: int,
    seed: int,
    split: CorpusSplit | None = None,
    learning_rate: float = 3e-3,
) -> TrainingReport:
    """Train `model` in place for `steps` AdamW steps on the training passages; report validation perplexity.

    Deterministic on one machine: one CPU thread, a fixed seed for the batches, and the caller's
    random stream left as it was. Batches are random windows of SEQUENCE_LENGTH tokens; the rate
    warms up over the first tenth of the steps, then decays linearly to a tenth of its peak.
    """
    import torch

    split = split or corpus_split()
    started = time.perf_counter()
    train_ids = torch.tensor(encode(split.train_text), dtype=torch.long)
    validation_ids = torch.tensor(encode(split.held_out_text), dtype=torch.long)
    window = SEQUENCE_LENGTH
    if len(train_ids) <= window or len(validation_ids) <= window:
        raise ValueError("the corpus is too small to train on")

    threads = torch.get_num_threads()
    # One thread: the order of floating-point sums, and so the saved bytes, must not depend on the machine's load.
    torch.set_num_threads(1)
    try:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            batches = torch.Generator().manual_seed(seed)
            optimizer = torch.optim.AdamW(model.parameters(), lr=learning_rate, weight_decay=0.01)
            warmup = max(1, steps // 10)

            def rate(step: int) -> float:
                if step < warmup:
                    return (step + 1) / warmup
                return 1.0 - 0.9 * (step - warmup) / max(1, steps - warmup)

            schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, rate)
            model.train()
            for _ in range(steps):
                starts = torch.randint(0, len(train_ids) - window, (BATCH_SIZE,), generator=batches)
                batch = torch.stack([train_ids[s : s + window] for s in starts.tolist()])
                logits = model(input_ids=batch).logits
                # Each position predicts the next token.
                loss = torch.nn.functional.cross_entropy(
                    logits[:, :-1].reshape(-1, logits.shape[-1]), batch[:, 1:].reshape(-1)
                )
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
                optimizer.step()
                schedule.step()
            model.eval()
            perplexity = _perplexity(model, validation_ids)
    finally:
        torch.set_num_threads(threads)
    return TrainingReport(
        steps=steps,
        seconds=round(time.perf_counter() - started, 1),
        train_tokens=len(train_ids),
        validation_tokens=len(validation_ids),
        validation_perplexity=round(perplexity, 2),
        uniform_perplexity=int(model.config.vocab_size),
    )


def _perplexity(model: GPT2LMHeadModel, ids: Any) -> float:
    """Mean next-token loss over consecutive SEQUENCE_LENGTH windows, as a perplexity."""
    import torch

    total, count = 0.0, 0
    with torch.no_grad():
        for start in range(0, len(ids) - 1, SEQUENCE_LENGTH * _EVAL_ROWS):
            chunk = ids[start : start + SEQUENCE_LENGTH * _EVAL_ROWS + 1]
            rows = (len(chunk) - 1) // SEQUENCE_LENGTH
            if rows == 0:
                break
            inputs = chunk[: rows * SEQUENCE_LENGTH].view(rows, SEQUENCE_LENGTH)
            targets = chunk[1 : rows * SEQUENCE_LENGTH + 1].view(rows, SEQUENCE_LENGTH)
            logits = model(input_ids=inputs).logits
            loss = torch.nn.functional.cross_entropy(
                logits.reshape(-1, logits.shape[-1]), targets.reshape(-1), reduction="sum"
            )
            total += float(loss)
            count += targets.numel()
    return math.exp(total / count)
