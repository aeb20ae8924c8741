"""Build and register the four tiny demo checkpoints, for one-machine runs without real weights."""

from __future__ import annotations

import os
from pathlib import Path

from django.conf import settings
from django.core.management.base import BaseCommand, CommandParser

from models_registry import services
from models_registry.training import corpus_split
from models_registry.weights import DEMO_CORPUS_PATH, read_training_report


class Command(BaseCommand):
    help = (
        "Build tiny GPT-2 checkpoints under CHECKPOINTS_DIR, briefly trained on English text that ships with "
        "Python (random weights when DEMO_CHECKPOINT_TRAINING is off), and register them as demo weights, "
        "except where real weights are registered. About two minutes the first time; fast when up to date."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument(
            "--dir", dest="root", type=Path, default=None, help="where to build (default: the CHECKPOINTS_DIR setting)"
        )

    def handle(self, *args: object, root: Path | None, **options: object) -> None:
        root = Path(root or settings.CHECKPOINTS_DIR)
        # Building needs no network; keep the Hugging Face libraries from trying.
        os.environ.setdefault("HF_HUB_OFFLINE", "1")
        train = bool(settings.DEMO_CHECKPOINT_TRAINING)
        # Trained checkpoints get a tokenizer of the text they learn; random ones the small bundled text.
        corpus = corpus_split().train_text if train else DEMO_CORPUS_PATH.read_text(encoding="utf-8")
        for checkpoint, outcome in services.checkpoints_ensure_demo(root=root, corpus=corpus, train=train):
            detail = f" ({checkpoint.weights_sha256[:12]}…)" if checkpoint.is_demo else ""
            report = read_training_report(Path(checkpoint.weights_path)) if checkpoint.is_demo else None
            if report:
                detail += (
                    f" — validation perplexity {report['validation_perplexity']:,}"
                    f" (uniform {report['uniform_perplexity']:,})"
                )
            self.stdout.write(f"  {checkpoint.slug:<12} {outcome}{detail}")
