"""Records tests: reading the text of a PDF. (Every test has its own records folder: tests/conftest.py.)"""

from __future__ import annotations

import io

from pypdf import PdfReader


def pdf_text(data: bytes) -> str:
    """All the text of a PDF as pypdf reads it, whitespace collapsed."""
    reader = PdfReader(io.BytesIO(data))
    return " ".join(" ".join((page.extract_text() or "").split()) for page in reader.pages)
