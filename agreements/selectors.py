"""Every read of templates and agreements, scoped to what the asking user may see."""

from __future__ import annotations

import re

from django.db.models import Prefetch, QuerySet
from django.http import Http404

from accounts.models import LAB_ROLES, PARTNER_ROLES, Organization, Role, User
from accounts.permissions import require_role, role_of
from accounts.selectors import lab_organization
from agreements import rendering
from agreements.models import Agreement, AgreementTemplate, Signature, TemplateVersion

TEMPLATE_EDITORS = (Role.LAB_ADMIN, Role.LEGAL)
AGREEMENT_MANAGERS = (Role.LAB_ADMIN, Role.LEGAL)


def template_list(*, user: User) -> QuerySet[AgreementTemplate]:
    require_role(user, *LAB_ROLES)
    return AgreementTemplate.objects.prefetch_related(
        Prefetch("versions", queryset=TemplateVersion.objects.order_by("-number"))
    ).order_by("name")


def template_get(*, user: User, pk: int) -> AgreementTemplate:
    require_role(user, *LAB_ROLES)
    template = AgreementTemplate.objects.filter(pk=pk).first()
    if template is None:
        raise Http404
    return template


def template_version_get(*, user: User, pk: int) -> TemplateVersion:
    require_role(user, *LAB_ROLES)
    version = TemplateVersion.objects.select_related("template", "published_by").filter(pk=pk).first()
    if version is None:
        raise Http404
    return version


def published_versions() -> QuerySet[TemplateVersion]:
    """Versions new agreements may be made from (published, not retired), newest first per template."""
    return (
        TemplateVersion.objects.filter(status=TemplateVersion.Status.PUBLISHED)
        .select_related("template")
        .order_by("template__name", "-number")
    )


def agreement_list(*, user: User, organization: Organization | None = None, status: str | None = None):
    """Lab staff see every agreement; partner users their own organisation's, drafts excluded."""
    role = role_of(user)
    if role is None:
        raise Http404
    agreements = Agreement.objects.select_related("organization", "template_version__template").prefetch_related(
        "checkpoints"
    )
    if role in PARTNER_ROLES:
        agreements = agreements.filter(organization_id=user.membership.organization_id).exclude(
            status=Agreement.Status.DRAFT
        )
    elif organization is not None:
        agreements = agreements.filter(organization=organization)
    if status:
        agreements = agreements.filter(status=status)
    return agreements.order_by("-created_at", "-pk")


def agreement_get(*, user: User, pk: int) -> Agreement:
    """One agreement; another organisation's (or a draft, for partners) is 404."""
    agreement = agreement_list(user=user).filter(pk=pk).first()
    if agreement is None:
        raise Http404
    return agreement


def agreements_awaiting_signature(*, user: User) -> QuerySet[Agreement]:
    """What a partner signatory should sign now, or what legal should countersign."""
    role = role_of(user)
    if role == Role.SIGNATORY:
        return agreement_list(user=user, status=Agreement.Status.OUT_FOR_SIGNATURE)
    if role in AGREEMENT_MANAGERS:
        return agreement_list(user=user, status=Agreement.Status.PARTNER_SIGNED)
    return Agreement.objects.none()


def agreement_signatures(agreement: Agreement) -> list[Signature]:
    return list(agreement.signatures.select_related("signer").order_by("signed_at"))


def _long_date(day) -> str:
    return f"{day.day} {day:%B %Y}"


def document_values(agreement: Agreement) -> dict[str, rendering.Value]:
    """The placeholder values for one agreement, from its organisation, the lab and its terms."""
    organization = agreement.organization
    lab = lab_organization()
    lab_name = lab.legal_name if lab else "the Lab"
    checkpoints = sorted(agreement.checkpoints.all(), key=lambda c: c.parameter_count)
    return {
        "organization.name": organization.name,
        "organization.legal_name": organization.legal_name,
        "organization.jurisdiction": organization.jurisdiction,
        "organization.address": organization.address.replace("\n", ", "),
        "lab.legal_name": lab_name,
        "effective_date": _long_date(agreement.effective_date),
        "term_months": str(agreement.term_months),
        "end_date": _long_date(agreement.end_date),
        "checkpoints": rendering.checkpoint_list_html(
            [(c.display_name, f"{c.size_label} parameters, “{c.slug}”") for c in checkpoints]
        ),
        "purpose": agreement.purpose,
        "daily_token_quota": f"{agreement.daily_token_quota:,}",
        "signature.partner": rendering.signature_block_html(f"For {organization.legal_name}"),
        "signature.lab": rendering.signature_block_html(f"For {lab_name}"),
    }


def agreement_render(agreement: Agreement) -> str:
    """The document as it would be frozen now; after sending, the frozen HTML is what counts."""
    if agreement.document_html:
        return agreement.document_html
    body = rendering.render_markdown(agreement.template_version.body, document_values(agreement))
    return f'<article class="agreement-document">{body}</article>'


# render_markdown marks a placeholder whose value is blank as a highlighted "[name]".
_MISSING_RE = re.compile(r'<span class="placeholder-missing">\[([^\]<]+)\]</span>')


def missing_values(document_html: str) -> list[str]:
    """Placeholders a rendered document shows as blank (an organisation without an address, say)."""
    return sorted(set(_MISSING_RE.findall(document_html)))


# --- Reads for the pages (views and home page) -------------------------------------------------------


def grantable_checkpoints() -> QuerySet:
    """The registry's checkpoints, smallest first; agreement_create refuses any not available now."""
    from models_registry.models import Checkpoint

    return Checkpoint.objects.order_by("parameter_count")


def agreement_home(*, user: User) -> dict[str, object]:
    """What a persona's home page shows about agreements: a few rows each, never a whole table."""
    role = role_of(user)
    if role in AGREEMENT_MANAGERS:
        return {
            "template_count": AgreementTemplate.objects.count(),
            "awaiting_countersignature": list(agreements_awaiting_signature(user=user)[:5]),
            "agreement_drafts": list(agreement_list(user=user, status=Agreement.Status.DRAFT)[:5]),
            "out_for_signature_count": agreement_list(user=user, status=Agreement.Status.OUT_FOR_SIGNATURE).count(),
        }
    if role in PARTNER_ROLES:
        return {
            "agreements": list(agreement_list(user=user)[:5]),
            "awaiting_signature": list(agreements_awaiting_signature(user=user)[:5]),
        }
    return {}
