"""How every number and table of the project is written: percents with their 95 percent interval,
means ± std, correlations, markdown tables for reports and docs, aligned text tables for the
terminal. One place, so that a figure reads the same in the terminal, in ``metrics/report.md``
and in the README.

Fractions are stored everywhere (metrics files, experiments); they become percents with one
decimal only here. ``None`` (a value that is undefined or was not measured) is written ``n/a``.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

NA = "n/a"  # an undefined or unmeasured value


def pct(fraction: float | None) -> str:
    """A fraction as a percent with one decimal: 0.758 -> ``75.8``."""
    return NA if fraction is None else f"{100 * fraction:.1f}"


def pct_bounds(lo: float | None, hi: float | None) -> str:
    """`` [72.6, 79.2]``: an interval of fractions in percent, with its leading space; "" when
    a bound is unknown."""
    return "" if lo is None or hi is None else f" [{pct(lo)}, {pct(hi)}]"


def pct_interval(fraction: float | None, lo: float | None = None,
                 hi: float | None = None) -> str:
    """``75.8 [72.6, 79.2]``: a percent and its interval (left out when a bound is unknown)."""
    return NA if fraction is None else pct(fraction) + pct_bounds(lo, hi)


def pct_of(record: Mapping[str, Any], key: str) -> str:
    """``record[key]`` in percent with the interval of ``record[key + "_lo"]`` and
    ``record[key + "_hi"]`` (the layout of every metrics file); ``n/a`` when the key is absent."""
    return pct_interval(record.get(key), record.get(f"{key}_lo"), record.get(f"{key}_hi"))


def pct_stat(mean: float | None, std: float | None, lo: float | None = None,
             hi: float | None = None) -> str:
    """``75.8 ± 2.3 [72.6, 79.2]``: a mean ± std in percent, then its interval when known."""
    if mean is None:
        return NA
    return f"{pct(mean)} ± {pct(std or 0.0)}{pct_bounds(lo, hi)}"


def num(value: float | None, spec: str = ".3f") -> str:
    """A plain number in the format ``spec`` (``.3f``, ``+.2f``, ``.3g``...), or ``n/a``."""
    return NA if value is None else format(value, spec)


def num_stat(mean: float | None, std: float | None, spec: str = ".3f") -> str:
    """``0.145 ± 0.010``: a plain mean ± std, or ``n/a``."""
    return NA if mean is None else f"{format(mean, spec)} ± {format(std or 0.0, spec)}"


def corr(r: float | None, lo: float | None = None, hi: float | None = None,
         std: float | None = None, digits: int = 3) -> str:
    """A correlation with its sign: ``+0.313``, ``± std`` when given, then `` [lo, hi]`` when
    both bounds are known; ``n/a`` for None."""
    if r is None:
        return NA
    text = f"{r:+.{digits}f}"
    if std is not None:
        text += f" ± {std:.{digits}f}"
    if lo is not None and hi is not None:
        text += f" [{lo:+.{digits}f}, {hi:+.{digits}f}]"
    return text


# --- tables ---------------------------------------------------------------------------------------


def markdown_table(header: Sequence[Any], rows: Sequence[Sequence[Any]]) -> str:
    """A markdown pipe table (pipes inside cells escaped)."""
    def line(cells: Sequence[Any]) -> str:
        return "| " + " | ".join(str(c).replace("|", "\\|") for c in cells) + " |"

    return "\n".join([line(header), line(["---"] * len(header)), *(line(r) for r in rows)])


def text_table(header: Sequence[Any], rows: Sequence[Sequence[Any]]) -> str:
    """A plain-text table with aligned columns, for the terminal: the first column left-aligned,
    the others right-aligned; floats with 4 significant digits."""
    cells = [[str(h) for h in header]] + [[_cell(v) for v in row] for row in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(header))]

    def line(row: list[str]) -> str:
        return "  ".join(c.rjust(w) if i else c.ljust(w)
                         for i, (c, w) in enumerate(zip(row, widths, strict=True)))

    lines = [line(r) for r in cells]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


def _cell(value: Any) -> str:
    return f"{value:.4g}" if isinstance(value, float) else str(value)
