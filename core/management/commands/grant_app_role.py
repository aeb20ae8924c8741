from django.core.management.base import BaseCommand, CommandError, CommandParser

from core.db_roles import ORDINARY_PRIVILEGES, RoleGrantError, app_role_grant


class Command(BaseCommand):
    help = (
        "Grant the app's PostgreSQL role its privileges, and nothing more: SELECT/INSERT on the audit log, "
        "SELECT on its chain head, SELECT/INSERT/UPDATE/DELETE on every other table. Run as the owner role "
        "after migrate (migrate does it itself when DATABASE_APP_ROLE is set). Idempotent."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("role", help="The role the app connects as, e.g. modelpact_app.")
        parser.add_argument("--database", default="default", help="The database alias (default: default).")

    def handle(self, *args: object, role: str, database: str, **options: object) -> None:
        try:
            report = app_role_grant(role, using=database)
        except RoleGrantError as exc:
            raise CommandError(str(exc)) from None
        self.stdout.write(
            self.style.SUCCESS(
                f"{role}: {', '.join(ORDINARY_PRIVILEGES)} on {report.tables - len(report.restricted)} tables "
                f"and USAGE, SELECT on {report.sequences} sequences in schema {report.schema}"
            )
        )
        for table, privileges in report.restricted.items():
            self.stdout.write(f"{role}: only {', '.join(privileges) or 'nothing'} on {table}")
        for table in report.not_yet_created:
            self.stdout.write(self.style.WARNING(f"{table} does not exist yet: run migrate, then this again."))
