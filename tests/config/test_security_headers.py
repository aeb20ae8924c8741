"""Every response carries the Content-Security-Policy and Permissions-Policy, and nothing we serve needs
more than the policy allows: no template holds inline script or style, and the production static
pipeline (whitenoise's compressed manifest storage, DEBUG off) collects, hashes and serves our files.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from django.core.management import call_command
from django.test import Client
from django.urls import URLPattern, URLResolver, get_resolver
from django.urls.resolvers import RegexPattern

from accounts import services as account_services

pytestmark = pytest.mark.django_db

ROOT = Path(__file__).resolve().parents[2]
TEMPLATES = ROOT / "templates"
# Rendered to PDF by WeasyPrint, never served to a browser: their styles are the PDF's own.
PDF_TEMPLATES = TEMPLATES / "records" / "pdf"
MANIFEST_STORAGES = {
    "default": {"BACKEND": "django.core.files.storage.FileSystemStorage"},
    "staticfiles": {"BACKEND": "whitenoise.storage.CompressedManifestStaticFilesStorage"},
}
# Values for the path converters, so that every route can be asked for (most then answer 404).
SAMPLE_ARGUMENTS = {"int": "1", "slug": "gpt2", "str": "x", "path": "x"}


def assert_policy_headers(response, what: str) -> None:
    csp = response.headers.get("Content-Security-Policy", "")
    directives = {part.split()[0]: part.split()[1:] for part in csp.split(";") if part.strip()}
    assert directives.get("default-src") == ["'self'"], f"{what}: Content-Security-Policy is {csp!r}"
    assert directives.get("frame-ancestors") == ["'none'"], f"{what}: Content-Security-Policy is {csp!r}"
    assert "'unsafe-inline'" not in csp and "'unsafe-eval'" not in csp, f"{what}: {csp!r}"
    permissions = response.headers.get("Permissions-Policy", "")
    assert "camera=()" in permissions and "geolocation=()" in permissions, f"{what}: Permissions-Policy {permissions!r}"


def every_route(resolver: URLResolver | None = None, prefix: str = "") -> list[str]:
    """Every path the URLconf answers, with sample values for its arguments; admin and catch-alls left out."""
    resolver = resolver or get_resolver()
    paths = []
    for pattern in resolver.url_patterns:
        route = str(pattern.pattern)
        if route.startswith("admin/") or isinstance(pattern.pattern, RegexPattern):
            continue  # Django's admin; regex routes (the API's catch-all 404)
        route = re.sub(r"<(?:(\w+):)?\w+>", lambda m: SAMPLE_ARGUMENTS[m.group(1) or "str"], route)
        if isinstance(pattern, URLResolver):
            paths += every_route(pattern, prefix + route)
        elif isinstance(pattern, URLPattern):
            paths.append("/" + prefix + route)
    return sorted(set(paths))


def test_every_page_carries_the_policy_headers_whoever_asks(legal, researcher_a, gpt2_stages):
    routes = every_route()
    assert len(routes) > 40 and "/jobs/new/" in routes and "/api/v1/jobs/" in routes
    html_pages = 0
    for user in (None, legal, researcher_a):
        client = Client(raise_request_exception=False)  # a 500 must carry the headers too
        if user is not None:
            client.force_login(user)
        for path in routes:
            response = client.get(path)
            assert_policy_headers(response, f"GET {path} as {user or 'anonymous'} ({response.status_code})")
            if response.status_code == 200 and response["Content-Type"].startswith("text/html"):
                html_pages += 1
    assert html_pages > 30  # the walk reached real pages, not only redirects and 404s


def test_api_responses_and_the_docs_carry_the_policy_headers(client, researcher_a):
    _token, key = account_services.api_token_create(actor=None, user=researcher_a)
    api = Client(HTTP_AUTHORIZATION=f"Token {key}")
    for path in ("/api/v1/checkpoints/", "/api/v1/jobs/", "/api/v1/jobs/999/", "/api/v2/nothing/", "/healthz"):
        assert_policy_headers(api.get(path), f"GET {path}")
    assert_policy_headers(api.post("/api/v1/jobs/", {}, content_type="application/json"), "POST /api/v1/jobs/")
    assert_policy_headers(client.get("/api/v1/jobs/"), "GET /api/v1/jobs/ without a token")
    docs = client.get("/api/docs/")
    assert docs.status_code == 200
    assert_policy_headers(docs, "GET /api/docs/")
    page = docs.content.decode()
    assert not re.search(r"<script(?![^>]*\bsrc=)[^>]*>", page), "the docs page has an inline script"
    assert "<style" not in page and "style=" not in page
    script = client.get("/api/docs/?script=")
    assert script.status_code == 200 and script["Content-Type"].startswith("application/javascript")
    assert "SwaggerUIBundle(" in script.content.decode() and "/api/schema/" in script.content.decode()


@pytest.fixture(scope="module")
def collected_static(tmp_path_factory) -> Path:
    """collectstatic into a fresh STATIC_ROOT with the production storage, once for this module.

    Every file is hashed and post-processed as in production; only the compression of the large
    vendored scripts, their source maps and the fonts is skipped (brotli needs about a minute for
    them here, and it cannot fail on their content).
    """
    from django.test import override_settings
    from whitenoise.compress import Compressor

    root = tmp_path_factory.mktemp("staticfiles")
    skip = [*Compressor.SKIP_COMPRESS_EXTENSIONS, "js", "map", "ttf"]
    with override_settings(STATIC_ROOT=root, STORAGES=MANIFEST_STORAGES, WHITENOISE_SKIP_COMPRESS_EXTENSIONS=skip):
        call_command("collectstatic", "--noinput", verbosity=0)
    return root


@pytest.fixture
def production_static(settings, collected_static) -> Path:
    """DEBUG off, the manifest storage, and whitenoise serving what collectstatic wrote."""
    settings.DEBUG = False
    settings.STATIC_ROOT = collected_static
    settings.STORAGES = MANIFEST_STORAGES
    return collected_static


def test_collectstatic_succeeds_with_the_manifest_storage(production_static):
    manifest = (production_static / "staticfiles.json").read_text()
    for name in ("css/app.css", "css/records.css", "js/app.js", "js/editor.js", "vendor/htmx.min.js"):
        assert f'"{name}"' in manifest, f"{name} is not in the manifest"
    # The PDF stylesheet names its fonts as mpstatic:fonts/...: the manifest storage leaves that
    # scheme alone (it hashes only relative URLs), so the PDF fetcher still finds them.
    hashed = next(production_static.glob("css/records.*.css"))
    assert "url(mpstatic:fonts/DejaVuSans.ttf)" in hashed.read_text()
    assert list(production_static.glob("css/app.*.css.gz")), "whitenoise did not compress app.css"


def test_a_page_links_hashed_static_files_that_whitenoise_serves_with_the_headers(client, production_static):
    response = client.get("/accounts/login/")
    assert response.status_code == 200
    page = response.content.decode()
    urls = re.findall(r'(?:src|href)="(/static/[^"]+)"', page)
    assert urls, page
    for url in urls:
        assert re.search(r"\.[0-9a-f]{12}\.\w+$", url), f"{url} is not a hashed name"
    css = next(url for url in urls if url.startswith("/static/css/app."))
    served = client.get(css)
    assert served.status_code == 200 and served["Content-Type"].startswith("text/css")
    assert "immutable" in served.headers.get("Cache-Control", "")
    assert_policy_headers(served, f"GET {css}")
    assert_policy_headers(client.get("/static/js/app.js"), "GET /static/js/app.js (the unhashed name)")


# --- No inline script or style in what we serve ------------------------------------------------------

DJANGO_COMMENT = re.compile(r"\{#.*?#\}|\{% comment %\}.*?\{% endcomment %\}", re.DOTALL)
QUOTED = re.compile(r"\"[^\"]*\"|'[^']*'")
TAG = re.compile(r"<([a-zA-Z][\w:-]*)((?:[^>\"']|\"[^\"]*\"|'[^']*')*)>")
INLINE_ATTRIBUTE = re.compile(r"(?:^|\s)(style|on[a-z]+|hx-on[\w:.-]*)\s*=", re.IGNORECASE)


def inline_code(text: str) -> list[str]:
    """What in this template the Content-Security-Policy would refuse: inline scripts, <style>
    elements, style attributes, on*= handlers, htmx's hx-on (inline JS) and javascript: URLs."""
    problems = []
    text = DJANGO_COMMENT.sub(lambda m: "\n" * m.group().count("\n"), text)  # keeps line numbers
    for tag in TAG.finditer(text):
        name, attributes = tag.group(1).lower(), tag.group(2)
        line = text.count("\n", 0, tag.start()) + 1
        if name == "style":
            problems.append(f"line {line}: a <style> element")
        if name == "script":
            body = text[tag.end() : text.find("</script>", tag.end())]
            if not re.search(r"\ssrc\s*=", attributes) or body.strip():
                problems.append(f"line {line}: an inline <script>")
        for found in INLINE_ATTRIBUTE.finditer(QUOTED.sub('""', attributes)):
            problems.append(f"line {line}: a {found.group(1)}= attribute on <{name}>")
        if re.search(r"=\s*[\"']?\s*javascript:", attributes, re.IGNORECASE):
            problems.append(f"line {line}: a javascript: URL on <{name}>")
    return problems


@pytest.mark.parametrize(
    "snippet",
    [
        "<script>alert(1)</script>",
        '<script src="/static/x.js">alert(1)</script>',
        "<style>p { color: red }</style>",
        '<p style="color: red">',
        '<form method="post" onsubmit="return confirm(\'Sure?\')">',
        "<input onclick=this.select()>",
        '<div{% if x %} style="width: 1%"{% endif %}>',
        '<button hx-on:click="go()">',
        '<a href="javascript:go()">',
    ],
)
def test_the_template_scan_finds_each_kind_of_inline_code(snippet):
    assert inline_code(snippet), snippet


def test_the_template_scan_lets_scripts_from_files_and_data_attributes_pass():
    ok = """{# no <style> or <script> here: they are in app.css #}
    <script src="{% static 'js/app.js' %}" defer></script>
    <form data-confirm="Revoke? It stops at once=now." class="one" action="/online/">Turn it on=off</form>"""
    assert inline_code(ok) == []


def test_no_template_holds_inline_script_or_style():
    templates = [p for p in TEMPLATES.rglob("*.html") if PDF_TEMPLATES not in p.parents]
    assert len(templates) > 50
    problems = [f"{p.relative_to(ROOT)} {problem}" for p in templates for problem in inline_code(p.read_text())]
    assert not problems, "the Content-Security-Policy would refuse:\n" + "\n".join(problems)
