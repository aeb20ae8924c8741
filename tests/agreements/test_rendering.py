"""Agreement templates: what staff may write, and what partners see and sign."""

import re
from datetime import UTC, datetime
from pathlib import Path

import pytest

from agreements.rendering import (
    PLACEHOLDERS,
    Problem,
    SafeBlock,
    check_template,
    checkpoint_list_html,
    render_diff,
    render_markdown,
    sample_values,
    sha256_text,
    signature_block_html,
)

DEFAULT_TEMPLATE = (Path(__file__).resolve().parents[2] / "agreements" / "default_template.md").read_text(
    encoding="utf-8"
)

# The refused marker sits on line 3, so the line number is shown to be counted.
PREFIX = "# Agreement\n\nBetween {{ organization.legal_name }} and "


@pytest.mark.parametrize(
    ("marker", "says"),
    [
        ("{{ settings.SECRET_KEY }}", "unknown placeholder {{ settings.SECRET_KEY }}"),
        ("{% load static %}", "template tags are not allowed"),
        ('{% include "x" %}', "template tags are not allowed"),
        ("{# a note #}", "template comments are not allowed"),
        ("{{ user.password }}", "unknown placeholder {{ user.password }}"),
        ("{{ organization.__class__ }}", "may not contain '__'"),
        ('{{ organization.name|attr:"x" }}', "filters are not allowed"),
        ("{{ organization.name }", "unbalanced '{{'"),
        ("organization.name }}", "unbalanced '}}'"),
        ("{{{ purpose }}", "unbalanced braces"),
        ("{{ }}", "empty placeholder"),
        ("{{ purpose() }}", "malformed placeholder"),
    ],
)
def test_unsafe_or_unknown_markers_are_refused_on_their_line(marker: str, says: str) -> None:
    problems = check_template(PREFIX + marker + ".\n\nMore text {{ purpose }}.\n")

    assert len(problems) == 1, problems
    assert problems[0].line == 3
    assert says in problems[0].message


def test_problem_reads_as_a_line_reference() -> None:
    source = "\n" * 11 + "Password: {{ user.password }}\n"

    assert [str(p) for p in check_template(source)] == ["Line 12: unknown placeholder {{ user.password }}"]


def test_every_problem_is_reported_in_line_order() -> None:
    source = "{{ nope }}\nfine {{purpose}}\n{% if x %}\n{{ a|b }} and {{ c }}\n"

    assert [p.line for p in check_template(source)] == [1, 3, 4, 4]


def test_a_misspelt_placeholder_suggests_the_right_one() -> None:
    [problem] = check_template("{{ organisation.legal_name }}")

    assert "did you mean {{ organization.legal_name }}" in problem.message


def test_every_allowlisted_placeholder_is_accepted_with_or_without_spaces() -> None:
    source = "\n".join(f"{{{{ {name} }}}} {{{{{name}}}}}" for name in PLACEHOLDERS)

    assert check_template(source) == []


def test_a_placeholder_in_a_link_address_is_refused() -> None:
    assert check_template("Intro\n\n[see]({{ purpose }})\n") == [
        Problem(3, "placeholders cannot be used in a link address: {{ purpose }}")
    ]


def test_raw_script_is_shown_as_text() -> None:
    html = render_markdown("Hello <script>alert(1)</script>", {})

    assert "<script" not in html
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in html


def test_javascript_links_lose_their_address() -> None:
    html = render_markdown(
        "[x](javascript:alert(1)) <javascript:alert(2)>\n\n[y]: javascript:alert(3)\n\n[y]",
        {},
    )

    assert 'href="javascript' not in html.lower()
    assert not re.search(r"<a[^>]*javascript", html, re.IGNORECASE)


def test_links_outside_the_scheme_allowlist_lose_their_address() -> None:
    # markdown-it accepts these schemes; the sanitiser's allowlist is what drops them.
    html = render_markdown("[a](data:image/png;base64,AAA) [b](ftp://x.org/f)", {})

    assert html == ('<p><a rel="noopener noreferrer">a</a> <a rel="noopener noreferrer">b</a></p>\n')


def test_safe_links_keep_their_address() -> None:
    html = render_markdown("[site](https://example.org/a?b=1) <mailto:legal@example.org>", {})

    assert 'href="https://example.org/a?b=1"' in html
    assert 'href="mailto:legal@example.org"' in html


def test_raw_img_with_handler_never_becomes_a_tag() -> None:
    html = render_markdown('<img src=x onerror=alert(1)>\n\n![pic](x" onerror="alert(1))', {})

    assert "<img" not in html
    assert not re.search(r"<[^>]+onerror", html)


def test_values_are_escaped_after_rendering() -> None:
    html = render_markdown(
        "Between **{{ organization.legal_name }}** and us.",
        {"organization.legal_name": "ACME <b>&"},
    )

    assert "<strong>ACME &lt;b&gt;&amp;</strong>" in html
    assert "<b>" not in html


def test_markdown_in_a_value_stays_literal() -> None:
    html = render_markdown("{{ purpose }}", {"purpose": "**bold** [x](https://e.org)"})

    assert html == "<p>**bold** [x](https://e.org)</p>\n"


def test_a_value_containing_a_placeholder_is_not_expanded_again() -> None:
    html = render_markdown(
        "Purpose: {{ purpose }}. Org: {{ organization.name }}.",
        {
            "purpose": "{{ organization.name }} {{ purpose }} MPPH0X",
            "organization.name": "ACME",
        },
    )

    assert "Purpose: {{ organization.name }} {{ purpose }} MPPH0X. Org: ACME." in html


def test_token_lookalikes_in_the_source_are_left_alone() -> None:
    html = render_markdown("MPPH0X &#77;PPH1X {{ purpose }}", {"purpose": "P"})

    assert html == "<p>MPPH0X MPPH1X P</p>\n"


def test_missing_values_show_a_highlighted_blank() -> None:
    html = render_markdown(
        "From {{ effective_date }}, for {{ term_months }} months.",
        {"term_months": "  "},
    )

    assert '<span class="placeholder-missing">[effective_date]</span>' in html
    assert '<span class="placeholder-missing">[term_months]</span>' in html


def test_unknown_markers_in_a_preview_are_highlighted_not_evaluated() -> None:
    html = render_markdown("{{ settings.SECRET_KEY }} {% load static %}", {})

    assert '<span class="placeholder-invalid">{{ settings.SECRET_KEY }}</span>' in html
    assert "{% load static %}" in html


def test_a_block_on_its_own_line_replaces_the_paragraph() -> None:
    checkpoints = checkpoint_list_html([("GPT-2 <Medium>", "355M parameters")])
    html = render_markdown("Granted:\n\n{{ checkpoints }}\n", {"checkpoints": checkpoints})

    assert html == (
        "<p>Granted:</p>\n"
        '<ul class="checkpoint-list"><li><strong>GPT-2 &lt;Medium&gt;</strong>'
        " (355M parameters)</li></ul>\n"
    )


def test_a_block_mid_sentence_falls_back_to_escaped_text() -> None:
    checkpoints = checkpoint_list_html([("GPT-2 <b>", "124M"), ("GPT-2 XL", "1.5B")])
    html = render_markdown("You get {{ checkpoints }} today.", {"checkpoints": checkpoints})

    assert html == "<p>You get GPT-2 &lt;b&gt; (124M), GPT-2 XL (1.5B) today.</p>\n"


def test_placeholders_in_code_are_filled_escaped() -> None:
    html = render_markdown(
        "`{{ organization.name }}`\n\n    {{ checkpoints }}\n",
        {
            "organization.name": "<A&B>",
            "checkpoints": checkpoint_list_html([("X", "1M")]),
        },
    )

    assert "<code>&lt;A&amp;B&gt;</code>" in html
    assert "<pre><code>X (1M)\n</code></pre>" in html


def test_a_placeholder_in_a_link_address_is_dropped_with_the_address() -> None:
    html = render_markdown("[click]({{ purpose }})", {"purpose": "javascript:alert(1)"})

    assert html == '<p><a rel="noopener noreferrer">click</a></p>\n'


def test_signature_block_escapes_and_shows_utc_time() -> None:
    block = signature_block_html(
        "For <Partner>",
        name="Ada <Lovelace>",
        title="Director & Chair",
        signed_at=datetime(2025, 3, 1, 14, 2, tzinfo=UTC),
    )

    assert "For &lt;Partner&gt;" in block.html
    assert "Ada &lt;Lovelace&gt;" in block.html
    assert "Director &amp; Chair" in block.html
    assert "01 March 2025, 14:02 UTC" in block.html
    assert "<Lovelace>" not in block.html
    assert "signature-signed" in block.html


def test_unsigned_signature_block_has_lines_to_sign_on() -> None:
    block = signature_block_html("For the Lab")

    assert "signature-unsigned" in block.html
    assert "Signature: ____" in block.html
    assert block.text == "For the Lab: not yet signed"


def test_sample_values_fill_every_placeholder() -> None:
    values = sample_values()

    assert set(values) == set(PLACEHOLDERS)
    assert isinstance(values["checkpoints"], SafeBlock)
    assert values["organization.name"] == "Example Research Institute"


def test_default_template_passes_the_check() -> None:
    assert check_template(DEFAULT_TEMPLATE) == []


def test_default_template_uses_every_placeholder() -> None:
    for name in PLACEHOLDERS:
        assert re.search(r"\{\{\s*" + re.escape(name) + r"\s*\}\}", DEFAULT_TEMPLATE), name


def test_default_template_renders_every_section_with_sample_values() -> None:
    html = render_markdown(DEFAULT_TEMPLATE, sample_values())
    headings = re.findall(r"^#{2,3} (.+)$", DEFAULT_TEMPLATE, re.MULTILINE)

    for required in [
        "Definitions",
        "Licence",
        "Permitted Uses",
        "Prohibited Uses",
        "Security of Access",
        "Sharing Research Findings",
        "Publication Coordination",
        "Labelling of Samples",
        "Usage Limits",
        "Term and Termination",
        "Effect of Termination",
        "Liability",
        "Governing Law",
        "Signatures",
    ]:
        assert any(required in heading for heading in headings), required
    for heading in headings:
        heading_html = re.sub(r"\{\{ organization.name \}\}", "Example Research Institute", heading)
        assert re.search(rf"<h[23]>{re.escape(heading_html)}</h[23]>", html), heading
    assert "placeholder-missing" not in html
    assert "placeholder-invalid" not in html
    assert '<ul class="checkpoint-list">' in html
    assert html.count('<div class="signature-block') == 2
    assert "{{" not in html


def test_default_template_is_a_realistic_length() -> None:
    assert 1500 <= len(DEFAULT_TEMPLATE.split()) <= 3000


def test_diff_marks_changed_words_and_added_and_removed_lines() -> None:
    old = "# Title\nTerm: 12 months.\nKeep me\nDrop me\n"
    new = "# Title\nTerm: 24 months.\nKeep me\n<b>New</b> line\nAnother\n"

    rows = render_diff(old, new)

    assert [(r.kind, r.left_no, r.right_no) for r in rows] == [
        ("equal", 1, 1),
        ("replace", 2, 2),
        ("equal", 3, 3),
        ("replace", 4, 4),
        ("insert", None, 5),
    ]
    assert rows[1].left_html == "Term: <del>12</del> months."
    assert rows[1].right_html == "Term: <ins>24</ins> months."
    assert rows[3].right_html.startswith("<ins>&lt;b&gt;New&lt;/b&gt;")
    assert rows[4].right_html == "<ins>Another</ins>"
    assert rows[4].left_html == ""


def test_diff_of_pure_deletion() -> None:
    rows = render_diff("a\nb\nc", "a\nc")

    assert [(r.kind, r.left_no, r.right_no, r.left_html) for r in rows] == [
        ("equal", 1, 1, "a"),
        ("delete", 2, None, "<del>b</del>"),
        ("equal", 3, 2, "c"),
    ]


def test_sha256_is_of_the_exact_utf8_text() -> None:
    assert sha256_text("") == "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
    assert sha256_text("a\n") != sha256_text("a\r\n")
    assert len(sha256_text("Zürich")) == 64
