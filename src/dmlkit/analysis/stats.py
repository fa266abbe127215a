"""Numbers as the reports print them: mean ± std over seeds, paired-difference intervals, CSV.

Every Markdown table of ``dml analyze``, ``dml report`` and ``dml reproduce`` formats its cells
here, so that they agree on the digits, the sign of a gain and the marker of a missing value.
"""

from __future__ import annotations

import csv
import io
import math
import statistics
from collections.abc import Iterable, Sequence
from typing import Any

# The cell of a table with no value (no run, no seed pair, no metric).
MISSING = "-"

# Two-sided 95 % quantiles of Student's t for 1..30 degrees of freedom (then ~1.96).
_T975 = (
    12.706, 4.303, 3.182, 2.776, 2.571, 2.447, 2.365, 2.306, 2.262, 2.228,
    2.201, 2.179, 2.160, 2.145, 2.131, 2.120, 2.110, 2.101, 2.093, 2.086,
    2.080, 2.074, 2.069, 2.064, 2.060, 2.056, 2.052, 2.048, 2.045, 2.042,
)  # fmt: skip


def mean_std(
    values: Iterable[float | None], digits: int = 2, *, scale: float = 1.0, signed: bool = False
) -> str:
    """``"mean ± std"`` of the values (sample std), ``"mean"`` for one, :data:`MISSING` for none.

    Args:
        values: None and NaN are left out.
        digits: decimals of both numbers.
        scale: multiplies every value first (100 for fractions shown as percentages).
        signed: a ``+`` before a mean >= 0 (gains).
    """
    vals = [scale * v for v in values if v is not None and not math.isnan(v)]
    if not vals:
        return MISSING
    mean = statistics.fmean(vals)
    sign = "+" if signed and mean >= 0 else ""
    if len(vals) == 1:
        return f"{sign}{mean:.{digits}f}"
    return f"{sign}{mean:.{digits}f} ± {statistics.stdev(vals):.{digits}f}"


def percent(values: Iterable[float | None]) -> str:
    """Fractions as ``"12.34 ± 0.56 %"`` (:data:`MISSING` for none)."""
    text = mean_std(values, 2, scale=100)
    return text if text == MISSING else f"{text} %"


def ci95(diffs: Sequence[float]) -> tuple[float, float]:
    """Mean and the half-width of its 95 % confidence interval (Student's t over seeds)."""
    mean = statistics.fmean(diffs)
    n = len(diffs)
    if n < 2:
        return mean, math.inf
    t = _T975[n - 2] if n - 2 < len(_T975) else 1.96
    return mean, t * statistics.stdev(diffs) / math.sqrt(n)


def csv_text(header: Sequence[str], rows: Iterable[Sequence[Any]]) -> str:
    """A CSV file's text: the header, then the rows as given (one ``\\n`` per line)."""
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(header)
    writer.writerows(rows)
    return buf.getvalue()
