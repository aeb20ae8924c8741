"""Server-rendered SVG charts: small, dependency-free, and safe to put in a page as they are.

Every label is escaped. Each chart is an image to assistive technology (role="img") named by its title
(aria-label, and a <title> element) and described by a sentence (<desc>); its legend is drawn inside it,
and lines differ by dash pattern as well as colour, so nothing is told by colour alone. The colours are
the Okabe-Ito palette, told apart by people with the common colour-vision deficiencies. A chart is a
picture of numbers the page also shows as a table (and a CSV): never their only home.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from django.utils.html import escape
from django.utils.safestring import SafeString, mark_safe

# Okabe-Ito, without its yellow (too pale on white for thin lines and text).
PALETTE = ("#0072B2", "#E69F00", "#009E73", "#CC79A7", "#56B4E9", "#D55E00", "#7F7F7F", "#000000")
DASHES = ("", "7 3", "2 3", "9 3 2 3", "14 4", "1 3", "5 5", "10 2 2 2 2 2")
INK, MUTED, GRID = "#1b2330", "#5b6677", "#dde2ea"
FONT = "system-ui, -apple-system, 'Segoe UI', Roboto, 'Noto Sans', 'Liberation Sans', Arial, sans-serif"
WIDTH = 640
NARROW = 520  # for charts set two abreast: drawn narrower so their text stays as large
FONT_SIZE = 13
CHAR_WIDTH = 7.4  # a generous average glyph at FONT_SIZE, for laying out labels without measuring text


@dataclass(frozen=True)
class Series:
    """One named row of values; `colour` picks a palette colour by default (by position)."""

    label: str
    values: Sequence[float]
    colour: str = ""


def compact(value: float) -> str:
    """12, 1.2k, 34k, 1.5M: tick and total labels that fit beside a bar."""
    value = float(value)
    for limit, suffix in ((1e9, "G"), (1e6, "M"), (1e3, "k")):
        if abs(value) >= limit:
            scaled = value / limit
            return f"{scaled:.1f}".rstrip("0").rstrip(".") + suffix if scaled < 10 else f"{scaled:.0f}{suffix}"
    return f"{value:.0f}" if value == int(value) else f"{value:.1f}"


def percent(value: float) -> str:
    return f"{value:.0f}%"


def nice_ticks(top: float, count: int = 4) -> list[float]:
    """0 and a few round steps (1, 2, 2.5 or 5 times a power of ten) reaching at least `top`.

    Steps are whole numbers: every chart here counts things (tokens, jobs, findings) or percent.
    """
    if top <= 0:
        return [0.0, 1.0]
    raw = top / count
    power = max(1, 10 ** math.floor(math.log10(raw)))
    multiples = (1, 2, 2.5, 5, 10) if power >= 10 else (1, 2, 5, 10)  # 2.5 of a power under 10 is no whole number
    step = next(m * power for m in multiples if m * power >= raw)
    ticks = [0.0]
    while ticks[-1] < top - 1e-9:
        ticks.append(round(ticks[-1] + step, 10))
    return ticks


def _f(number: float) -> str:
    """Coordinates with at most one decimal: smaller markup, no float noise."""
    return f"{number:.1f}".rstrip("0").rstrip(".")


def _text(x: float, y: float, text: str, *, anchor: str = "start", fill: str = INK, size: int = FONT_SIZE) -> str:
    return (
        f'<text x="{_f(x)}" y="{_f(y)}" text-anchor="{anchor}" fill="{fill}" font-size="{size}">{escape(text)}</text>'
    )


def _truncate(text: str, width: float) -> str:
    room = max(3, int(width / CHAR_WIDTH))
    return text if len(text) <= room else text[: room - 1].rstrip() + "…"


def _colour(series: Series, index: int) -> str:
    return series.colour or PALETTE[index % len(PALETTE)]


def _legend(series: Sequence[Series], *, top: float, lines: bool, width: float = WIDTH) -> tuple[str, float]:
    """The legend as SVG, wrapped over as many rows as it needs; returns it and its height."""
    parts, x, y = [], 0.0, top
    for index, item in enumerate(series):
        label = _truncate(item.label, width / 2)
        room = 28 + len(label) * CHAR_WIDTH + 18
        if x and x + room > width:
            x, y = 0.0, y + 22
        colour = _colour(item, index)
        if lines:
            dash = DASHES[index % len(DASHES)]
            dash_attribute = f' stroke-dasharray="{dash}"' if dash else ""
            swatch = (
                f'<line x1="{_f(x)}" y1="{_f(y + 8)}" x2="{_f(x + 22)}" y2="{_f(y + 8)}" stroke="{colour}" '
                f'stroke-width="3"{dash_attribute}/>'
            )
        else:
            swatch = f'<rect x="{_f(x)}" y="{_f(y + 1)}" width="14" height="14" rx="2" fill="{colour}"/>'
        parts.append(f"<g>{swatch}{_text(x + (28 if lines else 20), y + 13, label)}</g>")
        x += room
    height = (y - top + 22) if series else 0
    return f'<g class="legend">{"".join(parts)}</g>', height


def _open(chart_id: str, title: str, description: str, height: float, width: float = WIDTH) -> str:
    chart_id = escape(chart_id)
    return (
        f'<svg xmlns="http://www.w3.org/2000/svg" viewBox="0 0 {_f(width)} {_f(height)}" width="100%" role="img" '
        f'aria-label="{escape(title)}" aria-describedby="{chart_id}-desc" font-family="{FONT}" '
        f'font-size="{FONT_SIZE}" class="chart-svg" id="{chart_id}">'
        f'<title id="{chart_id}-title">{escape(title)}</title><desc id="{chart_id}-desc">{escape(description)}</desc>'
    )


def _empty_note(x: float, y: float, note: str) -> str:
    return _text(x, y, note, anchor="middle", fill=MUTED)


def line_chart(
    *,
    chart_id: str,
    title: str,
    description: str,
    x_labels: Sequence[str],
    series: Sequence[Series],
    label_every: int = 7,
    value_format: Callable[[float], str] = compact,
    empty_note: str = "Nothing in this window",
) -> SafeString:
    """One line per series over the same x labels (days, say); every `label_every`th x label is shown."""
    legend, legend_height = _legend(series, top=0, lines=True)
    left, right, top, plot_height = 52.0, 12.0, legend_height + 14, 190.0
    height = top + plot_height + 30
    plot_width = WIDTH - left - right
    values = [v for s in series for v in s.values]
    ticks = nice_ticks(max(values, default=0))
    top_value = ticks[-1] or 1
    count = max(len(x_labels), 1)

    def x_at(index: int) -> float:
        return left + (plot_width * index / (count - 1) if count > 1 else plot_width / 2)

    def y_at(value: float) -> float:
        return top + plot_height - plot_height * value / top_value

    parts = [_open(chart_id, title, description, height), legend]
    for tick in ticks:
        y = y_at(tick)
        parts.append(f'<line x1="{_f(left)}" y1="{_f(y)}" x2="{_f(WIDTH - right)}" y2="{_f(y)}" stroke="{GRID}"/>')
        parts.append(_text(left - 6, y + 4, value_format(tick), anchor="end", fill=MUTED))
    for index, label in enumerate(x_labels):
        if index % label_every == 0:
            x = x_at(index)
            parts.append(
                f'<line x1="{_f(x)}" y1="{_f(top + plot_height)}" x2="{_f(x)}" y2="{_f(top + plot_height + 4)}" '
                f'stroke="{MUTED}"/>'
            )
            parts.append(_text(x, top + plot_height + 18, label, anchor="middle", fill=MUTED))
    for index, item in enumerate(series):
        points = " ".join(f"{_f(x_at(i))},{_f(y_at(v))}" for i, v in enumerate(item.values))
        dash = DASHES[index % len(DASHES)]
        dash_attribute = f' stroke-dasharray="{dash}"' if dash else ""
        total = value_format(sum(item.values))
        parts.append(
            f"<g><title>{escape(item.label)}: {escape(total)} in all</title>"
            f'<polyline points="{points}" fill="none" stroke="{_colour(item, index)}" stroke-width="2.5" '
            f'stroke-linejoin="round"{dash_attribute}/></g>'
        )
    if not any(values):
        parts.append(_empty_note(left + plot_width / 2, top + plot_height / 2, empty_note))
    parts.append("</svg>")
    return mark_safe("".join(parts))  # every interpolated label is escaped above


def column_chart(
    *,
    chart_id: str,
    title: str,
    description: str,
    x_labels: Sequence[str],
    series: Sequence[Series],
    value_format: Callable[[float], str] = compact,
    empty_note: str = "Nothing in this window",
) -> SafeString:
    """Stacked columns: one column per x label, one segment per series (in legend order, bottom up)."""
    legend, legend_height = _legend(series, top=0, lines=False)
    left, right, top, plot_height = 52.0, 12.0, legend_height + 22, 180.0
    height = top + plot_height + 30
    plot_width = WIDTH - left - right
    totals = [sum(s.values[i] for s in series) for i in range(len(x_labels))]
    ticks = nice_ticks(max(totals, default=0))
    top_value = ticks[-1] or 1
    slot = plot_width / max(len(x_labels), 1)
    bar = min(48.0, slot * 0.62)

    def y_at(value: float) -> float:
        return top + plot_height - plot_height * value / top_value

    parts = [_open(chart_id, title, description, height), legend]
    for tick in ticks:
        y = y_at(tick)
        parts.append(f'<line x1="{_f(left)}" y1="{_f(y)}" x2="{_f(WIDTH - right)}" y2="{_f(y)}" stroke="{GRID}"/>')
        parts.append(_text(left - 6, y + 4, value_format(tick), anchor="end", fill=MUTED))
    for index, label in enumerate(x_labels):
        x = left + slot * index + (slot - bar) / 2
        base = 0.0
        for position, item in enumerate(series):
            value = item.values[index]
            if value:
                y, h = y_at(base + value), plot_height * value / top_value
                fill = _colour(item, position)
                parts.append(
                    f'<rect x="{_f(x)}" y="{_f(y)}" width="{_f(bar)}" height="{_f(h)}" fill="{fill}">'
                    f"<title>{escape(label)}, {escape(item.label)}: {escape(value_format(value))}</title></rect>"
                )
            base += value
        if totals[index]:
            parts.append(_text(x + bar / 2, y_at(totals[index]) - 5, value_format(totals[index]), anchor="middle"))
        parts.append(_text(left + slot * index + slot / 2, top + plot_height + 18, label, anchor="middle", fill=MUTED))
    if not any(totals):
        parts.append(_empty_note(left + plot_width / 2, top + plot_height / 2, empty_note))
    parts.append("</svg>")
    return mark_safe("".join(parts))  # every interpolated label is escaped above


def bar_chart(
    *,
    chart_id: str,
    title: str,
    description: str,
    categories: Sequence[str],
    series: Sequence[Series],
    value_format: Callable[[float], str] = compact,
    max_value: float | None = None,
    show_legend: bool = True,
    empty_note: str = "Nothing to show",
    width: int = WIDTH,
) -> SafeString:
    """Horizontal bars, one per category (a partner, a finding category), stacked by series.

    Long category names are shortened on the chart (in full in each bar's tooltip and in the table).
    `max_value` fixes the scale (100 for percentages) unless a bar goes past it.
    """
    legend, legend_height = _legend(series, top=0, lines=False, width=width) if show_legend else ("", 0.0)
    longest = max((len(c) for c in categories), default=4)
    label_width = min(210.0, max(60.0, longest * CHAR_WIDTH + 8))
    left, right, top = label_width + 8, 56.0, legend_height + 26
    row, bar = 30.0, 18.0
    plot_width = width - left - right
    plot_height = row * max(len(categories), 1)
    height = top + plot_height + 8
    totals = [sum(s.values[i] for s in series) for i in range(len(categories))]
    ticks = nice_ticks(max([*totals, max_value or 0], default=0))
    top_value = ticks[-1] or 1

    def x_at(value: float) -> float:
        return left + plot_width * value / top_value

    parts = [_open(chart_id, title, description, height, width), legend]
    for tick in ticks:
        x = x_at(tick)
        parts.append(
            f'<line x1="{_f(x)}" y1="{_f(top - 4)}" x2="{_f(x)}" y2="{_f(top + plot_height)}" stroke="{GRID}"/>'
        )
        parts.append(_text(x, top - 9, value_format(tick), anchor="middle", fill=MUTED))
    for index, category in enumerate(categories):
        y = top + row * index + (row - bar) / 2
        parts.append(
            f"<g><title>{escape(category)}</title>"
            f"{_text(left - 8, y + bar / 2 + 4.5, _truncate(category, label_width), anchor='end')}</g>"
        )
        base = 0.0
        for position, item in enumerate(series):
            value = item.values[index]
            if value:
                parts.append(
                    f'<rect x="{_f(x_at(base))}" y="{_f(y)}" width="{_f(x_at(base + value) - x_at(base))}" '
                    f'height="{_f(bar)}" fill="{_colour(item, position)}"><title>{escape(category)}, '
                    f"{escape(item.label)}: {escape(value_format(value))}</title></rect>"
                )
            base += value
        parts.append(_text(x_at(totals[index]) + 6, y + bar / 2 + 4.5, value_format(totals[index]), fill=INK))
    if not categories:
        parts.append(_empty_note(left + plot_width / 2, top + row / 2 + 4, empty_note))
    parts.append("</svg>")
    return mark_safe("".join(parts))  # every interpolated label is escaped above
