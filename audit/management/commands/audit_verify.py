from django.core.management.base import BaseCommand, CommandError

from audit.selectors import audit_chain_verify


class Command(BaseCommand):
    help = "Walk the audit hash chain; exit 0 when intact, 1 naming the first bad seq."

    def handle(self, *args: object, **options: object) -> None:
        report = audit_chain_verify()
        if report.ok:
            self.stdout.write(
                self.style.SUCCESS(
                    f"Audit chain intact: {report.events} events, head #{report.head_seq} {report.head_hash}"
                )
            )
            return
        raise CommandError(f"Audit chain broken at seq {report.first_bad_seq}: {report.problem}", returncode=1)
