from allauth.account.adapter import DefaultAccountAdapter
from django.http import HttpRequest


class InviteOnlyAccountAdapter(DefaultAccountAdapter):
    """People join by invitation only; there is no open sign-up."""

    def is_open_for_signup(self, request: HttpRequest) -> bool:
        return False
