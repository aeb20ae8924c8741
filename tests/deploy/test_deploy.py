"""ModelPact as deployed: the README's production section, run on this machine, then used.

One module-scoped deployment: a fresh `DEBUG=false` environment with a real SECRET_KEY, PostgreSQL
with an owner role (migrations) and an app role (everything else), Redis as broker and cache,
`migrate` + `grant_app_role` as the owner, `collectstatic`, `check --deploy`, and every line of the
Procfile (gunicorn, the GPU-queue worker, the CPU worker, beat) started as written. The tests then
use it over HTTP and in Chromium the way people would. Run alone with `pytest -m deploy`.

TLS ends at a proxy in production; here the browser and the HTTP client send the proxy's
`X-Forwarded-Proto: https` themselves (TRUST_X_FORWARDED_PROTO=true), so the secure defaults
(SSL redirect, secure cookies, HSTS) stay on.
"""

from __future__ import annotations

import json
import os
import re
import secrets
import shlex
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import psycopg
import pytest
import redis

ROOT = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent
PASSWORD = "deploy-walk-" + secrets.token_hex(8)
OWNER, APP, DB = "mp_deploy_owner", "mp_deploy_app", "mp_deploy"
BROKER_DB, CACHE_DB = 13, 12
CHROMIUM_PATH = os.environ.get("CHROMIUM_PATH", "/usr/bin/chromium")
RSS_LIMIT_MB = 200
GPU_SOFT_LIMIT_S, GPU_HARD_LIMIT_S = 1, 60
PERSONAS = [
    "admin@lab.example",
    "legal@lab.example",
    "auditor@lab.example",
    "admin@partner-a.example",
    "signer@partner-a.example",
    "researcher@partner-a.example",
    "admin@partner-b.example",
    "signer@partner-b.example",
    "researcher@partner-b.example",
]

pytestmark = [pytest.mark.deploy, pytest.mark.worker]


def _superuser_url() -> str:
    url = os.environ.get("DATABASE_URL", "")
    if not url.startswith("postgres"):
        pytest.skip("the deploy test needs DATABASE_URL to point at PostgreSQL (make test sets it)")
    return url


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _procfile() -> dict[str, str]:
    lines = (ROOT / "Procfile").read_text().splitlines()
    return dict(line.split(": ", 1) for line in lines if line.strip() and not line.startswith("#"))


@dataclass
class Deployment:
    url: str
    env: dict[str, str]
    owner_url: str
    app_url: str
    root: Path
    processes: dict[str, subprocess.Popen] = field(default_factory=dict)

    def manage(self, *args: str, owner: bool = False, check: bool = True, **extra: str) -> subprocess.CompletedProcess:
        env = {**self.env, **extra}
        if owner:
            env["DATABASE_URL"] = self.owner_url
        result = subprocess.run(
            [sys.executable, "manage.py", *args], cwd=ROOT, env=env, capture_output=True, text=True, timeout=300
        )
        if check and result.returncode != 0:
            raise AssertionError(f"manage.py {' '.join(args)} failed:\n{result.stdout}\n{result.stderr}")
        return result

    def request(
        self,
        method: str,
        path: str,
        *,
        token: str | None = None,
        body: bytes | None = None,
        headers: dict | None = None,
    ) -> tuple[int, dict[str, str], bytes]:
        all_headers = {"X-Forwarded-Proto": "https", **(headers or {})}
        if token:
            all_headers["Authorization"] = f"Token {token}"
        req = urllib.request.Request(self.url + path, data=body, method=method, headers=all_headers)
        try:
            with urllib.request.urlopen(req, timeout=30) as response:
                return response.status, dict(response.headers), response.read()
        except urllib.error.HTTPError as error:
            return error.code, dict(error.headers), error.read()
        except (urllib.error.URLError, ConnectionError) as error:  # not listening (yet)
            return 0, {}, str(error).encode()

    def api(self, method: str, path: str, token: str, payload: Any = None, **headers: str) -> tuple[int, Any]:
        body = json.dumps(payload).encode() if payload is not None else None
        status, _, content = self.request(
            method, "/api/v1" + path, token=token, body=body, headers={"Content-Type": "application/json", **headers}
        )
        return status, json.loads(content) if content else None

    def token(self, email: str) -> str:
        return self.manage("token_create", email).stdout.strip()

    def log(self, name: str) -> str:
        return (self.root / f"{name}.log").read_text(errors="replace")


def _psql(url: str, *statements: str) -> None:
    with psycopg.connect(url, autocommit=True) as conn:
        for statement in statements:
            conn.execute(statement)


def _drop(super_url: str) -> None:
    _psql(
        super_url,
        f"SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = '{DB}'",
        f"DROP DATABASE IF EXISTS {DB}",
        f"DROP ROLE IF EXISTS {APP}",
        f"DROP ROLE IF EXISTS {OWNER}",
    )


def _wait_for(predicate, *, timeout: float, what: str, interval: float = 0.25) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}")


@pytest.fixture(scope="module")
def deployment(tmp_path_factory) -> Iterator[Deployment]:
    super_url = _superuser_url()
    parts = urlsplit(super_url)
    host, port = parts.hostname or "127.0.0.1", parts.port or 5432
    maintenance = f"postgres://{parts.username}:{parts.password}@{host}:{port}/postgres"
    owner_password, app_password = secrets.token_hex(16), secrets.token_hex(16)
    _drop(maintenance)
    # The one-off setup the README gives, as a PostgreSQL superuser.
    _psql(
        maintenance,
        f"CREATE ROLE {OWNER} LOGIN PASSWORD '{owner_password}'",
        f"CREATE ROLE {APP} LOGIN PASSWORD '{app_password}'",
        f"CREATE DATABASE {DB} OWNER {OWNER}",
    )
    for number in (BROKER_DB, CACHE_DB):
        redis.Redis(host="127.0.0.1", port=6379, db=number).flushdb()

    root = tmp_path_factory.mktemp("deploy")
    web_port = _free_port()
    url = f"http://127.0.0.1:{web_port}"
    passthrough = {"PATH", "HOME", "LANG", "LC_ALL", "TMPDIR", "HF_HUB_OFFLINE", "SSL_CERT_FILE"}
    env = {k: v for k, v in os.environ.items() if k in passthrough}
    env["PATH"] = f"{BIN}:{env.get('PATH', '/usr/bin:/bin')}"
    env.update(
        {
            "DEBUG": "false",
            "SECRET_KEY": secrets.token_urlsafe(64),
            "WATERMARK_KEY": secrets.token_urlsafe(48),
            "ALLOWED_HOSTS": "127.0.0.1,localhost",
            "CSRF_TRUSTED_ORIGINS": url,
            "TRUST_X_FORWARDED_PROTO": "true",
            "SITE_URL": url,
            "DATABASE_URL": f"postgres://{APP}:{app_password}@{host}:{port}/{DB}",
            "CELERY_BROKER_URL": f"redis://127.0.0.1:6379/{BROKER_DB}",
            "REDIS_URL": f"redis://127.0.0.1:6379/{CACHE_DB}",
            "EMAIL_URL": "console://",
            "MODELPACT_VAR_DIR": str(root / "var"),
            "RECORDS_DIR": str(root / "records"),
            "FINDINGS_DIR": str(root / "findings"),
            "RECORDS_KEY_PATH": str(root / "keys" / "seal-key.pem"),
            "RECORDS_CERT_PATH": str(root / "keys" / "seal-cert.pem"),
            "CHECKPOINTS_DIR": str(root / "checkpoints"),
            "DEMO_CHECKPOINT_TRAINING": "false",  # random demo weights: training takes minutes
            "PORT": str(web_port),
            "BIND": "127.0.0.1",
            "WEB_CONCURRENCY": "2",
            "CPU_CONCURRENCY": "1",
            # Generation's time limits, lowered so that a long batch runs past the soft one in seconds.
            "INFERENCE_SOFT_TIME_LIMIT": str(GPU_SOFT_LIMIT_S),
            "INFERENCE_TIME_LIMIT": str(GPU_HARD_LIMIT_S),
        }
    )
    deploy = Deployment(
        url=url,
        env=env,
        owner_url=f"postgres://{OWNER}:{owner_password}@{host}:{port}/{DB}",
        app_url=env["DATABASE_URL"],
        root=root,
    )
    try:
        # Each release, as the README's production section says.
        deploy.manage("migrate", "--noinput", owner=True)
        deploy.manage("grant_app_role", APP, owner=True)
        deploy.manage("collectstatic", "--noinput")
        deploy.manage("check", "--deploy", "--fail-level", "WARNING")
        deploy.manage("records_keygen")
        # Demo organisations and people to walk the pages with; refused without the explicit flag.
        refused = deploy.manage("seed_demo", check=False)
        assert refused.returncode != 0 and "DEBUG off" in refused.stderr
        deploy.manage("seed_demo", "--create-demo-logins-with-debug-off", "--password", PASSWORD)

        for name, command in _procfile().items():
            deploy.processes[name] = subprocess.Popen(
                ["bash", "-c", command],
                cwd=ROOT,
                env=env,
                stdout=(root / f"{name}.log").open("w"),
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        _wait_for(lambda: deploy.request("GET", "/healthz")[0] == 200, timeout=60, what="/healthz to answer 200")
        _wait_for(
            lambda: "ready." in deploy.log("worker-gpu") and "ready." in deploy.log("worker-cpu"),
            timeout=90,
            what="both workers to be ready",
        )
        yield deploy
    finally:
        for process in deploy.processes.values():
            if process.poll() is None:
                process.send_signal(signal.SIGTERM)  # warm shutdown: a worker finishes its task first
        for name, process in deploy.processes.items():
            try:
                process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                os.killpg(process.pid, signal.SIGKILL)
                process.wait(timeout=10)
            print(f"--- {name} log (tail) ---\n{deploy.log(name)[-3000:]}")
        _drop(maintenance)
        for number in (BROKER_DB, CACHE_DB):
            redis.Redis(host="127.0.0.1", port=6379, db=number).flushdb()


def _csp_ok(headers: dict[str, str]) -> bool:
    policy = {k.lower(): v for k, v in headers.items()}.get("content-security-policy", "")
    return "default-src 'self'" in policy and "frame-ancestors 'none'" in policy


# --- The tests, in the order a new operator would try things -------------------------------------


def test_health_static_files_and_headers(deployment: Deployment) -> None:
    status, headers, body = deployment.request("GET", "/healthz")
    assert status == 200 and json.loads(body)["status"] == "ok"
    status, headers, body = deployment.request("GET", "/accounts/login/")
    assert status == 200 and _csp_ok(headers)
    assert "permissions-policy" in {k.lower() for k in headers}
    assert "strict-transport-security" in {k.lower() for k in headers}
    # collectstatic's manifest: the page names hashed files, and whitenoise serves them with the headers.
    stylesheet = re.search(rb'href="(/static/css/app\.[0-9a-f]{12}\.css)"', body)
    assert stylesheet, "the login page links the hashed stylesheet from the manifest"
    status, headers, _ = deployment.request("GET", stylesheet.group(1).decode())
    assert status == 200 and _csp_ok(headers)
    assert "immutable" in headers.get("Cache-Control", "")
    # Without the proxy's header, plain HTTP is sent to HTTPS.
    req = urllib.request.Request(deployment.url + "/accounts/login/")
    opener = urllib.request.build_opener(type("NoRedirect", (urllib.request.HTTPRedirectHandler,), {
        "redirect_request": lambda *a, **k: None}))  # fmt: skip
    with pytest.raises(urllib.error.HTTPError) as redirect:
        opener.open(req, timeout=10)
    assert redirect.value.code == 301 and redirect.value.headers["Location"].startswith("https://")


def test_every_persona_signs_in_and_every_page_renders_with_the_policy(deployment: Deployment) -> None:
    from playwright.sync_api import sync_playwright

    from tests.browser.conftest import CHROMIUM_ARGS

    if not os.path.isfile(CHROMIUM_PATH):
        pytest.skip(f"Chromium not found at {CHROMIUM_PATH}")
    visited: dict[str, int] = {}
    violations: list[str] = []
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM_PATH, args=CHROMIUM_ARGS)
        try:
            for email in PERSONAS:
                context = browser.new_context(
                    base_url=deployment.url, extra_http_headers={"X-Forwarded-Proto": "https"}
                )
                context.set_default_timeout(20_000)
                page = context.new_page()
                page.on(
                    "console",
                    lambda message, who=email: (
                        violations.append(f"{who}: {message.text}")
                        if "Content Security Policy" in message.text or "Content-Security-Policy" in message.text
                        else None
                    ),
                )
                page.goto("/accounts/login/")
                page.get_by_label("Email").fill(email)
                page.get_by_label(re.compile(r"^Password:?$")).fill(PASSWORD)
                page.get_by_role("button", name="Sign in").click()
                page.wait_for_url(deployment.url + "/")
                links = page.eval_on_selector_all(
                    "header a[href^='/'], nav a[href^='/']", "els => els.map(e => e.getAttribute('href'))"
                )
                pages = sorted({link for link in links if not link.startswith(("/accounts/logout", "/static/"))})
                pages += ["/account/tokens/", "/verify/", "/api/docs/"]
                for path in dict.fromkeys(pages):
                    response = page.goto(path)
                    assert response is not None
                    assert response.status == 200, f"{email}: {path} answered {response.status}"
                    assert _csp_ok(response.headers), f"{email}: {path} has no content security policy"
                    visited[path] = visited.get(path, 0) + 1
                context.close()
        finally:
            browser.close()
    assert not violations, violations
    # Every persona saw its home page; staff pages were reached by the staff who have them.
    assert visited["/"] == len(PERSONAS)
    for path in ("/agreements/", "/jobs/", "/checkpoints/", "/audit/", "/records/", "/templates/"):
        assert path in visited, f"no persona's navigation led to {path}"


def test_a_partner_submits_a_job_through_the_api_and_gets_samples(deployment: Deployment) -> None:
    token = deployment.token("researcher@partner-a.example")
    status, job = deployment.api(
        "POST",
        "/jobs/",
        token,
        {"checkpoint": "gpt2", "prompt": "The partner shall label every sample", "max_new_tokens": 16,
         "num_samples": 2, "seed": 7},
        **{"Idempotency-Key": "deploy-1"},
    )  # fmt: skip
    assert status == 202, job

    def finished() -> Any:
        _, body = deployment.api("GET", f"/jobs/{job['id']}/", token)
        return body if body["status"] in {"succeeded", "failed", "cancelled"} else None

    done = _wait_for(finished, timeout=90, what="the job to finish")
    assert done["status"] == "succeeded", done
    assert len(done["samples"]) == 2 and all(sample["token_count"] > 0 for sample in done["samples"])
    assert done["samples"][0]["label"].startswith("Synthetic text generated by GPT-2")
    # Watermarked by the GPU worker with the key the web tier checks against (both read WATERMARK_KEY).
    assert done["watermark"]["applied"] and done["samples"][0]["watermark_scheme"] == "green-list-v1"
    status, check = deployment.api("POST", "/provenance/check/", "", {"text": done["samples"][0]["text"]})
    assert status == 200, check
    assert check["disclosure"] == "public" and check["watermark"]["key_id"] == done["samples"][0]["watermark_key_id"]
    # Partner B cannot see it.
    other = deployment.token("researcher@partner-b.example")
    assert deployment.api("GET", f"/jobs/{job['id']}/", other)[0] == 404


def test_an_agreement_is_signed_countersigned_and_its_record_seals(deployment: Deployment) -> None:
    from playwright.sync_api import expect, sync_playwright

    from tests.browser.conftest import CHROMIUM_ARGS

    if not os.path.isfile(CHROMIUM_PATH):
        pytest.skip(f"Chromium not found at {CHROMIUM_PATH}")
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM_PATH, args=CHROMIUM_ARGS)
        try:
            for email, button in (
                ("signer@partner-b.example", "Sign for Partner B"),
                ("legal@lab.example", "Countersign for the lab"),
            ):
                context = browser.new_context(
                    base_url=deployment.url, extra_http_headers={"X-Forwarded-Proto": "https"}
                )
                context.set_default_timeout(20_000)
                page = context.new_page()
                page.goto("/accounts/login/")
                page.get_by_label("Email").fill(email)
                page.get_by_label(re.compile(r"^Password:?$")).fill(PASSWORD)
                page.get_by_role("button", name="Sign in").click()
                page.wait_for_url(deployment.url + "/")
                page.get_by_role("link", name=re.compile("Review and sign|Countersign")).first.click()
                expect(page).to_have_url(re.compile(r"/agreements/\d+/sign/$"))
                if page.get_by_role("link", name="Use your password").count():
                    page.get_by_role("link", name="Use your password").click()
                    page.get_by_placeholder("Password").fill(PASSWORD)
                    page.get_by_role("button", name="Confirm").click()
                    expect(page).to_have_url(re.compile(r"/agreements/\d+/sign/$"))
                page.get_by_label(re.compile("agree to sign electronically")).check()
                page.get_by_label("Full name").fill("Deploy Walker")
                page.get_by_label("Title").fill("Director")
                page.get_by_role("button", name=button).click()
                expect(page.locator(".messages")).to_contain_text(re.compile("signed|active", re.IGNORECASE))
                agreement_id = int(re.search(r"/agreements/(\d+)/", page.url).group(1))
                context.close()
        finally:
            browser.close()

    legal = deployment.token("legal@lab.example")
    _, agreement = deployment.api("GET", f"/agreements/{agreement_id}/", legal)
    assert agreement["status"] == "active", agreement

    def sealed() -> bytes | None:
        status, _, body = deployment.request("GET", f"/api/v1/agreements/{agreement_id}/pdf/", token=legal)
        return body if status == 200 and body.startswith(b"%PDF") else None

    pdf = _wait_for(sealed, timeout=90, what="the CPU worker to seal the agreement's record")
    boundary = secrets.token_hex(8)
    form = (
        (
            f'--{boundary}\r\nContent-Disposition: form-data; name="file"; filename="record.pdf"\r\n'
            "Content-Type: application/pdf\r\n\r\n"
        ).encode()
        + pdf
        + f"\r\n--{boundary}--\r\n".encode()
    )
    status, _, verdict = deployment.request(
        "POST", "/api/v1/records/verify/", token=legal, body=form,
        headers={"Content-Type": f"multipart/form-data; boundary={boundary}"},
    )  # fmt: skip
    assert status == 200 and json.loads(verdict)["ok"] is True, verdict


def test_the_audit_chain_verifies_and_the_app_role_cannot_rewrite_it(deployment: Deployment) -> None:
    deployment.manage("audit_verify")  # exit 0: the chain is intact
    with psycopg.connect(deployment.app_url, autocommit=True) as conn:
        count = conn.execute("SELECT count(*) FROM audit_auditevent").fetchone()[0]
        assert count > 10
        for statement in (
            "TRUNCATE audit_auditevent",
            "UPDATE audit_auditevent SET data = '{}'::jsonb WHERE seq = 1",
            "DELETE FROM audit_auditevent WHERE seq = 1",
            "UPDATE audit_chainhead SET seq = 1",
            "ALTER TABLE audit_auditevent DISABLE TRIGGER ALL",
        ):
            with pytest.raises(psycopg.Error) as refused:
                conn.execute(statement)
            assert isinstance(refused.value, psycopg.errors.InsufficientPrivilege), statement
        assert conn.execute("SELECT count(*) FROM audit_auditevent").fetchone()[0] == count
    assert deployment.manage("audit_verify").returncode == 0


def test_a_job_past_the_soft_time_limit_fails_clearly_and_the_gpu_worker_goes_on(deployment: Deployment) -> None:
    token = deployment.token("researcher@partner-a.example")
    # Greedy (no early end of text), 4 jobs of 8 rows of 500 tokens after a long prompt, which the
    # worker claims as one batch of 32 rows: several times the lowered soft limit on this machine,
    # while the other jobs here take a fraction of a second.
    params = {"checkpoint": "gpt2-medium", "prompt": "A long one. " * 100, "max_new_tokens": 500, "num_samples": 8,
              "temperature": 0}  # fmt: skip
    long_jobs = []
    for _ in range(4):
        status, job = deployment.api("POST", "/jobs/", token, params)
        assert status == 202, job
        long_jobs.append(job)

    def finished(job_id: int):
        def check() -> Any:
            _, body = deployment.api("GET", f"/jobs/{job_id}/", token)
            return body if body["status"] in {"succeeded", "failed", "cancelled"} else None

        return check

    for job in long_jobs:
        failed = _wait_for(finished(job["id"]), timeout=GPU_HARD_LIMIT_S, what="the long jobs to stop")
        assert failed["status"] == "failed", failed
        assert failed["error"]["code"] == "time_limit", failed
        assert "time limit" in failed["error"]["message"]
    status, short_job = deployment.api(
        "POST", "/jobs/", token, {"checkpoint": "gpt2", "prompt": "Next", "max_new_tokens": 4}
    )
    assert status == 202
    after = _wait_for(finished(short_job["id"]), timeout=60, what="the next job")
    assert after["status"] == "succeeded", "the worker went on serving after the soft limit fired"
    assert "Soft time limit (1s) exceeded" in deployment.log("worker-gpu")


def _rss_mb(pid: int) -> float:
    status = Path(f"/proc/{pid}/status").read_text()
    return int(re.search(r"VmRSS:\s+(\d+) kB", status).group(1)) / 1024


def _gunicorn_workers(session_leader: int) -> list[int]:
    """The worker processes of the gunicorn master started in this session."""
    parents: dict[int, int] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode()
            fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if "gunicorn" in cmdline and int(fields[3]) == session_leader:
            parents[int(entry.name)] = int(fields[1])
    masters = {pid for pid, parent in parents.items() if parent not in parents}
    return [pid for pid, parent in parents.items() if parent in masters]


def test_web_workers_stay_small_and_never_load_torch(deployment: Deployment) -> None:
    # Runs last: the other tests served every page, job submissions and a PDF verification.
    token = deployment.token("researcher@partner-a.example")
    for n in range(20):
        deployment.api("POST", "/jobs/", token, {"checkpoint": "gpt2", "prompt": f"Prompt {n}", "max_new_tokens": 2})
        deployment.request("GET", "/jobs/", token=token)
    workers = _gunicorn_workers(deployment.processes["web"].pid)
    assert len(workers) == 2, f"expected two gunicorn workers, found {workers}"
    for pid in workers:
        maps = Path(f"/proc/{pid}/maps").read_text()
        assert "libtorch" not in maps, "a web worker loaded torch"
        assert _rss_mb(pid) <= RSS_LIMIT_MB, f"web worker {pid} uses {_rss_mb(pid):.0f} MB"
    print("web worker RSS (MB):", [round(_rss_mb(pid)) for pid in workers], shlex.join(["pids", *map(str, workers)]))
