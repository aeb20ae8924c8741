from django.core.management.base import BaseCommand, CommandParser

from inference.models import Sample, SampleFingerprint
from inference.services import samples_index


class Command(BaseCommand):
    help = (
        "Add every stored sample's text fingerprints to the near-duplicate index (for samples stored "
        "before it existed). Safe to run again: fingerprints already indexed are kept, not doubled."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--batch-size", type=int, default=1000, help="samples per transaction")

    def handle(self, *args: object, **options: object) -> None:
        batch_size = int(options["batch_size"])  # type: ignore[call-overload]
        before = SampleFingerprint.objects.count()
        samples = offered = 0
        last_pk = 0
        while True:
            # Keyset pages: each batch is one short transaction, and a million samples never sit in memory.
            batch = list(Sample.objects.filter(pk__gt=last_pk).order_by("pk").only("pk", "text")[:batch_size])
            if not batch:
                break
            offered += samples_index(samples=batch)
            samples += len(batch)
            last_pk = batch[-1].pk
        added = SampleFingerprint.objects.count() - before
        self.stdout.write(
            self.style.SUCCESS(f"Indexed {samples:,} samples: {offered:,} fingerprints, {added:,} of them new.")
        )
