"""Print a new API token for a user, for operators setting up a partner's automation."""

from __future__ import annotations

from django.core.exceptions import ValidationError
from django.core.management.base import BaseCommand, CommandError

from accounts import services as account_services
from accounts.models import User


class Command(BaseCommand):
    help = "Create an API token for EMAIL and print it (shown only this once). The creation is audited."

    def add_arguments(self, parser):
        parser.add_argument("email", help="The user the token acts as.")
        parser.add_argument(
            "--expiry-days",
            type=int,
            default=None,
            help=f"Days until it expires (1-{account_services.API_TOKEN_EXPIRY_DAYS_MAX}); default API_TOKEN_TTL_DAYS.",
        )

    def handle(self, *args: object, email: str, expiry_days: int | None, **options: object) -> None:
        user = User.objects.filter(email__iexact=email.strip()).first()
        if user is None:
            raise CommandError(f"No user with the email {email}.")
        try:
            token, key = account_services.api_token_create(actor=None, user=user, expiry_days=expiry_days)
        except ValidationError as exc:
            raise CommandError(" ".join(exc.messages)) from None
        self.stderr.write(f"Token {token.token_key}… for {user.email}, expires {token.expiry:%Y-%m-%d %H:%M} UTC:")
        self.stdout.write(key)
