"""Records tests: the agreement fixtures, and a private records folder and sealing key per test."""

from __future__ import annotations

import io
from pathlib import Path

import pytest
from pypdf import PdfReader

from records.pdf import generate_seal_key


@pytest.fixture(autouse=True)
def records_dir(settings, tmp_path) -> Path:
    """Records and the sealing key live in this test's own folder."""
    folder = tmp_path / "records"
    settings.RECORDS_DIR = folder
    settings.RECORDS_KEY_PATH = folder / "dev-seal-key.pem"
    settings.RECORDS_CERT_PATH = folder / "dev-seal-cert.pem"
    settings.RECORDS_TSA_URL = ""
    # Tests run with DEBUG off, where sealing refuses to make its own key: make it as an operator would.
    generate_seal_key(settings.RECORDS_KEY_PATH, settings.RECORDS_CERT_PATH)
    return folder


def pdf_text(data: bytes) -> str:
    """All the text of a PDF as pypdf reads it, whitespace collapsed."""
    reader = PdfReader(io.BytesIO(data))
    return " ".join(" ".join((page.extract_text() or "").split()) for page in reader.pages)
