"""Agreement templates: checking, rendering, diffing and hashing.

Legal staff write agreements as Markdown with ``{{ placeholder }}`` markers from a
fixed allowlist. The same code renders the editor's live preview and the frozen
document partners sign, so what they see is what they sign. No template engine ever
evaluates staff text: markers are found with a regular expression, swapped for inert
tokens, and the values go in only after the Markdown has been rendered and sanitised,
each one HTML-escaped.

Django-light on purpose (only ``django.utils.html``) so it runs in tests and
benchmarks without settings or a database.
"""

from __future__ import annotations

import difflib
import hashlib
import html
import re
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from types import MappingProxyType
from typing import Literal
from urllib.parse import unquote

import nh3
from django.utils.html import escape
from markdown_it import MarkdownIt
from markdown_it.token import Token

PLACEHOLDERS: Mapping[str, str] = MappingProxyType(
    {
        "organization.name": "The partner organisation's usual name",
        "organization.legal_name": "The partner organisation's full legal name",
        "organization.jurisdiction": "Where the partner organisation is incorporated",
        "organization.address": "The partner organisation's registered address",
        "lab.legal_name": "The lab's full legal name",
        "effective_date": "The date the agreement takes effect",
        "term_months": "The length of the term, in months",
        "end_date": "The date the agreement ends unless terminated earlier",
        "checkpoints": "List of the granted checkpoints with their sizes",
        "purpose": "The research purpose the partner stated",
        "daily_token_quota": "Tokens the partner may generate per day",
        "obligations.findings_report_days": "Days after each checkpoint's access starts that a findings report is due",
        "obligations.incident_report_hours": "Hours after discovery within which incidents are reported",
        "obligations.final_report_days": "Days before the term ends that the final report is due",
        "obligations.prepublication_review_days": "Days before publishing that a paper is shared with the lab",
        "signature.partner": "The partner's signature block",
        "signature.lab": "The lab's signature block",
    }
)


# The placeholders that state an agreement's obligation terms: a version is published only when its text
# states every one, so the signed document says the same numbers the obligations are scheduled from.
OBLIGATION_PLACEHOLDERS: tuple[str, ...] = tuple(name for name in PLACEHOLDERS if name.startswith("obligations."))


@dataclass(frozen=True, slots=True)
class Problem:
    """One thing wrong with a template, on the 1-based line the author must change."""

    line: int
    message: str

    def __str__(self) -> str:
        return f"Line {self.line}: {self.message}"


@dataclass(frozen=True, slots=True)
class SafeBlock:
    """HTML built by this module's helpers, inserted without escaping.

    Build these only with ``checkpoint_list_html`` and ``signature_block_html``: they
    escape what they are given, which is what makes skipping the escape here safe.
    ``text`` is the fallback (escaped on use) where a block cannot go: mid-sentence,
    in a heading, in code.
    """

    html: str
    text: str


# The brief that introduced this module called it RenderedBlock; both names work.
RenderedBlock = SafeBlock

Value = str | SafeBlock

# --- Finding markers ------------------------------------------------------------

# A marker never spans lines, so an unclosed ``{{`` is reported on the line it opens.
_MARKER_RE = re.compile(r"\{\{(.*?)\}\}")
_NAME_RE = re.compile(r"[A-Za-z_][A-Za-z0-9_]*(?:\.[A-Za-z_][A-Za-z0-9_]*)*")
# Django/Jinja tags and comments have no use in an agreement, so always refused.
_TAG_RE = re.compile(r"\{%.*?(?:%\}|$)|\{#.*?(?:#\}|$)")


@dataclass(frozen=True, slots=True)
class _Marker:
    line: int
    start: int
    end: int
    raw: str
    name: str | None  # set only when the marker names an allowlisted placeholder
    problem: str | None


def _judge(inner: str) -> tuple[str | None, str | None]:
    """Return (allowlisted name, None) or (None, why the marker is refused)."""
    name = inner.strip()
    shown = f"{{{{ {name} }}}}"
    if "__" in name:
        return None, f"placeholders may not contain '__': {shown}"
    if "|" in name:
        return None, f"filters are not allowed in placeholders: {shown}"
    if "{" in name or "}" in name:
        return None, f"unbalanced braces in {{{{{inner}}}}}"
    if not name:
        return None, "empty placeholder {{ }}"
    if not _NAME_RE.fullmatch(name):
        return None, f"malformed placeholder {shown}"
    if name not in PLACEHOLDERS:
        message = f"unknown placeholder {shown}"
        close = difflib.get_close_matches(name, PLACEHOLDERS, n=1)
        if close:
            message += f" (did you mean {{{{ {close[0]} }}}}?)"
        return None, message
    return name, None


def _scan(source: str) -> tuple[list[_Marker], list[Problem]]:
    """Every ``{{ ... }}`` marker, plus the problems not tied to one (tags, braces)."""
    markers: list[_Marker] = []
    stray: list[Problem] = []
    offset = 0
    for number, line in enumerate(source.splitlines(keepends=True), start=1):
        for match in _MARKER_RE.finditer(line):
            name, problem = _judge(match.group(1))
            markers.append(
                _Marker(
                    line=number,
                    start=offset + match.start(),
                    end=offset + match.end(),
                    raw=match.group(0),
                    name=name,
                    problem=problem,
                )
            )
        rest = _MARKER_RE.sub(" ", line)
        for match in _TAG_RE.finditer(rest):
            text = match.group(0).strip()
            kind = "template comments" if text.startswith("{#") else "template tags"
            stray.append(Problem(number, f"{kind} are not allowed: {text}"))
        rest = _TAG_RE.sub(" ", rest)
        if "{{" in rest:
            stray.append(Problem(number, "unbalanced '{{' with no closing '}}' on the same line"))
        if "}}" in rest:
            stray.append(Problem(number, "unbalanced '}}' with no opening '{{'"))
        offset += len(line)
    return markers, stray


def placeholders_used(source: str) -> set[str]:
    """The allowlisted placeholders ``source`` names (at least once)."""
    markers, _ = _scan(source)
    return {marker.name for marker in markers if marker.name}


def obligation_placeholders_missing(source: str) -> list[str]:
    """The obligation placeholders ``source`` does not state, in allowlist order."""
    used = placeholders_used(source)
    return [name for name in OBLIGATION_PLACEHOLDERS if name not in used]


# --- Tokens ---------------------------------------------------------------------


def _token_prefix(source: str) -> str:
    """A letters-only prefix that cannot already occur in the rendered text.

    Letters pass through Markdown untouched. Markdown decodes entities (``&#77;``)
    and, in link text, percent-escapes (``%4D``), so those decodings are checked too:
    a forged token could only pull in another escaped value, but a token we did not
    place must never be substituted.
    """
    seen = (source, html.unescape(source), unquote(source))
    prefix = "MPPH"
    while any(prefix in text for text in seen):
        prefix += "Z"
    return prefix


def _tokenize(source: str, markers: list[_Marker]) -> tuple[str, str]:
    """Swap each marker for ``<prefix><index>X``; return the new text and the prefix."""
    prefix = _token_prefix(source)
    parts: list[str] = []
    last = 0
    for index, marker in enumerate(markers):
        parts.append(source[last : marker.start])
        parts.append(f"{prefix}{index}X")
        last = marker.end
    parts.append(source[last:])
    return "".join(parts), prefix


def _walk(tokens: list[Token]) -> Iterator[Token]:
    for token in tokens:
        yield token
        if token.children:
            yield from _walk(token.children)


# --- Checking -------------------------------------------------------------------


def check_template(source: str) -> list[Problem]:
    """Everything that stops ``source`` being saved, in line order; empty means fine."""
    markers, problems = _scan(source)
    problems.extend(Problem(m.line, m.problem) for m in markers if m.problem)

    # A link address is where a value could change meaning (``javascript:``), and no
    # placeholder is a URL, so one there is refused rather than silently dropped.
    text, prefix = _tokenize(source, markers)
    token_re = re.compile(rf"{prefix}(\d+)X")
    for token in _walk(_markdown.parse(text)):
        href = token.attrGet("href") if token.type == "link_open" else None
        for match in token_re.finditer(str(href or "")):
            marker = markers[int(match.group(1))]
            if marker.name:
                problems.append(
                    Problem(
                        marker.line,
                        f"placeholders cannot be used in a link address: {marker.raw}",
                    )
                )
    return sorted(problems, key=lambda p: p.line)


# --- Rendering ------------------------------------------------------------------

# CommonMark with raw HTML off: ``<script>`` typed by staff is shown as text.
_markdown = MarkdownIt("commonmark", {"html": False}).enable("table")

# Belt and braces: html=False already escapes raw HTML, but the sanitiser is what
# guarantees the tag and URL-scheme allowlist whatever markdown-it emits.
_cleaner = nh3.Cleaner(
    tags={
        *("h1", "h2", "h3", "h4", "h5", "h6", "p", "br", "hr"),
        *("ul", "ol", "li", "strong", "em", "blockquote", "code", "pre", "a"),
        *("table", "thead", "tbody", "tr", "th", "td"),
    },
    attributes={"a": {"href"}, "ol": {"start"}, "th": {"style"}, "td": {"style"}},
    filter_style_properties={"text-align"},
    url_schemes={"http", "https", "mailto"},
    strip_comments=True,
)


def _missing(name: str) -> str:
    return f'<span class="placeholder-missing">[{escape(name)}]</span>'


def _invalid(raw: str) -> str:
    return f'<span class="placeholder-invalid">{escape(raw)}</span>'


def render_markdown(source: str, values: Mapping[str, Value]) -> str:
    """Render staff Markdown to sanitised HTML with placeholder values filled in.

    Returns a plain ``str`` of safe HTML; mark it safe where it is displayed. Never
    raises for a bad template, so the live preview always shows something: refusing is
    ``check_template``'s job.

    Where a marker lands decides what it becomes:

    - alone in a paragraph, list item or table cell: a ``SafeBlock``'s HTML (a plain
      string value is escaped as usual);
    - anywhere else, code spans and code blocks included: the escaped string, or a
      block's escaped ``text``, since a list cannot sit in a sentence or ``<code>``;
    - in a link address: dropped with the address (the link keeps its text), because
      no placeholder is a URL and a value must never become one;
    - a missing or blank value: a highlighted ``[name]``; an unknown or malformed
      marker: highlighted as written. ``{% ... %}`` and stray braces stay plain text.
    """
    markers, _ = _scan(source)
    text, prefix = _tokenize(source, markers)
    tokens = _markdown.parse(text)
    for token in _walk(tokens):
        if token.type == "link_open" and prefix in str(token.attrGet("href") or ""):
            token.attrs.pop("href", None)
    rendered = _cleaner.clean(_markdown.renderer.render(tokens, _markdown.options, {}))

    def value_of(index: int) -> Value | None:
        marker = markers[index]
        value = values.get(marker.name) if marker.name else None
        if isinstance(value, str) and not value.strip():
            return None
        return value

    def block(match: re.Match[str]) -> str:
        index = int(match.group("index"))
        value = value_of(index) if index < len(markers) else None
        if not isinstance(value, SafeBlock):
            return match.group(0)  # left for the inline pass
        tag, attrs = match.group("tag"), match.group("attrs")
        if tag == "p":
            return value.html  # a <ul> or <div> inside a <p> is invalid HTML
        return f"<{tag}{attrs}>{value.html}</{tag}>"

    def inline(match: re.Match[str]) -> str:
        index = int(match.group(1))
        if index >= len(markers):
            return match.group(0)
        marker = markers[index]
        if marker.name is None:
            return _invalid(marker.raw)
        value = value_of(index)
        if value is None:
            return _missing(marker.name)
        return escape(value.text if isinstance(value, SafeBlock) else value)

    # One pass each over the sanitised HTML: values are never rescanned, so a value
    # that contains "{{ purpose }}" or a token stays literal text.
    rendered = re.sub(
        rf"<(?P<tag>p|li|td|th)(?P<attrs>[^>]*)>\s*"
        rf"{prefix}(?P<index>\d+)X\s*</(?P=tag)>",
        block,
        rendered,
    )
    return re.sub(rf"{prefix}(\d+)X", inline, rendered)


# --- Blocks built by our own code ----------------------------------------------


def checkpoint_list_html(items: list[tuple[str, str]]) -> SafeBlock:
    """The ``{{ checkpoints }}`` block from (display name, size label) pairs."""
    if not items:
        return SafeBlock(
            html='<p class="checkpoint-list-empty">No checkpoints are granted.</p>',
            text="no checkpoints",
        )
    rows = "".join(f"<li><strong>{escape(name)}</strong> ({escape(size)})</li>" for name, size in items)
    return SafeBlock(
        html=f'<ul class="checkpoint-list">{rows}</ul>',
        text=", ".join(f"{name} ({size})" for name, size in items),
    )


def _utc(moment: datetime) -> str:
    # Naive datetimes are taken as UTC: signatures are stored in UTC throughout.
    if moment.tzinfo is not None:
        moment = moment.astimezone(UTC)
    return moment.strftime("%d %B %Y, %H:%M UTC")


def signature_block_html(
    side_label: str,
    name: str | None = None,
    title: str | None = None,
    signed_at: datetime | None = None,
    document_sha256: str = "",
) -> SafeBlock:
    """Blank lines to sign on until signed; then who signed, when in UTC, and the document they signed."""
    blank = "______________________________"
    signed = signed_at is not None
    name_html = escape(name) if name else blank
    title_html = escape(title) if title else blank
    date_html = escape(_utc(signed_at)) if signed_at is not None else blank
    state = "signed" if signed else "unsigned"
    mark = (
        f'<p class="signature-mark">Signed electronically by {name_html}</p>'
        if signed
        else f'<p class="signature-mark">Signature: {blank}</p>'
    )
    html_block = (
        f'<div class="signature-block signature-{state}">'
        f'<p class="signature-side"><strong>{escape(side_label)}</strong></p>'
        f"{mark}"
        f"<p>Name: {name_html}</p>"
        f"<p>Title: {title_html}</p>"
        f"<p>Date: {date_html}</p>"
        + (f'<p class="signature-sha">Document SHA-256: <code>{escape(document_sha256)}</code></p>' if signed else "")
        + "</div>"
    )
    if signed_at is not None:
        who = ", ".join(part for part in (name, title) if part) or "an authorised signatory"
        text = f"{side_label}: signed by {who} on {_utc(signed_at)}"
    else:
        text = f"{side_label}: not yet signed"
    return SafeBlock(html=html_block, text=text)


# A new template's obligation terms (TemplateVersion's field defaults), for a preview that was given none.
SAMPLE_OBLIGATION_TERMS: Mapping[str, int] = MappingProxyType(
    {
        "findings_report_days": 90,
        "incident_report_hours": 72,
        "final_report_days": 30,
        "prepublication_review_days": 30,
    }
)


def sample_values(terms: Mapping[str, int | None] | None = None) -> dict[str, Value]:
    """Plausible values to preview a template before any organisation is chosen.

    ``terms`` are the version's obligation terms by field name (as the editor holds them); one missing
    or None is shown with the default."""
    terms = terms or {}
    obligations: dict[str, Value] = {
        f"obligations.{name}": str(terms.get(name) or default) for name, default in SAMPLE_OBLIGATION_TERMS.items()
    }
    return {
        "organization.name": "Example Research Institute",
        "organization.legal_name": "Example Research Institute Ltd",
        "organization.jurisdiction": "England and Wales",
        "organization.address": "1 Example Street, Cambridge CB2 1TN, United Kingdom",
        "lab.legal_name": "Example AI Lab, Inc.",
        "effective_date": "1 July 2025",
        "term_months": "12",
        "end_date": "30 June 2026",
        "checkpoints": checkpoint_list_html([("GPT-2 Small", "124M parameters"), ("GPT-2 Medium", "355M parameters")]),
        "purpose": "Studying the detectability of machine-generated text.",
        "daily_token_quota": "50,000",
        **obligations,
        "signature.partner": signature_block_html("For Example Research Institute Ltd"),
        "signature.lab": signature_block_html("For Example AI Lab, Inc."),
    }


# --- Diffing --------------------------------------------------------------------

DiffKind = Literal["equal", "replace", "insert", "delete", "skip"]


@dataclass(frozen=True, slots=True)
class DiffRow:
    """One row of a side-by-side diff.

    The ``*_html`` fields are plain ``str`` of already-escaped HTML (mark safe to
    display), changed words wrapped in ``<del>`` on the left and ``<ins>`` on the
    right. A side with no line has ``None`` for its number and an empty string.
    """

    kind: DiffKind
    left_no: int | None
    left_html: str
    right_no: int | None
    right_html: str


_WORD_RE = re.compile(r"\s+|\w+|[^\w\s]")


def _intraline(old: str, new: str) -> tuple[str, str]:
    """Mark the words that differ between two paired lines."""
    a, b = _WORD_RE.findall(old), _WORD_RE.findall(new)
    left: list[str] = []
    right: list[str] = []
    for op, i1, i2, j1, j2 in difflib.SequenceMatcher(None, a, b, autojunk=False).get_opcodes():
        removed, added = escape("".join(a[i1:i2])), escape("".join(b[j1:j2]))
        if op == "equal":
            left.append(removed)
            right.append(added)
            continue
        if removed:
            left.append(f"<del>{removed}</del>")
        if added:
            right.append(f"<ins>{added}</ins>")
    return "".join(left), "".join(right)


def render_diff(old: str, new: str) -> list[DiffRow]:
    """Side-by-side rows comparing two versions' Markdown source, line by line."""
    a, b = old.splitlines(), new.splitlines()
    rows: list[DiffRow] = []
    # autojunk off: blank lines are "popular" in Markdown; junking them misaligns rows.
    matcher = difflib.SequenceMatcher(None, a, b, autojunk=False)
    for op, i1, i2, j1, j2 in matcher.get_opcodes():
        if op == "equal":
            rows.extend(
                DiffRow("equal", i + 1, str(escape(a[i])), j + 1, str(escape(b[j])))
                for i, j in zip(range(i1, i2), range(j1, j2), strict=True)
            )
            continue
        paired = min(i2 - i1, j2 - j1) if op == "replace" else 0
        for k in range(paired):
            left, right = _intraline(a[i1 + k], b[j1 + k])
            rows.append(DiffRow("replace", i1 + k + 1, left, j1 + k + 1, right))
        rows.extend(DiffRow("delete", i + 1, f"<del>{escape(a[i])}</del>", None, "") for i in range(i1 + paired, i2))
        rows.extend(DiffRow("insert", None, "", j + 1, f"<ins>{escape(b[j])}</ins>") for j in range(j1 + paired, j2))
    return rows


def diff_changed_lines(rows: list[DiffRow]) -> int:
    """Lines that differ in what a reader sees: a blank line added or removed is not a change."""
    return sum(
        1 for row in rows if row.kind not in ("equal", "skip") and (_visible(row.left_html) or _visible(row.right_html))
    )


def _visible(line_html: str) -> bool:
    return bool(re.sub(r"</?(?:del|ins)>", "", line_html).strip())


def diff_collapsed(rows: list[DiffRow], context: int = 3) -> list[DiffRow]:
    """The changes with `context` unchanged lines around each; longer unchanged runs become one
    "skip" row saying how many lines it stands for (its left_no)."""
    changed = [i for i, row in enumerate(rows) if row.kind != "equal"]
    shown = {j for i in changed for j in range(i - context, i + context + 1)}
    out: list[DiffRow] = []
    hidden = 0
    for i, row in enumerate(rows):
        if i in shown:
            if hidden:
                out.append(DiffRow("skip", hidden, "", None, ""))
                hidden = 0
            out.append(row)
        else:
            hidden += 1
    if hidden:
        out.append(DiffRow("skip", hidden, "", None, ""))
    return out


def sha256_text(text: str) -> str:
    """Hex SHA-256 of the UTF-8 bytes, unnormalised: hash exactly what is signed."""
    return hashlib.sha256(text.encode("utf-8")).hexdigest()
