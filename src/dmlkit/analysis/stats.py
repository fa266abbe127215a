"""Numbers as the reports print them: mean ± std over seeds, gains paired by seed, their 95 %
interval, CSV.

The one home of result statistics: every Markdown table of ``dml analyze``, ``dml report`` and
``dml reproduce`` (the experiments, the analysis sections, the claims) takes its paired gains
(:func:`paired_gains`), its intervals (:func:`mean_ci95`: Student's t, right for a few seeds)
and its cells (:func:`mean_std`, :func:`ci_text`) from here, so that they agree on the
quantile, the digits, the sign of a gain and the marker of a missing value.
"""

from __future__ import annotations

import csv
import io
import math
import statistics
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

# The cell of a table with no value (no run, no seed pair, no metric).
MISSING = "-"


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


def t975(df: int) -> float:
    """The two-sided 95 % quantile of Student's t with ``df >= 1`` degrees of freedom (exact,
    scipy's; e.g. 4.303 for 3 seeds, 2.776 for 5)."""
    from scipy.stats import t  # scipy comes with scikit-learn; imported only when needed

    return float(t.ppf(0.975, df))


def mean_ci95(values: Sequence[float]) -> tuple[float, float]:
    """Mean and the half-width of its 95 % confidence interval: Student's t over the values
    (e.g. paired gains over seeds); the half-width is ``inf`` for fewer than two values."""
    mean = statistics.fmean(values)
    n = len(values)
    if n < 2:
        return mean, math.inf
    return mean, t975(n - 1) * statistics.stdev(values) / math.sqrt(n)


#: The earlier name of :func:`mean_ci95`.
ci95 = mean_ci95


def paired_gains(
    arm: Mapping[Any, float | None], baseline: Mapping[Any, float | None]
) -> list[float]:
    """``arm[s] - baseline[s]`` for every seed ``s`` both have a value for, in seed order.

    Runs of one seed share initial weights and data order, so the difference of two arms on a
    seed is a paired measurement: its spread over seeds is far smaller than either arm's.
    """
    seeds = sorted(s for s in arm.keys() & baseline.keys())
    return [
        arm[s] - baseline[s]  # type: ignore[operator]
        for s in seeds
        if arm[s] is not None and baseline[s] is not None
    ]


def ci_text(values: Sequence[float], digits: int = 2, *, missing: str = MISSING) -> str:
    """``"+m ± h"``: a signed mean and the half-width of its 95 % t-interval (:func:`mean_ci95`);
    ``"+m"`` for one value, ``missing`` for none."""
    if not values:
        return missing
    if len(values) == 1:
        return f"{values[0]:+.{digits}f}"
    m, h = mean_ci95(values)
    return f"{m:+.{digits}f} ± {h:.{digits}f}"


def csv_text(header: Sequence[str], rows: Iterable[Sequence[Any]]) -> str:
    """A CSV file's text: the header, then the rows as given (one ``\\n`` per line)."""
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(header)
    writer.writerows(rows)
    return buf.getvalue()
