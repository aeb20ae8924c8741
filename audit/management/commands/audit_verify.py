from django.core.management.base import BaseCommand, CommandError

from audit.selectors import audit_chain_verify


class Command(BaseCommand):
    help = (
        "Walk the audit hash chain and check it against every signed chain-head checkpoint; "
        "exit 0 when intact, 1 naming the first bad seq (or the checkpoint file that cannot be trusted)."
    )

    def handle(self, *args: object, **options: object) -> None:
        report = audit_chain_verify()
        for problem in report.checkpoint_problems:
            self.stderr.write(f"Checkpoint problem: {problem}")
        if report.ok:
            self.stdout.write(
                self.style.SUCCESS(
                    f"Audit chain intact: {report.events} events, head #{report.head_seq} {report.head_hash}"
                )
            )
            if report.checkpoints:
                plural = "" if report.checkpoints == 1 else "s"
                self.stdout.write(
                    f"{report.checkpoints} signed checkpoint{plural} checked; latest {report.latest_checkpoint}"
                )
            else:
                self.stdout.write(
                    self.style.WARNING("0 signed checkpoints checked: none written yet (manage.py audit_checkpoint).")
                )
            return
        if report.first_bad_seq is None:
            raise CommandError(f"Audit checkpoints cannot be trusted: {report.problem}", returncode=1)
        raise CommandError(f"Audit chain broken at seq {report.first_bad_seq}: {report.problem}", returncode=1)
