"""Personas shared by every test: the lab's staff, and two partners so isolation is always testable.

Partner B is the outsider in every test about Partner A's data.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest
from django.core.cache import cache

from accounts import services
from accounts.models import Organization, Role, User

PASSWORD = "correct horse battery staple"
# Checkpoints, templates, agreements and jobs, built through the services: tests/builders.py.
pytest_plugins = ["tests.builders"]


def pytest_configure(config: pytest.Config) -> None:
    from django.conf import settings

    # Hashing with the production hasher would dominate the suite's run time.
    settings.PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]
    # Training the demo checkpoints takes minutes; tests use random ones, here and in the processes they start.
    settings.DEMO_CHECKPOINT_TRAINING = False
    os.environ["DEMO_CHECKPOINT_TRAINING"] = "false"
    # One watermark key for the suite and the workers it starts, so samples compare across processes.
    os.environ["WATERMARK_KEY"] = settings.WATERMARK_KEY = "watermark key of the test suite, not a secret"
    from config.celery import app

    # Unit tests run tasks in-process; tests marked `worker` start a real worker instead.
    app.conf.task_always_eager = True
    app.conf.task_eager_propagates = True


@pytest.fixture(scope="session")
def _seal_key(tmp_path_factory) -> tuple:
    from records.pdf import generate_seal_key

    folder = tmp_path_factory.mktemp("seal")
    generate_seal_key(folder / "key.pem", folder / "cert.pem")
    return folder / "key.pem", folder / "cert.pem"


@pytest.fixture(autouse=True)
def records_dir(settings, tmp_path_factory, _seal_key) -> Path:
    """Sealed records and a copy of the session's sealing key live in this test's own folder, which
    a test may change (delete the key, rotate it) without touching any other test.

    Tests run with DEBUG off, where sealing refuses to invent a key: it is installed as an operator would.
    """
    folder = tmp_path_factory.mktemp("records")  # beside tmp_path, which stays the test's own
    settings.RECORDS_DIR = folder
    settings.RECORDS_KEY_PATH = folder / "dev-seal-key.pem"
    settings.RECORDS_CERT_PATH = folder / "dev-seal-cert.pem"
    settings.RECORDS_TSA_URL = ""
    key, cert = _seal_key
    shutil.copy2(key, settings.RECORDS_KEY_PATH)
    shutil.copy2(cert, settings.RECORDS_CERT_PATH)
    return folder


@pytest.fixture(autouse=True)
def _clear_cache() -> None:
    # Login rate limits live in the cache; one test's failures must not lock the next.
    cache.clear()


@pytest.fixture
def gpt2_stages(db) -> None:
    """The four GPT-2 stages, which a data migration seeds; transactional tests flush them, so re-seed."""
    import importlib

    from django.apps import apps

    importlib.import_module("models_registry.migrations.0002_gpt2_stages").add_stages(apps, None)


def make_user(organization: Organization, email: str, role: str, full_name: str = "") -> User:
    return services.user_create(
        actor=None,
        organization=organization,
        email=email,
        role=role,
        password=PASSWORD,
        full_name=full_name or email.split("@")[0].title(),
    )


@pytest.fixture
def lab(db) -> Organization:
    return services.organization_create(
        actor=None, name="The Lab", legal_name="Open Model Lab Ltd", kind="lab", jurisdiction="England and Wales"
    )


@pytest.fixture
def partner_a(db) -> Organization:
    return services.organization_create(
        actor=None,
        name="Partner A",
        legal_name="Partner A Research Institute",
        jurisdiction="Delaware",
        address="200 University Avenue, Palo Alto, CA 94301",
    )


@pytest.fixture
def partner_b(db) -> Organization:
    return services.organization_create(
        actor=None, name="Partner B", legal_name="Partner B gGmbH", jurisdiction="Germany"
    )


@pytest.fixture
def lab_admin(lab) -> User:
    return make_user(lab, "admin@lab.example", Role.LAB_ADMIN, "Ada Admin")


@pytest.fixture
def legal(lab) -> User:
    return make_user(lab, "legal@lab.example", Role.LEGAL, "Lena Legal")


@pytest.fixture
def auditor(lab) -> User:
    return make_user(lab, "auditor@lab.example", Role.AUDITOR, "Otto Auditor")


@pytest.fixture
def admin_a(partner_a) -> User:
    return make_user(partner_a, "admin@partner-a.example", Role.PARTNER_ADMIN, "Amir Admin")


@pytest.fixture
def signer_a(partner_a) -> User:
    return make_user(partner_a, "signer@partner-a.example", Role.SIGNATORY, "Sofia Signer")


@pytest.fixture
def researcher_a(partner_a) -> User:
    return make_user(partner_a, "researcher@partner-a.example", Role.RESEARCHER, "Ravi Researcher")


@pytest.fixture
def admin_b(partner_b) -> User:
    return make_user(partner_b, "admin@partner-b.example", Role.PARTNER_ADMIN, "Bea Admin")


@pytest.fixture
def signer_b(partner_b) -> User:
    return make_user(partner_b, "signer@partner-b.example", Role.SIGNATORY, "Stefan Signer")


@pytest.fixture
def researcher_b(partner_b) -> User:
    return make_user(partner_b, "researcher@partner-b.example", Role.RESEARCHER, "Rosa Researcher")


@pytest.fixture
def everyone(lab_admin, legal, auditor, admin_a, signer_a, researcher_a, admin_b, signer_b, researcher_b) -> dict:
    return {
        "lab_admin": lab_admin,
        "legal": legal,
        "auditor": auditor,
        "admin_a": admin_a,
        "signer_a": signer_a,
        "researcher_a": researcher_a,
        "admin_b": admin_b,
        "signer_b": signer_b,
        "researcher_b": researcher_b,
    }
