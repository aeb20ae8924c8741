"""Re-hash registered weights; exit 1 naming every checkpoint whose file changed."""

from __future__ import annotations

from django.core.management.base import BaseCommand, CommandError, CommandParser

from models_registry.models import Checkpoint
from models_registry.selectors import checkpoint_weights_check


class Command(BaseCommand):
    help = "Recompute the SHA-256 of registered weights (all, or SLUG's); exit 1 on any drift."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("slug", nargs="?", help="verify only this checkpoint")

    def handle(self, *args: object, slug: str | None, **options: object) -> None:
        checkpoints = Checkpoint.objects.order_by("parameter_count")
        if slug:
            checkpoints = checkpoints.filter(slug=slug)
            if not checkpoints:
                raise CommandError(f"No checkpoint {slug!r}.")
            if not checkpoints[0].has_weights:
                raise CommandError(f"{slug} has no registered weights; run checkpoint_import or checkpoint_demo.")
        drifted = []
        for checkpoint in checkpoints:
            if not checkpoint.has_weights:
                self.stdout.write(f"{checkpoint.slug}: no weights registered")
                continue
            check = checkpoint_weights_check(checkpoint)
            if check.ok:
                self.stdout.write(self.style.SUCCESS(f"{checkpoint.slug}: ok, SHA-256 {check.found_sha256}"))
            else:
                self.stderr.write(self.style.ERROR(f"{checkpoint.slug}: DRIFT: {check.problem}"))
                drifted.append(checkpoint.slug)
        if drifted:
            raise CommandError(f"Weights changed since registration: {', '.join(drifted)}.", returncode=1)
