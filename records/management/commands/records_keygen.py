from django.core.exceptions import ValidationError
from django.core.management.base import BaseCommand, CommandError

from records import pdf
from records.services import record_key_generate


class Command(BaseCommand):
    help = (
        "Make a development sealing key and self-signed certificate at RECORDS_KEY_PATH / RECORDS_CERT_PATH "
        "(var/records/ by default). Production points those settings at the lab's own key instead."
    )

    def add_arguments(self, parser):
        parser.add_argument("--force", action="store_true", help="Replace an existing key (old records still verify).")

    def handle(self, *args: object, force: bool = False, **options: object) -> None:
        try:
            cert_sha256 = record_key_generate(force=force)
        except ValidationError as exc:
            raise CommandError(" ".join(exc.messages)) from None
        key_path, cert_path = pdf.seal_key_paths()
        self.stdout.write(self.style.SUCCESS(f"Sealing key written to {key_path}"))
        self.stdout.write(f"Certificate {cert_path}, SHA-256 {cert_sha256}")
