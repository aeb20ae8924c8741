"""Build and register the four tiny demo checkpoints, for one-machine runs without real weights."""

from __future__ import annotations

import os
from pathlib import Path

from django.conf import settings
from django.core.management.base import BaseCommand, CommandParser

from models_registry import services
from models_registry.weights import DEMO_CORPUS_PATH


class Command(BaseCommand):
    help = (
        "Build tiny random-weight GPT-2 checkpoints (a tokenizer trained on bundled text) under CHECKPOINTS_DIR "
        "and register them as demo weights, except where real weights are registered. Fast when up to date."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument(
            "--dir", dest="root", type=Path, default=None, help="where to build (default: the CHECKPOINTS_DIR setting)"
        )

    def handle(self, *args: object, root: Path | None, **options: object) -> None:
        root = Path(root or settings.CHECKPOINTS_DIR)
        # Building needs no network; keep the Hugging Face libraries from trying.
        os.environ.setdefault("HF_HUB_OFFLINE", "1")
        corpus = DEMO_CORPUS_PATH.read_text(encoding="utf-8")
        for checkpoint, outcome in services.checkpoints_ensure_demo(root=root, corpus=corpus):
            detail = f" ({checkpoint.weights_sha256[:12]}…)" if checkpoint.is_demo else ""
            self.stdout.write(f"  {checkpoint.slug:<12} {outcome}{detail}")
