"""Formatting shared by the benchmark reports (Tests/bench/*-report.py): numbers, ratios
and spreads as the Markdown tables show them, medians that tolerate missing values.

    sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "lib"))
    from report import fmt, median, ratio, rfmt, spread
"""
import statistics


def median(values):
    """The median of the values that are not None; None when there are none."""
    vals = [v for v in values if v is not None]
    return statistics.median(vals) if vals else None


def fmt(x, nd=0):
    """A number with thousands separators and nd decimals; a dash for None."""
    return "–" if x is None else f"{x:,.{nd}f}"


def ratio(a, b):
    """a / b; None when either is missing or b is 0."""
    return None if a is None or not b else a / b


def rfmt(r):
    """A ratio as the tables show it: 0.64×."""
    return "–" if r is None else f"{r:.2f}×"


def spread(values):
    """Lowest–highest of the values, whole numbers; a dash for none."""
    v = list(values)
    return f"{min(v):,.0f}–{max(v):,.0f}" if v else "–"
