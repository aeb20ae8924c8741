"""ModelPact settings: one file, driven by the environment.

Defaults serve a one-machine run (`make run`: SQLite and the filesystem broker
under var/). Production values come from the environment; see the README's
settings table. Every variable is parsed strictly by config.env.
"""

from __future__ import annotations

import hashlib
import hmac
import re
import secrets
from datetime import timedelta
from pathlib import Path

import dj_database_url
import django_stubs_ext
from django.core.exceptions import ImproperlyConfigured

from config.env import (
    env_bool,
    env_float,
    env_int,
    env_list,
    env_str,
    env_url,
    parse_email_url,
)

# Lets generic Django classes be subscripted at runtime, as in admin.ModelAdmin[AuditEvent].
django_stubs_ext.monkeypatch()

BASE_DIR = Path(__file__).resolve().parent.parent
VAR_DIR = Path(env_str("MODELPACT_VAR_DIR", str(BASE_DIR / "var"))).resolve()
VAR_DIR.mkdir(parents=True, exist_ok=True)

DEBUG = env_bool("DEBUG", True)


def _secret_key() -> str:
    configured = env_str("SECRET_KEY")
    if configured:
        if not DEBUG and len(configured) < 50:
            raise ImproperlyConfigured("SECRET_KEY must be at least 50 characters when DEBUG is off.")
        return configured
    if not DEBUG:
        raise ImproperlyConfigured("SECRET_KEY is required when DEBUG is off.")
    # Development: generate once so sessions survive restarts.
    path = VAR_DIR / "secret_key"
    if not path.exists():
        path.write_text(secrets.token_urlsafe(64))
        path.chmod(0o600)
    return path.read_text().strip()


SECRET_KEY = _secret_key()
ALLOWED_HOSTS = env_list("ALLOWED_HOSTS", ["127.0.0.1", "localhost", "[::1]"] if DEBUG else [])
CSRF_TRUSTED_ORIGINS = env_list("CSRF_TRUSTED_ORIGINS", [])

INSTALLED_APPS = [
    "django.contrib.admin",
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.messages",
    "django.contrib.staticfiles",
    "django.contrib.humanize",
    "allauth",
    "allauth.account",
    "allauth.mfa",
    "django_htmx",
    "rest_framework",
    "knox",
    "django_filters",
    "drf_spectacular",
    "drf_spectacular_sidecar",
    "core",
    "accounts",
    "audit",
    "agreements",
    "models_registry",
    "inference",
    "research",
    "records",
    "portal",
    "webhooks",
]

MIDDLEWARE = [
    "django.middleware.security.SecurityMiddleware",
    # Above whitenoise: the static files it answers carry the same policy headers as the pages.
    "csp.middleware.CSPMiddleware",
    "core.middleware.PermissionsPolicyMiddleware",
    "whitenoise.middleware.WhiteNoiseMiddleware",
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    "django.contrib.messages.middleware.MessageMiddleware",
    "django.middleware.clickjacking.XFrameOptionsMiddleware",
    "allauth.account.middleware.AccountMiddleware",
    "django_htmx.middleware.HtmxMiddleware",
    "audit.middleware.AuditContextMiddleware",
]

ROOT_URLCONF = "config.urls"
WSGI_APPLICATION = "config.wsgi.application"

TEMPLATES = [
    {
        "BACKEND": "django.template.backends.django.DjangoTemplates",
        "DIRS": [BASE_DIR / "templates"],
        "APP_DIRS": True,
        "OPTIONS": {
            "context_processors": [
                "django.template.context_processors.request",
                "django.contrib.auth.context_processors.auth",
                "django.contrib.messages.context_processors.messages",
                "portal.context_processors.navigation",
            ],
            # `sentence` (core/templatetags/text.py) in every template, as the built-in filters are.
            "builtins": ["core.templatetags.text"],
        },
    },
]

# --- Database -------------------------------------------------------------
_database_url = env_url(
    "DATABASE_URL",
    f"sqlite:///{VAR_DIR / 'modelpact.sqlite3'}",
    schemes={"sqlite", "postgres", "postgresql", "pgsql"},
)
try:
    _default_db = dj_database_url.parse(_database_url, conn_max_age=60, conn_health_checks=True)
except ValueError as exc:
    raise ImproperlyConfigured(f"DATABASE_URL is not a valid database URL: {exc}") from None
if _default_db["ENGINE"] == "django.db.backends.sqlite3":
    _default_db["CONN_MAX_AGE"] = 0
    _default_db["OPTIONS"] = {
        # IMMEDIATE takes the write lock at BEGIN, so the web process, the worker
        # and beat queue up instead of failing with "database is locked".
        "transaction_mode": "IMMEDIATE",
        "timeout": 20,
        "init_command": "PRAGMA journal_mode=WAL; PRAGMA synchronous=NORMAL;",
    }
DATABASES = {"default": _default_db}
DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"

# --- Database roles (PostgreSQL) ------------------------------------------
# Migrations run as the owner role (DATABASE_URL names it at `migrate` time); the app connects as
# DATABASE_APP_ROLE, which may only read and append the audit tables. When set, `migrate` grants
# that role its privileges itself (`manage.py grant_app_role ROLE` does the same by hand).
DATABASE_APP_ROLE = env_str("DATABASE_APP_ROLE", "") or ""
if DATABASE_APP_ROLE:
    if not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_$]{0,62}", DATABASE_APP_ROLE):
        raise ImproperlyConfigured(f"DATABASE_APP_ROLE must be a PostgreSQL role name; got {DATABASE_APP_ROLE!r}.")
    if "postgresql" not in _default_db["ENGINE"]:
        raise ImproperlyConfigured("DATABASE_APP_ROLE needs PostgreSQL; SQLite has no roles (unset it).")
# --- end of database roles ------------------------------------------------

# --- Cache ----------------------------------------------------------------
REDIS_URL = env_str("REDIS_URL")
if REDIS_URL:
    env_url("REDIS_URL", REDIS_URL, schemes={"redis", "rediss", "unix"})
    CACHES = {
        "default": {
            "BACKEND": "django.core.cache.backends.redis.RedisCache",
            "LOCATION": REDIS_URL,
            "KEY_PREFIX": env_str("CACHE_KEY_PREFIX", "modelpact"),
        }
    }
else:
    CACHES = {"default": {"BACKEND": "django.core.cache.backends.locmem.LocMemCache"}}

# --- Auth -----------------------------------------------------------------
AUTH_USER_MODEL = "accounts.User"
AUTHENTICATION_BACKENDS = [
    "django.contrib.auth.backends.ModelBackend",
    "allauth.account.auth_backends.AuthenticationBackend",
]
AUTH_PASSWORD_VALIDATORS = [
    {"NAME": "django.contrib.auth.password_validation.UserAttributeSimilarityValidator"},
    {"NAME": "django.contrib.auth.password_validation.MinimumLengthValidator", "OPTIONS": {"min_length": 10}},
    {"NAME": "django.contrib.auth.password_validation.CommonPasswordValidator"},
    {"NAME": "django.contrib.auth.password_validation.NumericPasswordValidator"},
]
LOGIN_URL = "account_login"
LOGIN_REDIRECT_URL = "home"
ACCOUNT_ADAPTER = "accounts.adapters.InviteOnlyAccountAdapter"
ACCOUNT_LOGIN_METHODS = {"email"}
ACCOUNT_SIGNUP_FIELDS = ["email*", "password1*", "password2*"]
ACCOUNT_USER_MODEL_USERNAME_FIELD = None
ACCOUNT_EMAIL_VERIFICATION = "none"
ACCOUNT_UNIQUE_EMAIL = True
ACCOUNT_LOGOUT_REDIRECT_URL = "account_login"
ACCOUNT_SESSION_REMEMBER = None
# Five wrong passwords within five minutes are allowed; the sixth attempt is
# refused, even with the right password, until the window has passed.
_login_attempts = env_int("LOGIN_ATTEMPTS_LIMIT", 5, minimum=1)
_login_window = env_int("LOGIN_ATTEMPTS_TIMEOUT", 300, minimum=1)
ACCOUNT_RATE_LIMITS = {"login_failed": f"20/m/ip,{_login_attempts}/{_login_window}s/key"}
ACCOUNT_REAUTHENTICATION_TIMEOUT = 300
MFA_SUPPORTED_TYPES = ["totp", "recovery_codes"]
MFA_TOTP_ISSUER = "ModelPact"
INVITATION_TTL_DAYS = env_int("INVITATION_TTL_DAYS", 7, minimum=1)

# --- Agreements -----------------------------------------------------------
AGREEMENT_REMINDER_DAYS = env_int("AGREEMENT_REMINDER_DAYS", 3, minimum=1)
AGREEMENT_SIGNATURE_DAYS = env_int("AGREEMENT_SIGNATURE_DAYS", 30, minimum=1)
# Partners are reminded of an obligation this many days before it is due (and again on the day it lapses).
OBLIGATION_REMINDER_DAYS = env_int("OBLIGATION_REMINDER_DAYS", 7, minimum=1)

# --- Research: findings' attachments ---------------------------------------
# PDFs attached to findings. Like RECORDS_DIR, every web host must see the same folder.
FINDINGS_DIR = Path(env_str("FINDINGS_DIR", str(VAR_DIR / "findings"))).resolve()
FINDING_ATTACHMENT_MAX_BYTES = 20 * 1024 * 1024

# --- Sealed records -------------------------------------------------------
# The lab's sealing key and certificate (PEM). `manage.py records_keygen` makes a development pair
# at the defaults; production points these at its own, and sealing refuses to run without them.
# RECORDS_DIR holds the sealed files: web and worker hosts must share it (one host, or a shared mount).
RECORDS_DIR = Path(env_str("RECORDS_DIR", str(VAR_DIR / "records"))).resolve()
RECORDS_KEY_PATH = Path(env_str("RECORDS_KEY_PATH", str(RECORDS_DIR / "dev-seal-key.pem"))).resolve()
RECORDS_CERT_PATH = Path(env_str("RECORDS_CERT_PATH", str(RECORDS_DIR / "dev-seal-cert.pem"))).resolve()
# An RFC 3161 timestamp server: seals become PAdES B-T instead of B-B.
RECORDS_TSA_URL = env_str("RECORDS_TSA_URL", "") or ""
if RECORDS_TSA_URL:
    env_url("RECORDS_TSA_URL", RECORDS_TSA_URL, schemes={"http", "https"})
RECORDS_RENDER_TIMEOUT = env_float("RECORDS_RENDER_TIMEOUT", 120.0, minimum=1)

# --- Email ----------------------------------------------------------------
globals().update(parse_email_url("EMAIL_URL", env_str("EMAIL_URL", "console://") or "console://"))
DEFAULT_FROM_EMAIL = env_str("DEFAULT_FROM_EMAIL", "ModelPact <no-reply@modelpact.localhost>")
SITE_URL = env_url("SITE_URL", "http://127.0.0.1:8000", schemes={"http", "https"}).rstrip("/")

# --- Internationalisation -------------------------------------------------
LANGUAGE_CODE = "en-gb"
TIME_ZONE = "UTC"
USE_I18N = True
USE_TZ = True

# --- Static files ---------------------------------------------------------
STATIC_URL = "static/"
STATICFILES_DIRS = [BASE_DIR / "static"]
STATIC_ROOT = VAR_DIR / "staticfiles"
STATIC_ROOT.mkdir(exist_ok=True)
STORAGES = {
    "default": {"BACKEND": "django.core.files.storage.FileSystemStorage"},
    "staticfiles": {
        "BACKEND": (
            "django.contrib.staticfiles.storage.StaticFilesStorage"
            if DEBUG
            else "whitenoise.storage.CompressedManifestStaticFilesStorage"
        )
    },
}
MEDIA_ROOT = VAR_DIR / "media"

# --- Model weights --------------------------------------------------------
# Where checkpoint_demo builds the tiny demo checkpoints (one folder per slug). Real weights are
# registered from wherever checkpoint_import is pointed; workers must see the same paths.
CHECKPOINTS_DIR = Path(env_str("CHECKPOINTS_DIR", str(VAR_DIR / "checkpoints"))).resolve()
# Train the demo checkpoints briefly on English text (about two minutes, once) so samples read like
# poor English; off, they keep random weights and build in seconds.
DEMO_CHECKPOINT_TRAINING = env_bool("DEMO_CHECKPOINT_TRAINING", True)

# --- Security (production values pass `manage.py check --deploy`) --------
SESSION_COOKIE_HTTPONLY = True
SESSION_COOKIE_SAMESITE = "Lax"
X_FRAME_OPTIONS = "DENY"
SECURE_CONTENT_TYPE_NOSNIFF = True
SECURE_REFERRER_POLICY = "same-origin"
if not DEBUG:
    SESSION_COOKIE_SECURE = env_bool("SESSION_COOKIE_SECURE", True)
    CSRF_COOKIE_SECURE = env_bool("CSRF_COOKIE_SECURE", True)
    SECURE_SSL_REDIRECT = env_bool("SECURE_SSL_REDIRECT", True)
    SECURE_REDIRECT_EXEMPT = [r"^healthz$"]
    SECURE_HSTS_SECONDS = env_int("SECURE_HSTS_SECONDS", 31_536_000, minimum=0)
    SECURE_HSTS_INCLUDE_SUBDOMAINS = env_bool("SECURE_HSTS_INCLUDE_SUBDOMAINS", True)
    SECURE_HSTS_PRELOAD = env_bool("SECURE_HSTS_PRELOAD", True)
    if env_bool("TRUST_X_FORWARDED_PROTO", False):
        SECURE_PROXY_SSL_HEADER = ("HTTP_X_FORWARDED_PROTO", "https")

# --- Content Security Policy ----------------------------------------------
# Pages load scripts and styles only from our own static files: templates hold no inline <script>,
# <style>, style="..." or on*="..." handlers (tests/config/test_security_headers.py scans them), so
# neither script-src nor style-src allows 'unsafe-inline'. Images may also be data: URIs, for the
# two-factor QR code (allauth) and Swagger UI's icons at /api/docs/; a data: image runs no code.
CONTENT_SECURITY_POLICY = {
    "DIRECTIVES": {
        "default-src": ["'self'"],
        "script-src": ["'self'"],
        "style-src": ["'self'"],
        "img-src": ["'self'", "data:"],
        "object-src": ["'none'"],
        "base-uri": ["'self'"],
        "form-action": ["'self'"],
        "frame-ancestors": ["'none'"],
    },
}
# --- End of Content Security Policy ---------------------------------------

# --- Celery ---------------------------------------------------------------
CELERY_BROKER_URL = env_url(
    "CELERY_BROKER_URL",
    "filesystem://",
    schemes={"filesystem", "redis", "rediss", "amqp", "memory"},
)
CELERY_TASK_SOFT_TIME_LIMIT = env_int("CELERY_TASK_SOFT_TIME_LIMIT", 540, minimum=1)
CELERY_TASK_TIME_LIMIT = env_int("CELERY_TASK_TIME_LIMIT", 600, minimum=2)
if CELERY_TASK_TIME_LIMIT <= CELERY_TASK_SOFT_TIME_LIMIT:
    raise ImproperlyConfigured("CELERY_TASK_TIME_LIMIT must be above CELERY_TASK_SOFT_TIME_LIMIT.")
if CELERY_BROKER_URL.startswith("filesystem"):
    _broker_dir = VAR_DIR / "broker"
    for _sub in ("queue", "processed", "control"):
        (_broker_dir / _sub).mkdir(parents=True, exist_ok=True)
    CELERY_BROKER_TRANSPORT_OPTIONS = {
        "data_folder_in": str(_broker_dir / "queue"),
        "data_folder_out": str(_broker_dir / "queue"),
        "processed_folder": str(_broker_dir / "processed"),
        # Broadcast/exchange files; kombu's default is "control" under the current directory.
        "control_folder": str(_broker_dir / "control"),
        "store_processed": False,
        # The default 1 s poll adds about a second to every task.
        "polling_interval": env_float("CELERY_BROKER_POLLING_INTERVAL", 0.05, minimum=0.01),
    }
else:
    # Redis redelivers an unacknowledged message after the visibility timeout;
    # it must exceed the longest job or a running job would be handed out twice.
    CELERY_BROKER_TRANSPORT_OPTIONS = {"visibility_timeout": CELERY_TASK_TIME_LIMIT + 300}
CELERY_TASK_IGNORE_RESULT = True
CELERY_TASK_ACKS_LATE = True
CELERY_TASK_REJECT_ON_WORKER_LOST = True
CELERY_WORKER_PREFETCH_MULTIPLIER = 1
CELERY_TASK_DEFAULT_QUEUE = "default"
CELERY_BROKER_CONNECTION_RETRY_ON_STARTUP = True
# Sending a task retries once, at once. A broker that is down then fails the send in well under a
# second instead of holding the web request; job submission catches that and the sweeper sends the
# job later (inference.services.enqueue_job). Measured against a closed port: about 0.07 s, where
# Celery's default policy takes 0.6 s and apply_async(retry=False) 6 s (kombu's connection retries).
CELERY_TASK_PUBLISH_RETRY_POLICY = {"max_retries": 1, "interval_start": 0, "interval_step": 0.2, "interval_max": 0.2}
CELERY_TASK_ALWAYS_EAGER = env_bool("CELERY_TASK_ALWAYS_EAGER", False)
CELERY_BEAT_SCHEDULE_FILENAME = str(VAR_DIR / "celerybeat-schedule")


# --- Generation -----------------------------------------------------------
def _queue_routes(name: str) -> dict[str, str]:
    """INFERENCE_CHECKPOINT_QUEUES="gpt2-xl=gpu-big,gpt2-large=gpu-big" routes checkpoints to queues."""
    routes = {}
    for item in env_list(name, []):
        slug, sep, queue = item.partition("=")
        if not sep or not slug.strip() or not queue.strip():
            raise ImproperlyConfigured(f"{name} entries look like slug=queue; got {item!r}.")
        routes[slug.strip()] = queue.strip()
    return routes


INFERENCE_DEFAULT_QUEUE = env_str("INFERENCE_DEFAULT_QUEUE", "gpu")
INFERENCE_CHECKPOINT_QUEUES = _queue_routes("INFERENCE_CHECKPOINT_QUEUES")
INFERENCE_BATCH_MAX_JOBS = env_int("INFERENCE_BATCH_MAX_JOBS", 8, minimum=1, maximum=128)
INFERENCE_BATCH_MAX_ROWS = env_int("INFERENCE_BATCH_MAX_ROWS", 32, minimum=1, maximum=1024)
INFERENCE_MAX_ATTEMPTS = env_int("INFERENCE_MAX_ATTEMPTS", 3, minimum=1)
INFERENCE_LEASE_SECONDS = env_int("INFERENCE_LEASE_SECONDS", 60, minimum=2)
INFERENCE_REQUEUE_AFTER_SECONDS = env_int("INFERENCE_REQUEUE_AFTER_SECONDS", 300, minimum=5)
INFERENCE_PROGRESS_INTERVAL = env_float("INFERENCE_PROGRESS_INTERVAL", 0.5, minimum=0.05)
# Continuous batching: a running batch takes in queued jobs of its checkpoint as rows free up, woken by
# each submission (Redis pub/sub) and looking at the queue every INFERENCE_JOIN_POLL_INTERVAL seconds
# in case a signal was lost. Off, each task runs the batch it claimed to the end.
INFERENCE_CONTINUOUS_BATCHING = env_bool("INFERENCE_CONTINUOUS_BATCHING", True)
INFERENCE_JOIN_POLL_INTERVAL = env_float("INFERENCE_JOIN_POLL_INTERVAL", 1.0, minimum=0.0)
# Which queued jobs of a checkpoint a batch takes first: the longest (most new tokens), so that its
# last steps decode several rows rather than one long job alone, unless a job has been queued for
# INFERENCE_LONGEST_FIRST_SECONDS: those go first, oldest first. 0 takes every job oldest first.
INFERENCE_LONGEST_FIRST_SECONDS = env_float("INFERENCE_LONGEST_FIRST_SECONDS", 5.0, minimum=0.0)
INFERENCE_MODEL_CACHE_MB = env_int("INFERENCE_MODEL_CACHE_MB", 8192, minimum=1)
INFERENCE_DEVICE = env_str("INFERENCE_DEVICE", "")
# Checkpoints (slugs) a CUDA worker loads and captures decode graphs for when it starts.
INFERENCE_WARM_CHECKPOINTS = env_list("INFERENCE_WARM_CHECKPOINTS", [])
# torch CPU threads per worker process; 0 keeps torch's default (one per core).
INFERENCE_TORCH_THREADS = env_int("INFERENCE_TORCH_THREADS", 1, minimum=0, maximum=256)
# Time limits of a generation task (one running batch). The web tier and the sweeper send them with each
# job and the GPU worker enforces them (prefork pool): a batch takes in new jobs for half the soft limit
# only, and past the soft limit the batch's jobs fail clearly.
INFERENCE_SOFT_TIME_LIMIT = env_int("INFERENCE_SOFT_TIME_LIMIT", CELERY_TASK_SOFT_TIME_LIMIT, minimum=1)
INFERENCE_TIME_LIMIT = env_int("INFERENCE_TIME_LIMIT", CELERY_TASK_TIME_LIMIT, minimum=2)
if INFERENCE_TIME_LIMIT <= INFERENCE_SOFT_TIME_LIMIT:
    raise ImproperlyConfigured("INFERENCE_TIME_LIMIT must be above INFERENCE_SOFT_TIME_LIMIT.")
if "visibility_timeout" in CELERY_BROKER_TRANSPORT_OPTIONS:
    CELERY_BROKER_TRANSPORT_OPTIONS["visibility_timeout"] = max(CELERY_TASK_TIME_LIMIT, INFERENCE_TIME_LIMIT) + 300
INFERENCE_SWEEP_SECONDS = env_float("INFERENCE_SWEEP_SECONDS", 30.0, minimum=1)


# --- Provenance -----------------------------------------------------------
def _watermark_key() -> str:
    configured = env_str("WATERMARK_KEY")
    if configured:
        if len(configured) < 32:
            raise ImproperlyConfigured("WATERMARK_KEY must be at least 32 characters (a lab secret, never shared).")
        return configured
    if not DEBUG:
        raise ImproperlyConfigured("WATERMARK_KEY is required when DEBUG is off: every sample is watermarked with it.")
    # Development: derived from SECRET_KEY, so it stays the same across restarts of one install.
    return hmac.new(SECRET_KEY.encode(), b"modelpact watermark key", hashlib.sha256).hexdigest()


# The lab secret that watermarks every sampled token; the engine and the detector need it, the
# database and the logs never see it (samples store a key id, a hash of it). After a rotation, keep
# the old keys in WATERMARK_PREVIOUS_KEYS so texts generated before still test as watermarked.
WATERMARK_KEY = _watermark_key()
WATERMARK_PREVIOUS_KEYS = env_list("WATERMARK_PREVIOUS_KEYS", [])


# --- Webhooks -------------------------------------------------------------
# Receivers must be public addresses: a URL that resolves to loopback, private, link-local or cloud
# metadata addresses is refused at registration and at every send. True only for development and tests.
WEBHOOKS_ALLOW_PRIVATE_TARGETS = env_bool("WEBHOOKS_ALLOW_PRIVATE_TARGETS", False)
WEBHOOKS_TIMEOUT_SECONDS = env_float("WEBHOOKS_TIMEOUT_SECONDS", 10.0, minimum=1)
WEBHOOKS_RETRY_BASE_SECONDS = env_int("WEBHOOKS_RETRY_BASE_SECONDS", 10, minimum=1, maximum=3600)
WEBHOOKS_RETRY_HOURS = env_int("WEBHOOKS_RETRY_HOURS", 24, minimum=1, maximum=168)
WEBHOOKS_DISABLE_AFTER_DAYS = env_int("WEBHOOKS_DISABLE_AFTER_DAYS", 5, minimum=1, maximum=90)
WEBHOOKS_SWEEP_SECONDS = env_float("WEBHOOKS_SWEEP_SECONDS", 15.0, minimum=1)


# --- Partner REST API (/api/v1/) ------------------------------------------
def _throttle_rate(name: str, default: str) -> str:
    """DRF rates look like 600/min: a count, a slash, and s, min, hour or day (first letter counts)."""
    rate = env_str(name, default) or default
    count, _, period = rate.partition("/")
    if not count.isdigit() or int(count) < 1 or period[:1] not in {"s", "m", "h", "d"}:
        raise ImproperlyConfigured(f"{name} looks like 600/min (a count per s, min, hour or day); got {rate!r}.")
    return rate


REST_FRAMEWORK = {
    "DEFAULT_AUTHENTICATION_CLASSES": [
        "accounts.api.TokenAuthentication",  # knox's, leaner; first, so no token answers 401 + WWW-Authenticate
        "rest_framework.authentication.SessionAuthentication",  # the browser; enforces CSRF
    ],
    "DEFAULT_PERMISSION_CLASSES": ["rest_framework.permissions.IsAuthenticated"],
    "DEFAULT_RENDERER_CLASSES": ["rest_framework.renderers.JSONRenderer"],
    "DEFAULT_PARSER_CLASSES": ["core.api.JSONParser"],  # DRF's, refusing nesting deeper than 32 levels
    "DEFAULT_PAGINATION_CLASS": "core.api.Pagination",
    "DEFAULT_FILTER_BACKENDS": ["core.api.FilterBackend"],  # django-filter's
    "DEFAULT_THROTTLE_CLASSES": ["core.api.TokenRateThrottle"],
    "DEFAULT_THROTTLE_RATES": {
        "api": _throttle_rate("API_THROTTLE_RATE", "600/min"),
        # Anonymous provenance checks (the public page and the API), per IP address.
        "provenance_anon": _throttle_rate("PROVENANCE_ANON_RATE", "30/min"),
    },
    "EXCEPTION_HANDLER": "core.api.exception_handler",
    "DEFAULT_SCHEMA_CLASS": "core.api_schema.ApiAutoSchema",
    "DATETIME_FORMAT": "iso-8601",
    "COERCE_DECIMAL_TO_STRING": False,
}
REST_KNOX = {
    # Tokens are stored as SHA-512 digests (knox's default), shown once, and expire.
    "TOKEN_TTL": timedelta(days=env_int("API_TOKEN_TTL_DAYS", 90, minimum=1, maximum=3650)),
    "AUTH_HEADER_PREFIX": "Token",
    "TOKEN_PREFIX": "mp_",  # recognisable in leaked logs and by secret scanners
    "AUTO_REFRESH": False,
}
SPECTACULAR_SETTINGS = {
    "TITLE": "ModelPact Partner API",
    "DESCRIPTION": (
        "Checkpoints, agreements, grants, access requests and generation jobs for partner organisations; "
        "the audit log for the lab. Authenticate with `Authorization: Token <key>` (create keys on the "
        "API tokens page). Errors always look like "
        '`{"error": {"code": "...", "message": "...", "details": {...}}}`.'
    ),
    "VERSION": "1.0.0",
    "SCHEMA_PATH_PREFIX": r"/api/v1",
    "COMPONENT_SPLIT_REQUEST": True,
    "SERVE_INCLUDE_SCHEMA": False,
    "SWAGGER_UI_DIST": "SIDECAR",  # served from our static files: the docs work offline
    "SWAGGER_UI_FAVICON_HREF": "SIDECAR",
    "ENUM_NAME_OVERRIDES": {
        "JobStatusEnum": "inference.models.GenerationJob.Status",
        "AgreementStatusEnum": "agreements.models.Agreement.Status",
        "AccessRequestStatusEnum": "agreements.models.AccessRequest.Status",
        "CheckpointStatusEnum": "models_registry.models.Checkpoint.Status",
        "WebhookStatusEnum": "webhooks.models.WebhookEndpoint.Status",
        "DeliveryStatusEnum": "webhooks.models.Delivery.Status",
        "FindingStatusEnum": "research.models.Finding.Status",
        "IncidentStatusEnum": "research.models.Incident.Status",
    },
}

# --- Logging --------------------------------------------------------------
LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "formatters": {"plain": {"format": "%(asctime)s %(levelname)s %(name)s %(message)s"}},
    "filters": {"refusals_without_traceback": {"()": "core.log.RefusalsWithoutTraceback"}},
    "handlers": {"console": {"class": "logging.StreamHandler", "formatter": "plain"}},
    "root": {"handlers": ["console"], "level": env_str("LOG_LEVEL", "INFO")},
    "loggers": {
        # Django's own console handler would print every django.* line a second time with DEBUG on.
        "django": {"handlers": [], "level": "INFO", "propagate": True},
        "django.request": {"filters": ["refusals_without_traceback"], "propagate": True},
    },
}

CELERY_BEAT_SCHEDULE = {
    # Expiry is also checked at every use; this sweep makes the revocation visible and audited.
    "revoke-expired-grants": {"task": "agreements.tasks.revoke_expired_grants", "schedule": 3600.0},
    "expire-agreements": {"task": "agreements.tasks.expire_agreements", "schedule": 3600.0},
    "remind-signatories": {"task": "agreements.tasks.remind_signatories", "schedule": 3600.0},
    "check-obligations": {"task": "agreements.tasks.check_obligations", "schedule": 900.0},
    "sweep-jobs": {"task": "inference.tasks.sweep_jobs", "schedule": INFERENCE_SWEEP_SECONDS},
    # Webhook retries (exponential backoff) and what a broker outage kept back; failing endpoints disabled.
    "sweep-webhook-deliveries": {
        "task": "webhooks.tasks.sweep_deliveries",
        "schedule": WEBHOOKS_SWEEP_SECONDS,
        "options": {"queue": "default"},
    },
    # Signed chain-head checkpoints outside the database; audit_verify checks the rows against them.
    "audit-chain-checkpoint": {
        "task": "audit.tasks.write_chain_checkpoint",
        "schedule": 3600.0,
        "options": {"queue": "default"},
    },
}
