"""The report of a sweep: report.md and report.html with the circuits judged (and those left out) first, then the
headline findings, the tables and plots, plus the tables as CSV. report.md links its plots by relative path
(plots/*.png); report.html carries them inside itself (data URIs), so it reads the same as a single file anywhere,
MLflow's artifact viewer included."""

from __future__ import annotations

import base64
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import markdown

from analysis import plots
from analysis.composition import ALL_LAYERS
from analysis.findings import Finding, Headline, findings, headline
from analysis.overlap import WHOLE_MODEL
from analysis.pipeline import Analysis
from analysis.snapshots import WELL_BELOW, Snapshot, flags
from analysis.tables import GAP, Column, estimate, markdown_table, number, percent, write_csv, yes_no
from analysis.window import CONTROLS, POOLED
from circuitlib.types import MASKED_VARIANTS, VARIANTS

PLOTS = "plots"
TABLES = "tables"
SECTIONS = (
    "Circuits judged",
    "Headline findings",
    "Missing pieces",
    "Size window",
    "Overlap",
    "Composition",
    "Discovery",
    "Tables",
)
HTML = """<!doctype html>
<html><head><meta charset="utf-8"><title>{title}</title>
<style>
body {{ font-family: sans-serif; max-width: 1100px; margin: 2em auto; padding: 0 1em; line-height: 1.4; }}
table {{ border-collapse: collapse; margin: 0.5em 0 1.5em; font-size: 0.9em; }}
th, td {{ border: 1px solid #ccc; padding: 0.2em 0.5em; text-align: left; }}
th {{ background: #f3f3f3; }}
img {{ max-width: 100%; }}
</style></head>
<body>
{body}
</body></html>
"""


@dataclass(frozen=True)
class Report:
    """The files of a report, all under `folder`."""

    folder: Path
    markdown: Path
    html: Path
    plots: list[Path]
    tables: list[Path]
    headline: Headline


def _faithfulness(s: Snapshot) -> str:
    """Faithfulness with its interval where the discovery recorded one."""
    interval = "" if number(s.faithfulness_low) == GAP else f" [{s.faithfulness_low:.3g}, {s.faithfulness_high:.3g}]"
    return number(s.faithfulness) + interval


def _complement(s: Snapshot) -> str:
    """The complement's accuracy, with its floor (the empty complement's) where the discovery recorded it."""
    floor = number(s.complement_floor)
    return number(s.complement_accuracy) + ("" if floor == GAP else f" ({floor})")


def _flag(s: Snapshot) -> str:
    """A snapshot's honesty flags, short."""
    marks = [f"below {WELL_BELOW:g} × target"] if s.below_target else []
    marks += [f"same snapshot as {', '.join(f'{t:g}' for t in s.shares_with)}"] if s.shares_with else []
    return "; ".join(marks) or GAP


def _circuits(a: Analysis) -> str:
    n, excluded = len(a.snapshots), a.excluded
    text = (
        f"Findings are judged only from faithful circuits: held-out faithfulness (agreement with the full model) "
        f"of at least {a.options.faithfulness_threshold:g} (`--faithfulness`). "
    )
    if not n:
        text += "The sweep has no circuit to judge from.\n"
    elif not excluded:
        text += f"All {n} circuits are faithful and used.\n"
    else:
        columns: list[Column] = [
            ("circuit", lambda s: s.source),
            ("dataset", lambda s: s.dataset),
            ("seed", lambda s: str(s.seed)),
            ("target density", lambda s: f"{s.target:g}"),
            ("actual density", lambda s: number(s.density, 4)),
            ("faithfulness", _faithfulness),
            ("why excluded", lambda s: s.excluded),
        ]
        text += (
            f"**{len(excluded)} of {n} circuits excluded** from every finding, {n - len(excluded)} used:\n\n"
            + markdown_table(columns, excluded)
        )
    text += _optimism(a.snapshots)
    lines = flags(a.snapshots)
    text += "\n### Snapshots\n\n"
    if not lines:
        return text + (
            f"No snapshot falls well below its target (actual density < {WELL_BELOW:g} × target) and no "
            f"two targets share one snapshot.\n"
        )
    return text + (
        "Snapshots that do not stand for their target alone (also marked on the size-window plot):\n\n"
        + "\n".join(f"- {line}" for line in lines)
        + "\n"
    )


def _optimism(snapshots: Sequence[Snapshot]) -> str:
    """A note where faithfulness was chosen as the best of several looks at the rows that then report it."""
    chosen = [s for s in snapshots if s.optimistic]
    if not chosen:
        return ""
    looks = max(int(s.selected_among) for s in chosen)
    return (
        f"\n{len(chosen)} of {len(snapshots)} snapshots were chosen as the most faithful of several held-out "
        f"evaluations (up to {looks}) on the very rows that give their faithfulness, so it is optimistic by up to "
        f"about those rows' sampling noise; `discovery.select_rows` chooses on held-out rows of their own.\n"
    )


def _findings(items: Sequence[Finding]) -> str:
    columns: list[Column] = [
        ("#", lambda nf: str(nf[0])),
        ("paper's claim", lambda nf: nf[1].claim),
        ("this sweep", lambda nf: nf[1].result),
        ("circuits used", lambda nf: str(nf[1].circuits_used)),
        ("excluded", lambda nf: str(nf[1].circuits_excluded)),
        ("verdict", lambda nf: f"**{nf[1].verdict}**"),
    ]
    return markdown_table(columns, list(enumerate(items, 1)))


def _missing(notes: Sequence[str]) -> str:
    if not notes:
        return "None: every trial finished and every target density was reached.\n"
    return (
        "Shown as gaps (—, grey or a broken line) in the tables and plots below.\n\n"
        + "\n".join(f"- {n}" for n in notes)
        + "\n"
    )


def _window(a: Analysis) -> str:
    o = a.options
    rows = a.window_rows
    per_source = "; ".join(f"{w.scope}: {w.describe()}" for w in a.windows[1:]) or "none"
    learning: list[Column] = [
        ("circuits", lambda r: r.scope),
        ("density", lambda r: f"{r.density:g}"),
        ("faithful circuits", lambda r: str(r.circuits)),
        ("actual density", lambda r: number(r.actual_density)),
        ("faithfulness", lambda r: number(r.faithfulness)),
        *[(v, lambda r, v=v: estimate(r.drop[v])) for v in VARIANTS],
        *[(f"{v} − circuit", lambda r, v=v: estimate(r.gap[v])) for v in CONTROLS],
        ("requests (pairs)", lambda r: str(r.gap["complement"].n) if r.gap["complement"] else GAP),
        ("in window", lambda r: yes_no(r.in_window)),
    ]
    success: list[Column] = [
        ("circuits", lambda r: r.scope),
        ("density", lambda r: f"{r.density:g}"),
        *[(f"success {v}", lambda r, v=v: percent(r.success[v])) for v in VARIANTS],
        *[(f"NLL(true) pre, {v}", lambda r, v=v: number(r.knowledge[v])) for v in MASKED_VARIANTS],
    ]
    return (
        f"Estimated window (all circuits pooled): **{a.window.describe()}**: the densities where the complement − "
        f"circuit gap in learning has its {o.confidence:.0%} interval above 0 and faithfulness is at least "
        f"{o.faithfulness_threshold:g}. Per dataset: {per_source}. Only faithful circuits are pooled; the plot's "
        f"x axis is their actual density (labelled with the target).\n\n"
        f"Learning is the drop in NLL of the new target (pre − post, mean per token); intervals are "
        f"{o.confidence:.0%} percentile bootstrap intervals over requests ({o.n_boot} resamples, seed {o.seed}), "
        f"paired by request where both variants edited the same ones. The `full` model is the same reference at "
        f"every density.\n\n"
        f"![size window]({PLOTS}/size_window.png)\n\n"
        f"### Learning of the new target\n\n{markdown_table(learning, rows)}\n"
        f"### Edit success and pre-edit knowledge\n\n"
        f"Success is the efficacy score after the edit; pre-edit knowledge is the NLL of the true target before it "
        f"(lower: the variant knows the fact better).\n\n{markdown_table(success, rows)}"
    )


def _baselines(a: Analysis) -> str:
    columns: list[Column] = [
        ("density", lambda b: b.scope),
        ("cross-dataset Jaccard", lambda b: estimate(b.cross_dataset)),
        ("pairs", lambda b: str(b.cross_dataset.n) if b.cross_dataset else "0"),
        ("stability Jaccard", lambda b: estimate(b.stability)),
        ("pairs", lambda b: str(b.stability.n) if b.stability else "0"),
        ("chance", lambda b: estimate(b.chance)),
        ("cross − chance", lambda b: estimate(b.above_chance)),
        ("stability − cross", lambda b: estimate(b.below_stability)),
    ]
    return (
        "Whole-model Jaccard of faithful circuits of the same target density: pairs from different datasets beside "
        "chance (independent masks of the same densities) and stability (the same dataset's circuits from other "
        "seeds; none with one seed per dataset). Moderate overlap lies significantly above chance and significantly "
        "below stability. In the `all` row, cross − chance pools every cross-dataset pair and stability − cross is "
        f"taken within each density, then averaged. Intervals: {a.options.confidence:.0%} percentile bootstrap over "
        "pairs (pairs share circuits, so read them as rough).\n\n" + markdown_table(columns, a.baselines)
    )


def _overlap(a: Analysis) -> str:
    columns: list[Column] = [
        ("density", lambda r: f"{r.density:g}"),
        ("A", lambda r: r.a),
        ("B", lambda r: r.b),
        ("module", lambda r: r.module),
        ("Jaccard", lambda r: number(r.jaccard)),
        ("chance", lambda r: number(r.expected_jaccard)),
        ("ratio", lambda r: number(r.jaccard_ratio)),
        ("overlap coef.", lambda r: number(r.overlap_coefficient)),
        ("chance", lambda r: number(r.expected_overlap_coefficient)),
        ("ratio", lambda r: number(r.overlap_ratio)),
    ]
    whole = [r for r in a.overlaps if r.module == WHOLE_MODEL]
    by_module = [r for r in a.overlaps if r.module != WHOLE_MODEL]
    return (
        f"### Against chance and stability\n\n{_baselines(a)}\n### Every pair\n\n"
        "Chance is the expectation for independent random masks of the same densities; ratio = value / chance "
        "(above 1: the circuits share more than chance). Circuits left out for faithfulness are gaps (—, grey).\n\n"
        f"![overlap heatmaps]({PLOTS}/overlap.png)\n\n"
        f"### Whole model\n\n{markdown_table(columns, whole)}\n"
        f"### By module type\n\n{markdown_table(columns, by_module)}"
    )


def _composition(a: Analysis, h: Headline) -> str:
    columns: list[Column] = [
        ("circuit", lambda e: e.source),
        ("density", lambda e: f"{e.density:g}"),
        ("module type", lambda e: e.module_type),
        ("share of circuit", lambda e: percent(e.share_of_circuit)),
        ("fraction of own weights kept", lambda e: percent(e.fraction_kept)),
        ("share of model", lambda e: percent(e.share_of_model)),
        ("over-representation", lambda e: number(e.representation)),
    ]
    by_module = [e for e in a.composition if e.layer == ALL_LAYERS]
    return (
        f"Over-represented module types (share of circuit / share of model > 1 on average): "
        f"**{', '.join(h.over_represented) or 'none'}**. Per-layer figures of every circuit are in "
        f"[{TABLES}/composition.csv]({TABLES}/composition.csv).\n\n"
        f"![composition by layer]({PLOTS}/composition_by_layer.png)\n\n"
        f"### By module type\n\n{markdown_table(columns, by_module)}"
    )


def _discovery(a: Analysis) -> str:
    columns: list[Column] = [
        ("circuit", lambda s: s.source),
        ("target density", lambda s: f"{s.target:g}"),
        ("density", lambda s: number(s.density, 4)),
        ("kept weights", lambda s: f"{s.kept:,}"),
        ("step", lambda s: number(s.step, 6)),
        ("faithfulness", _faithfulness),
        ("complement acc. (floor)", _complement),
        ("KL(full ‖ circuit)", lambda s: number(s.kl)),
        ("used", lambda s: "yes" if not s.excluded else f"no: {s.excluded}"),
        ("flags", _flag),
    ]
    table = markdown_table(columns, a.snapshots)
    floor = (
        "The floor is the complement's accuracy at its discovery's first step, when the circuit kept every weight and "
        "the complement none of the masked ones: what the weights never masked (the embeddings, the final norm) "
        "predict alone. A complement at its floor has kept nothing of the task.\n"
    )
    return f"![discovery curves]({PLOTS}/discovery.png)\n\n### Circuit snapshots\n\n{table}\n{floor}"


def _markdown(a: Analysis, h: Headline, tables: Sequence[Path]) -> str:
    s, o = a.sweep, a.options
    sources = ", ".join(a.labels.values()) or "none"
    body = {
        "Circuits judged": _circuits(a),
        "Headline findings": _findings(findings(h, o.faithfulness_threshold)),
        "Missing pieces": _missing(a.notes),
        "Size window": _window(a),
        "Overlap": _overlap(a),
        "Composition": _composition(a, h),
        "Discovery": _discovery(a),
        "Tables": "\n".join(f"- [{TABLES}/{t.name}]({TABLES}/{t.name})" for t in tables) + "\n",
    }
    head = (
        f"# Sweep {s.name}: circuits as knowledge edits\n\n"
        f"Experiment `{s.experiment}`, sweep run `{s.run_id}`, model `{s.model or 'unknown'}`. "
        f"Circuits: {sources}; target densities: {', '.join(f'{d:g}' for d in s.densities) or 'none'}; "
        f"{len(s.discoveries)} discovery and {len(s.edits)} edit runs. Claims are those of Ge, Rudzicz and Zhu "
        f'(2024), "What Do the Circuits Mean? A Knowledge Edit View".\n'
    )
    return head + "".join(f"\n## {name}\n\n{body[name]}" for name in SECTIONS)


def self_contained(html: str, folder: Path) -> str:
    """`html` with every image under `folder` inlined as a data URI, and links to its tables as plain names (a page
    shown on its own, as MLflow's artifact viewer shows it, cannot follow a relative link)."""

    def inline(match: re.Match[str]) -> str:
        png = base64.b64encode((folder / match[1]).read_bytes()).decode("ascii")
        return f'src="data:image/png;base64,{png}"'

    html = re.sub(rf'src="({PLOTS}/[^"]+\.png)"', inline, html)
    return re.sub(
        rf'<a href="{TABLES}/([^"]+)">[^<]*</a>', rf"<code>{TABLES}/\1</code> (in the analysis run's files)", html
    )


def write_report(a: Analysis, folder: Path) -> Report:
    """Write the tables, plots, report.md and report.html of an analysis into `folder`."""
    folder.mkdir(parents=True, exist_ok=True)
    h = headline(a)
    t = folder / TABLES
    tables = [
        write_csv(t / "window.csv", a.window_rows),
        write_csv(t / "overlap.csv", a.overlaps),
        write_csv(t / "composition.csv", a.composition),
        write_csv(t / "overlap_baselines.csv", a.baselines),
        write_csv(t / "snapshots.csv", a.snapshots),
        write_csv(t / "findings.csv", findings(h, a.options.faithfulness_threshold)),
    ]
    p = folder / PLOTS
    pooled = [r for r in a.window_rows if r.scope == POOLED]
    labels, densities = list(a.labels.values()), a.sweep.densities
    figures = [
        plots.size_window(pooled, a.window, a.snapshots, a.options.faithfulness_threshold, p / "size_window.png"),
        plots.overlap_heatmaps(a.overlaps, labels, densities, p / "overlap.png"),
        plots.composition_by_layer(a.composition, densities, p / "composition_by_layer.png"),
        plots.discovery_curves(a.sweep.discoveries, a.labels, a.snapshots, densities, p / "discovery.png"),
    ]
    text = _markdown(a, h, tables)
    md = folder / "report.md"
    md.write_text(text)
    html = folder / "report.html"
    body = self_contained(markdown.markdown(text, extensions=["tables"]), folder)
    html.write_text(HTML.format(title=f"Sweep {a.sweep.name}", body=body))
    return Report(folder, md, html, figures, tables, h)
