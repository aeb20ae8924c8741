from pathlib import Path

from django.core.management.base import BaseCommand, CommandError

from records.pdf import MAX_VERIFY_BYTES
from records.selectors import record_verify


class Command(BaseCommand):
    help = "Check that FILE is an untouched sealed record of ours; exit 0 when it is, 1 saying why when not."

    def add_arguments(self, parser):
        parser.add_argument("file", help="The PDF to check.")

    def handle(self, *args: object, file: str, **options: object) -> None:
        path = Path(file)
        if not path.is_file():
            raise CommandError(f"No such file: {path}", returncode=1)
        if path.stat().st_size > MAX_VERIFY_BYTES:
            raise CommandError(f"Not verified: {path} is over 20 MB; none of our records is that large.", returncode=1)
        result = record_verify(path.read_bytes())
        if not result.ok:
            raise CommandError(f"Not verified ({result.code}): {result.reason}", returncode=1)
        self.stdout.write(self.style.SUCCESS(f"Verified: {result.reason}"))
        self.stdout.write(f"SHA-256 {result.sha256}, sealing certificate {result.cert_sha256}")
