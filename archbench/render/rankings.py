"""Report sections: does the ranking of variants hold in every form, and how does it compare
with the PicoDet model zoo's published figures.

``ranking_sections(result)`` returns markdown blocks (none when the run has nothing to show):

* **Ranking by latency, per form**: at each resolution, the variants ordered fastest first in
  every form (over the variants measured in all of them at that resolution), and one verdict
  line per resolution saying whether the order is the same in every form. Neighbours whose
  medians differ by less than the larger of their spreads are joined by "≈" instead of "<":
  their order is within the noise.
* **Published reference** (in a run with both variants of a pair in ``PUBLISHED_PAIRS``):
  the PicoDet 2021 model zoo's figures (``PUBLISHED``; source and
  conventions in docs/reference.md section 8.1: Snapdragon 865, 4 threads, FP16, ncnn and
  Paddle Lite) for the variants of this run they describe, beside what this run measured;
  then, for each such pair, the ratio of the two models'
  published latencies next to the same ratio measured here in each form. The published
  milliseconds come from other hardware and are not comparable with this run's; the ratio is.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Sequence
from dataclasses import dataclass
from itertools import pairwise

from archbench.metrics import LATENCY
from archbench.render.markdown import md_table
from archbench.render.units import significant
from archbench.results import RunResult
from archbench.tables import latency_spread, pivot

PUBLISHED_SOURCE = ("PaddleDetection `configs/picodet/legacy_model/README.md` (PP-PicoDet 2021 model zoo): "
                    "Snapdragon 865, 4 threads, FP16, ncnn and Paddle Lite; FLOPs ~ 2 x MACs "
                    "(docs/reference.md section 8.1)")
PUBLISHED_HARDWARE = "Snapdragon 865 (ARM), 4 threads, FP16"


@dataclass(frozen=True)
class PublishedModel:
    """One row of the PicoDet model zoo, as the zoo publishes it, and the variant it describes."""

    model: str
    variant: str  # archbench's variant of the same architecture
    resolution: int
    params_m: float
    flops_g: float  # the zoo's "FLOPs", about 2 x MACs
    ncnn_ms: float
    paddle_lite_ms: float


PUBLISHED: tuple[PublishedModel, ...] = (
    PublishedModel("PicoDet-S", "picodet_s", 320, 0.99, 0.73, 8.13, 6.65),
    PublishedModel("PicoDet-S", "picodet_s", 416, 0.99, 1.24, 12.37, 9.82),
    PublishedModel("PicoDet-M", "picodet_m", 320, 2.15, 1.48, 11.27, 9.61),
    PublishedModel("PicoDet-M", "picodet_m", 416, 2.15, 2.50, 17.39, 15.88),
    PublishedModel("PicoDet-L", "picodet_l", 320, 3.30, 2.23, 15.26, 13.42),
    PublishedModel("PicoDet-L", "picodet_l", 416, 3.30, 3.76, 23.36, 21.85),
    PublishedModel("PicoDet-L", "picodet_l", 640, 3.30, 8.91, 54.11, 50.55),
    PublishedModel("PicoDet-ShuffleNetV2-1x", "picodet_shufflenetv2", 416, 1.17, 1.53, 15.06, 10.63),
)

#: (numerator, denominator) variants whose latency ratio the zoo lets us compare:
#: the ShuffleNetV2 backbone against ESNet-S under the same neck and head width.
PUBLISHED_PAIRS: tuple[tuple[str, str], ...] = (("picodet_shufflenetv2", "picodet_s"),)

RUNTIMES = {"ncnn": "ncnn_ms", "Paddle Lite": "paddle_lite_ms"}


def published(variant: str, resolution: int) -> PublishedModel | None:
    return next((p for p in PUBLISHED if p.variant == variant and p.resolution == resolution), None)


def published_ratio(numerator: str, denominator: str, resolution: int, runtime: str) -> float | None:
    """Published latency of ``numerator`` / that of ``denominator`` on ``runtime`` ("ncnn" or
    "Paddle Lite") at ``resolution``; None where the zoo lists either model at another input."""
    top, bottom = published(numerator, resolution), published(denominator, resolution)
    if top is None or bottom is None:
        return None
    return float(getattr(top, RUNTIMES[runtime])) / float(getattr(bottom, RUNTIMES[runtime]))


def _finite(value: object) -> bool:
    return isinstance(value, numbers.Real) and not math.isnan(float(value))  # numpy scalars included


def measured_ratio(result: RunResult, numerator: str, denominator: str, resolution: int, form: str) -> float | None:
    """Measured median latency of ``numerator`` / that of ``denominator`` in ``form``, or None."""
    table = pivot(result, LATENCY.name, form)
    if table.empty or resolution not in table.columns or not {numerator, denominator} <= set(table.index):
        return None
    top, bottom = table.loc[numerator, resolution], table.loc[denominator, resolution]
    return float(top) / float(bottom) if _finite(top) and _finite(bottom) and bottom > 0 else None


# -- ranking -------------------------------------------------------------------------
def latency_rankings(result: RunResult, resolution: int) -> dict[str, list[str]]:
    """Form -> variants fastest first at ``resolution``, over the variants measured in every form."""
    tables = {form: pivot(result, LATENCY.name, form) for form in result.forms}
    columns = {form: t[resolution].dropna() for form, t in tables.items() if not t.empty and resolution in t.columns}
    if len(columns) < 2:
        return {}
    common = set.intersection(*(set(c.index) for c in columns.values()))
    return {form: [str(v) for v in c[c.index.isin(common)].sort_values(kind="stable").index]
            for form, c in columns.items()}


def _order_text(result: RunResult, form: str, resolution: int, order: Sequence[str]) -> str:
    """``a < b ≈ c``: "≈" where neighbours' medians differ by less than the larger spread."""
    medians, spread = pivot(result, LATENCY.name, form), latency_spread(result, form)
    text = f"`{order[0]}`"
    for faster, slower in pairwise(order):
        gap = float(medians.loc[slower, resolution]) - float(medians.loc[faster, resolution])
        noise = [float(spread.loc[v, resolution]) for v in (faster, slower)
                 if not spread.empty and v in spread.index and resolution in spread.columns
                 and _finite(spread.loc[v, resolution])]
        text += f" {'≈' if noise and gap < max(noise) else '<'} `{slower}`"
    return text


def ranking_verdict(rankings: dict[str, list[str]]) -> str:
    """One line: whether every form orders the variants the same way, and if not, how."""
    orders: dict[tuple[str, ...], list[str]] = {}
    for form, order in rankings.items():
        orders.setdefault(tuple(order), []).append(form)
    if len(orders) == 1:
        return f"same order in all {len(rankings)} forms"
    return "**changes**: " + "; ".join(f"{', '.join(forms)}: {' < '.join(f'`{v}`' for v in order)}"
                                       for order, forms in orders.items())


def ranking_section(result: RunResult) -> str | None:
    resolutions = sorted({int(r["resolution"]) for r in result.records})
    rankings = {res: latency_rankings(result, res) for res in resolutions}
    rankings = {res: r for res, r in rankings.items() if r and len(next(iter(r.values()))) >= 2}
    if not rankings:
        return None
    forms = [f for f in result.forms if any(f in r for r in rankings.values())]
    rows = [[f"`{form}`", *(_order_text(result, form, res, r[form]) if form in r else "-"
                            for res, r in rankings.items())] for form in forms]
    verdicts = "\n".join(f"- {res} px: {ranking_verdict(r)}." for res, r in rankings.items())
    return ("## Ranking of variants by latency, per form\n\n"
            "Fastest first, over the variants measured in every form at that resolution; "
            "≈: the two medians differ by less than the larger spread.\n\n"
            + md_table(["form", *(f"{res} px" for res in rankings)], rows, "l" * (1 + len(rankings)))
            + f"\n\n{verdicts}")


# -- published reference ---------------------------------------------------------------
def _measured(result: RunResult, column: str, variant: str, resolution: int, form: str | None = None) -> float | None:
    table = pivot(result, column, form)
    if table.empty or variant not in table.index or resolution not in table.columns:
        return None
    value = table.loc[variant, resolution]
    return float(value) if _finite(value) else None


def _num(value: float | None, digits: int = 3) -> str:
    return "-" if value is None else significant(value, digits)


def published_section(result: RunResult) -> str | None:
    variants = set(result.settings.get("variants", [])) | {r["variant"] for r in result.records}
    pairs = [(top, bottom) for top, bottom in PUBLISHED_PAIRS if top in variants and bottom in variants]
    if not pairs:  # the published milliseconds alone compare with nothing measured here
        return None
    rows_of = [p for p in PUBLISHED if p.variant in variants]
    forms = result.forms
    rows = []
    for p in rows_of:
        params = _measured(result, "params", p.variant, p.resolution)
        macs = _measured(result, "macs", p.variant, p.resolution)
        rows.append([p.model, f"`{p.variant}`", str(p.resolution), f"{p.params_m:.2f}", f"{p.flops_g:.2f}",
                     f"{p.ncnn_ms:.2f}", f"{p.paddle_lite_ms:.2f}",
                     _num(None if params is None else params / 1e6), _num(None if macs is None else 2 * macs / 1e9),
                     *(_num(_measured(result, LATENCY.name, p.variant, p.resolution, f)) for f in forms)])
    header = ["published model", "variant", "px", "params (M)", "FLOPs (G)", "ncnn ms", "Paddle Lite ms",
              "here: params (M)", "here: 2 x MACs (G)", *(f"here: {f} ms" for f in forms)]
    blocks = [
        "## Published reference: PicoDet model zoo\n\n"
        f"Source: {PUBLISHED_SOURCE}. **The published milliseconds are other hardware** "
        f"({PUBLISHED_HARDWARE}) and cannot be compared with this run's; ratios between models can.\n\n"
        + md_table(header, rows, "lll" + "r" * (len(header) - 3))
    ]
    blocks += [_ratio_table(result, top, bottom) for top, bottom in pairs]
    return "\n\n".join(blocks)


def _ratio_table(result: RunResult, top: str, bottom: str) -> str:
    """Published and measured latency ratios ``top`` / ``bottom``, per resolution."""
    run_resolutions = {int(r["resolution"]) for r in result.records}
    zoo = {p.resolution for p in PUBLISHED if p.variant == top} & {p.resolution for p in PUBLISHED if p.variant == bottom}
    resolutions = sorted(run_resolutions | zoo)
    rows = [[f"published, {runtime}", f"{PUBLISHED_HARDWARE} (other hardware)",
             *(_num(published_ratio(top, bottom, res, runtime), 3) for res in resolutions)] for runtime in RUNTIMES]
    threads = result.settings.get("threads", 1)
    for form in result.forms:
        precision = next((str(r["form_precision"]) for r in result.records
                          if r.get("form", "eager") == form and r.get("form_precision")), "fp32")
        rows.append([f"measured, {form}", f"this machine, {threads} thread(s), {precision}",
                     *(_num(measured_ratio(result, top, bottom, res, form), 3) for res in resolutions)])
    statics = []
    for column, label, zoo_attr in (("params", "params", "params_m"), ("macs", "MACs (published: FLOPs)", "flops_g")):
        for res in sorted(zoo):
            here_top, here_bottom = _measured(result, column, top, res), _measured(result, column, bottom, res)
            pub_top, pub_bottom = published(top, res), published(bottom, res)
            assert pub_top is not None and pub_bottom is not None
            pub = float(getattr(pub_top, zoo_attr)) / float(getattr(pub_bottom, zoo_attr))
            here = None if not here_top or not here_bottom else here_top / here_bottom
            statics.append(f"{label} at {res} px: published {pub:.3f}, here {_num(here, 3)}")
    header = ["latency ratio", "where", *(f"{res} px" for res in resolutions)]
    return (f"**Latency of `{top}` / latency of `{bottom}`** (above 1: `{top}` is slower)\n\n"
            + md_table(header, rows, "ll" + "r" * len(resolutions))
            + ("\n\nSame ratio of " + "; ".join(statics) + "." if statics else ""))


def ranking_sections(result: RunResult) -> list[str]:
    """The report's ranking and published-reference sections (markdown blocks; possibly none)."""
    return [s for s in (ranking_section(result), published_section(result)) if s]

