from django.core.management.base import BaseCommand, CommandError

from audit.checkpoints import CheckpointError, checkpoint_dir, checkpoint_write


class Command(BaseCommand):
    help = (
        "Sign the audit chain head with the lab's sealing key and write it under RECORDS_DIR/chain-checkpoints/ "
        "(beat does this hourly); nothing new is written when the head has not moved."
    )

    def handle(self, *args: object, **options: object) -> None:
        try:
            checkpoint = checkpoint_write()
        except CheckpointError as exc:
            raise CommandError(str(exc), returncode=1) from None
        if checkpoint is None:
            self.stdout.write(
                f"No new checkpoint: the chain is empty or its head is signed already ({checkpoint_dir()})."
            )
            return
        self.stdout.write(
            self.style.SUCCESS(
                f"Signed checkpoint of head #{checkpoint.seq} {checkpoint.hash} written to {checkpoint.path}"
            )
        )
