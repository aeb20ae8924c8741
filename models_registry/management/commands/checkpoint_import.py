"""Register a local Hugging Face-format GPT-2 folder as a checkpoint's weights."""

from __future__ import annotations

from pathlib import Path

from django.core.exceptions import ValidationError
from django.core.management.base import BaseCommand, CommandError, CommandParser

from models_registry import services
from models_registry.models import Checkpoint


class Command(BaseCommand):
    help = (
        "Check a Hugging Face-format folder (config.json, model.safetensors, tokenizer files) and register it "
        "as SLUG's weights. Pickled .bin weights are refused."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("slug", help="gpt2, gpt2-medium, gpt2-large or gpt2-xl")
        parser.add_argument("path", type=Path, help="the checkpoint folder; workers must see the same path")
        parser.add_argument(
            "--allow-shape-mismatch",
            action="store_true",
            help="accept a GPT-2 whose size differs from the released model's",
        )

    def handle(self, *args: object, slug: str, path: Path, allow_shape_mismatch: bool, **options: object) -> None:
        checkpoint = Checkpoint.objects.filter(slug=slug).first()
        if checkpoint is None:
            known = ", ".join(Checkpoint.objects.values_list("slug", flat=True))
            raise CommandError(f"No checkpoint {slug!r}; the registry has: {known}.")
        try:
            checkpoint = services.checkpoint_import(
                actor=None, checkpoint=checkpoint, folder=path, allow_shape_mismatch=allow_shape_mismatch
            )
        except ValidationError as exc:
            message = " ".join(exc.messages)
            if message.startswith("Wrong shape") and not allow_shape_mismatch:
                message += " Pass --allow-shape-mismatch to register it anyway."
            raise CommandError(f"{slug}: {message}") from None
        if checkpoint.is_demo:
            kind = "demo"
        elif checkpoint.weights_parameter_count != checkpoint.parameter_count:
            kind = "non-standard (shape mismatch allowed)"
        else:
            kind = "real"
        self.stdout.write(
            self.style.SUCCESS(
                f"Registered {kind} weights for {slug}: {checkpoint.weights_parameter_count:,} parameters, "
                f"SHA-256 {checkpoint.weights_sha256}, from {checkpoint.weights_path}"
            )
        )
