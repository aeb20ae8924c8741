"""Rendering reaches nothing but our own static files: no local files, no network, no data: URLs,
and it stops at its time limit."""

from __future__ import annotations

import base64
import http.server
import io
import threading
from collections.abc import Iterator

import pytest
from pypdf import PdfReader
from pypdf.generic import IndirectObject, StreamObject

from agreements.models import Agreement
from records import pdf
from records.selectors import record_file_bytes
from records.services import record_seal_agreement
from tests.records.conftest import pdf_text

SENTINEL = "SENTINEL-7f3a9c-do-not-leak"


@pytest.fixture
def secret_file(tmp_path) -> str:
    path = tmp_path / "secret.txt"
    path.write_text(f"{SENTINEL}\n")
    return str(path)


@pytest.fixture
def server(secret_file) -> Iterator[dict]:
    """A local HTTP server that serves the sentinel and redirects to the secret file; it counts requests."""
    hits: list[str] = []

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            hits.append(self.path)
            if self.path.startswith("/redirect"):
                self.send_response(302)
                self.send_header("Location", f"file://{secret_file}")
                self.end_headers()
                return
            body = f"p::after {{ content: '{SENTINEL}' }}".encode()
            self.send_response(200)
            self.send_header("Content-Type", "text/css")
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args: object) -> None:
            pass

    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield {"url": f"http://127.0.0.1:{httpd.server_address[1]}", "hits": hits}
    httpd.shutdown()


def every_stream(data: bytes) -> bytes:
    """The PDF's bytes plus every stream decompressed, so nothing hides inside a Flate stream."""
    reader = PdfReader(io.BytesIO(data))
    parts = [data]
    for number in range(1, int(reader.trailer["/Size"])):
        try:
            obj = reader.get_object(IndirectObject(number, 0, reader))
        except Exception:
            continue
        if isinstance(obj, StreamObject):
            parts.append(obj.get_data())
    return b"\n".join(parts)


def hostile_html(secret_file: str, server_url: str) -> tuple[str, list[str]]:
    svg_inside = (
        f'<svg xmlns="http://www.w3.org/2000/svg" xmlns:xlink="http://www.w3.org/1999/xlink" width="10" height="10">'
        f'<image xlink:href="file://{secret_file}" width="10" height="10"/></svg>'
    )
    svg_data_url = "data:image/svg+xml;base64," + base64.b64encode(svg_inside.encode()).decode()
    urls = [
        "file:///etc/passwd",
        f"file://{secret_file}",
        "http://127.0.0.1:6379/",
        f"{server_url}/redirect",
        f"{server_url}/style.css",
        f"{server_url}/imported.css",
        f"{server_url}/background.png",
        svg_data_url,
        f"{STATIC}../config/settings.py",
        f"{STATIC}/etc/passwd",
        f"{STATIC}fonts/../../manage.py",
        f"{STATIC}css/records.css?x=1",
    ]
    html = f"""<!DOCTYPE html><html><head><title>hostile</title>
    <link rel="stylesheet" href="mpstatic:css/records.css">
    <link rel="stylesheet" href="http://127.0.0.1:6379/">
    <link rel="stylesheet" href="{server_url}/style.css">
    <style>
      @import url("{server_url}/imported.css");
      @import "file://{secret_file}";
      body {{ background: url("{server_url}/background.png"); }}
      h1 {{ background-image: url("file://{secret_file}"); }}
      @font-face {{ font-family: Leak; src: url("file:///etc/passwd"); }}
    </style></head><body>
    <h1>Hostile</h1>
    <img src="file:///etc/passwd"><img src="file://{secret_file}"><img src="{server_url}/redirect">
    <img src="{svg_data_url}">
    <svg width="20" height="20"><image href="file://{secret_file}" width="20" height="20"/></svg>
    <object data="file://{secret_file}"></object><embed src="file://{secret_file}">
    <a rel="attachment" href="file://{secret_file}">attachment</a>
    <img src="{STATIC}../config/settings.py"><img src="{STATIC}/etc/passwd">
    <img src="{STATIC}fonts/../../manage.py"><img src="{STATIC}css/records.css?x=1">
    <p>Body text</p></body></html>"""
    return html, urls


STATIC = "mpstatic:"


def test_nothing_but_our_static_files_is_fetched(settings, secret_file, server):
    html, urls = hostile_html(secret_file, server["url"])
    rendered = pdf.render_pdf(html)

    refused = set(rendered.refused)
    missing = [url for url in urls if url[:300] not in refused]  # refusals are kept to 300 characters
    assert not missing, f"not refused: {missing}"
    assert server["hits"] == [], "the renderer reached the network"
    assert all(url.startswith(("mpstatic:css/", "mpstatic:fonts/")) for url in rendered.served)
    assert "mpstatic:css/records.css" in rendered.served
    everything = every_stream(rendered.pdf)
    assert SENTINEL.encode() not in everything
    assert b"root:x:0:0" not in everything
    assert not PdfReader(io.BytesIO(rendered.pdf)).attachments
    assert "Body text" in pdf_text(rendered.pdf)


def test_unsafe_values_in_a_record_are_text_and_a_hostile_document_fetches_nothing(
    db, active, secret_file, server, caplog
):
    organization = active.organization
    organization.legal_name = f'Evil <img src="file://{secret_file}"> Corp'
    organization.save(update_fields=["legal_name"])
    # A frozen document can only come from sanitised Markdown; pretend one slipped through.
    poisoned = (
        f'<article class="agreement-document"><h1>Agreement</h1><img src="file://{secret_file}">'
        f'<link rel="stylesheet" href="{server["url"]}/style.css">'
        f'<p style="background: url(file:///etc/passwd)">Terms.</p></article>'
    )
    Agreement.objects.filter(pk=active.pk).update(document_html=poisoned)

    record = record_seal_agreement(agreement_id=active.pk, occasion="activated")
    assert record.status == "ready", record.error
    data = record_file_bytes(record)
    assert SENTINEL.encode() not in every_stream(data)
    assert server["hits"] == []
    text = pdf_text(data)
    assert f'Evil <img src="file://{secret_file}"> Corp' in text  # escaped: shown, not fetched
    assert "Record rendering refused to fetch file://" in caplog.text


# The hard stop is a timer signal; one that lands in a finaliser is reported as unraisable (and re-fired).
@pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning")
def test_rendering_stops_at_its_time_limit():
    rows = "".join(f"<tr><td>row {n}</td><td>{'x' * 40}</td></tr>" for n in range(20000))
    with pytest.raises(pdf.RenderTimeout, match="RECORDS_RENDER_TIMEOUT"):
        pdf.render_pdf(f"<table>{rows}</table>", timeout=0.3)


def test_a_record_that_takes_too_long_fails_with_a_reason(db, settings, active):
    settings.RECORDS_RENDER_TIMEOUT = 0.01
    record = record_seal_agreement(agreement_id=active.pk, occasion="activated")
    assert record.status == "failed" and "RECORDS_RENDER_TIMEOUT" in record.error
