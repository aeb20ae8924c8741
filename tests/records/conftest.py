"""Records tests: the agreement fixtures, and a private records folder and sealing key per test."""

from __future__ import annotations

import io
import shutil
from pathlib import Path

import pytest
from pypdf import PdfReader


@pytest.fixture(autouse=True)
def records_dir(settings, tmp_path, _seal_key) -> Path:
    """Records and a copy of the session's sealing key live in this test's own folder, which a test
    may change (delete the key, rotate it) without touching any other test."""
    folder = tmp_path / "records"
    folder.mkdir()
    settings.RECORDS_DIR = folder
    settings.RECORDS_KEY_PATH = folder / "dev-seal-key.pem"
    settings.RECORDS_CERT_PATH = folder / "dev-seal-cert.pem"
    settings.RECORDS_TSA_URL = ""
    # Tests run with DEBUG off, where sealing refuses to make its own key: installed as an operator would.
    key, cert = _seal_key
    shutil.copy2(key, settings.RECORDS_KEY_PATH)
    shutil.copy2(cert, settings.RECORDS_CERT_PATH)
    return folder


def pdf_text(data: bytes) -> str:
    """All the text of a PDF as pypdf reads it, whitespace collapsed."""
    reader = PdfReader(io.BytesIO(data))
    return " ".join(" ".join((page.extract_text() or "").split()) for page in reader.pages)
