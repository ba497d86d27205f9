"""Self-contained HTML discrepancy reports from result directories.

A report reads only files, through :mod:`difftest.store` (every path confined to its directory,
every field checked), never live backends, and imports none of the mathematics: the heatmaps
draw the per-entry error and bounds saved next to each non-``pass`` result's raw outputs
(result directories written before those arrays existed render without heatmaps, with a
note). Plots are matplotlib, embedded (SVG inline, heatmaps as PNG data URIs); the page
has no script and fetches nothing.
"""

from __future__ import annotations

import base64
import html
import io
import json
import math
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..records.expectations import REACHED_CASES, Expected, Expectations
from ..records.claims import COLUMNS, cell
from ..judge.explain import (format_ratio, geometry_text, plural, ratios_text, reproduce_command, sampled_of, violations_text,
                      worst_text)
from ..values.geometry import GRADIENTS, Geometry
from ..values.outcome import EntryArrays, ResultRecord, as_float
from ..records.lock import holder_text, lock_holder
from ..records.results import cases_per_backend, findings, summarize
from ..judge.sampling import sample_text
from ..records.store import (campaigns_of, confined, read_campaign, read_environments, read_expected, read_fingerprints,
                    read_model, read_results)
from ..values.verdicts import MEANING, SEVERITY, VERDICTS, is_finding, worst_verdict

COLORS = {"pass": "#2e7d32", "order": "#f9a825", "domain": "#607d8b", "precision": "#c62828", "error": "#6a1b9a", "unsupported": "#9e9e9e"}


def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _svg(fig) -> str:
    buf = io.StringIO()
    fig.savefig(buf, format="svg", bbox_inches="tight")
    _plt().close(fig)
    text = buf.getvalue()
    return text[text.index("<svg"):]  # drop the XML prolog and doctype: inline SVG


def _png_data_uri(fig) -> str:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110, bbox_inches="tight")
    _plt().close(fig)
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode()


def _fmt(x, digits: int = 4) -> str:
    try:
        v = as_float(x)
    except (TypeError, ValueError):
        return html.escape(str(x))
    if math.isinf(v) or math.isnan(v):
        return str(v)
    if v != 0 and (abs(v) < 1e-3 or abs(v) >= 1e5):
        return f"{v:.{digits}e}"
    return f"{v:.{digits}g}"


# --- figures -------------------------------------------------------------------------------

def ratio_histograms(records: list[dict], backends: list[str]) -> str:
    """Per backend × gradient, the histogram of per-case ``max_ratio`` on a log scale (over the
    cases that requested the gradient; "not requested" where none did)."""
    plt = _plt()
    fig, axes = plt.subplots(len(backends), 3, figsize=(9, 1.6 * len(backends) + 0.6), squeeze=False, sharex=True)
    edges = np.logspace(-6, 3, 37)
    for i, b in enumerate(backends):
        rows = [r for r in records if r.backend == b]
        for j, g in enumerate(GRADIENTS):
            ax = axes[i][j]
            ratios = np.array([r.gradients[g].max_ratio for r in rows if g in r.gradients])
            ratios = np.clip(ratios[np.isfinite(ratios)], edges[0], edges[-1])
            ax.hist(ratios, bins=edges, color="#546e7a")
            if not any(g in r.gradients for r in rows):
                ax.text(0.5, 0.5, "not requested", transform=ax.transAxes, ha="center", va="center", fontsize=8,
                        color="#666")
            ax.axvline(1.0, color=COLORS["precision"], lw=1)
            ax.set_xscale("log")
            ax.tick_params(labelsize=7)
            if i == 0:
                ax.set_title(g, fontsize=9)
            if j == 0:
                ax.set_ylabel(b, fontsize=7, rotation=0, ha="right", va="center")
    axes[-1][1].set_xlabel("max |backend - exact| / TorchLean bound per case (red line: the bound)", fontsize=8)
    fig.tight_layout()
    return _svg(fig)


def _grid(t: np.ndarray) -> np.ndarray:
    """A tensor as one 2-D image: ``(a, b, c, d)`` -> a × b tiles of c × d, NaN separators."""
    if t.ndim == 1:
        return t[None, :]
    if t.ndim == 2:
        return t
    a, b, c, d = t.shape
    img = np.full((a * (c + 1) - 1, b * (d + 1) - 1), np.nan)
    for i in range(a):
        for j in range(b):
            img[i * (c + 1): i * (c + 1) + c, j * (d + 1): j * (d + 1) + d] = t[i, j]
    return img


def heatmap(ratio: np.ndarray, title: str) -> str:
    """error / bound over a gradient tensor, log scale; entries beyond 1 boxed."""
    plt = _plt()
    from matplotlib.colors import LinearSegmentedColormap

    img = _grid(np.asarray(ratio, dtype=float))
    with np.errstate(divide="ignore"):
        logr = np.log10(np.clip(img, 1e-6, 1e6))
    cmap = LinearSegmentedColormap.from_list("r", ["#e8f5e9", "#81c784", "#fff59d", "#ef5350", "#b71c1c"]).with_extremes(bad="#ffffff")
    h, w = img.shape
    fig, ax = plt.subplots(figsize=(min(8, 1.5 + 0.18 * w), min(6, 0.8 + 0.18 * h)))
    im = ax.imshow(np.ma.masked_invalid(logr), cmap=cmap, vmin=-4, vmax=2, interpolation="nearest", aspect="auto")
    ys, xs = np.nonzero(np.nan_to_num(img) > 1)
    ax.scatter(xs, ys, marker="s", s=12, facecolors="none", edgecolors="black", linewidths=0.6)
    ax.set_xticks([])
    ax.set_yticks([])
    ax.set_title(title, fontsize=8)
    cb = fig.colorbar(im, ax=ax, fraction=0.05)
    cb.set_label("log10(error / bound)", fontsize=7)
    cb.ax.tick_params(labelsize=7)
    return _png_data_uri(fig)


# --- data for the template ------------------------------------------------------------------

@dataclass
class Detail:
    record: ResultRecord
    gradient: str
    verdict: str
    command: str
    shrunk: bool
    status: str = ""  # with a baseline: "new", "not in baseline" (its backend did not run there) or ""
    expected: Expected | None = None  # the declaration that accepts this finding
    heatmap: str = ""
    note: str = ""
    largest_command: str = ""  # the replay of the largest searched case that showed it, where shrunk from it
    worst: dict = field(default_factory=dict)
    layer: str = ""  # in a model's result directory (difftest model): the layer the case was captured at


#: The bound a verdict's heatmap is drawn against: the one whose violation decided it.
HEATMAP_BOUND = {"precision": ("bound_order_free", "order-free bound"), "order": ("bound", "TorchLean bound")}


def saved_ratio(d: Path, r: ResultRecord, gradient: str, bound: str) -> tuple[np.ndarray | None, str]:
    """error / ``bound`` per entry, from the arrays saved with the result's raw outputs (a damaged or
    mis-shaped file is a note: the rest of the report renders)."""
    sampled = r.gradients[gradient].sampled
    if sampled:
        return None, (f"judged at sampled entries ({sample_text(gradient, sampled)}): no heatmap of the whole "
                      "gradient; the worst entry above is named by its index in it")
    if not r.outputs_file or not confined(d, r.outputs_file, f"{d}: outputs_file").is_file():
        return None, "no raw outputs saved for this result"
    try:
        with np.load(d / r.outputs_file, allow_pickle=False) as z:
            names = [f"{gradient}__{n}" for n in EntryArrays.NAMES]
            if not all(n in z.files for n in names):
                return None, ("no per-entry error and bounds saved with this result (written by an older "
                              "difftest): the heatmap is omitted; replay the command above to see them")
            want = Geometry.from_dict(r.geometry).shape_of(gradient)
            shapes = [_npy_shape(z, n) for n in names]
            if any(s != want for s in shapes):  # read the header only: a hostile file cannot make us allocate
                return None, f"{r.outputs_file} holds arrays of shapes {shapes}, not the gradient's {want}"
            entries = EntryArrays(*(z[n] for n in names))
        return entries.ratio(bound), ""
    except Exception as exc:  # a report must render even when one file is damaged
        return None, f"could not read {r.outputs_file}: {type(exc).__name__}: {exc}"


def _npy_shape(z, name: str) -> tuple:
    """The shape an array of an ``.npz`` declares in its header, without reading the array."""
    with z.zip.open(name + ".npy") as f:
        version = np.lib.format.read_magic(f)
        read = np.lib.format.read_array_header_1_0 if version == (1, 0) else np.lib.format.read_array_header_2_0
        return tuple(read(f)[0])


#: campaign.json settings that make two result directories comparable.
COMPARED_SETTINGS = ("profile", "limits", "examples_per_round", "rounds", "time_budget_s", "seed", "shard", "version")


@dataclass
class Baseline:
    """An earlier result directory to compare with, like with like."""

    path: Path
    keys: set  # non-pass (backend, gradient, verdict)
    formats: dict  # backend -> format
    campaigns: list
    judged: set = field(default_factory=set)  # (backend, gradient) requested in some case

    @classmethod
    def read(cls, path: Path) -> "Baseline":
        records = read_results(path)
        keys = {(r.backend, g, gr.verdict) for r in records for g, gr in r.gradients.items() if is_finding(gr.verdict)}
        return cls(path, keys, {r.backend: r.format for r in records}, campaigns_of(read_campaign(path)),
                   {(r.backend, g) for r in records for g in r.gradients})

    def status(self, backend: str, fmt: str, gradient: str, verdict: str) -> str:
        """"new" when the baseline ran this backend in this format without the finding; "not in
        baseline" when it did not run it there, or never requested this gradient of it (nothing
        to compare with)."""
        if self.formats.get(backend) != fmt or (backend, gradient) not in self.judged:
            return "not in baseline"
        return "" if (backend, gradient, verdict) in self.keys else "new"

    def differences(self, records: list, campaigns: list) -> list[str]:
        """What differs between these results and the baseline: backends, formats, settings."""
        here = {r.backend: r.format for r in records}
        out = []
        only_here = sorted(set(here) - set(self.formats))
        only_there = sorted(set(self.formats) - set(here))
        if only_here:
            out.append(f"backends not in the baseline: {', '.join(only_here)}")
        if only_there:
            out.append(f"backends only in the baseline: {', '.join(only_there)}")
        for b in sorted(set(here) & set(self.formats)):
            if here[b] != self.formats[b]:
                out.append(f"{b}: format {here[b]} here, {self.formats[b]} in the baseline")
        for key in COMPARED_SETTINGS:
            mine = sorted({json.dumps(c.get(key), sort_keys=True) for c in campaigns})
            theirs = sorted({json.dumps(c.get(key), sort_keys=True) for c in self.campaigns})
            if mine != theirs:
                out.append(f"{key}: {', '.join(mine)} here, {', '.join(theirs)} in the baseline")
        return out


def layer_geometry_text(g: dict) -> str:
    """A layer's geometry record in words (:meth:`Geometry.layer_text`)."""
    return Geometry.from_dict(g).layer_text()


def model_layers(dirs: list[Path], records: list[ResultRecord], origin: dict, backends: list[str]) -> list[dict]:
    """The layer axis of model result directories: per layer (in the model's call order) its
    geometry, multiply-adds, extensions, and per backend its result (None: not judged there)."""
    by_layer: dict = {}
    for r in records:
        by_layer.setdefault((origin[id(r)], r.case_file), {})[r.backend] = r
    out = []
    for d in dirs:
        info = read_model(d)
        for layer in info.get("layers", []):
            key = (Path(d), layer.get("case_file"))
            g = layer.get("geometry") or None
            results = by_layer.get(key, {}) if key[1] else {}
            out.append({"model": info.get("model", ""), "name": layer.get("name", "?"), "skipped": layer.get("skipped", ""),
                        "geometry": layer_geometry_text(g) if g else "", "macs": layer.get("macs"),
                        "extensions": layer.get("extensions") or [],
                        "cells": {b: results.get(b) for b in backends},
                        "worst": worst_verdict(gr.verdict for r in results.values() for gr in r.gradients.values())
                        if results else "",
                        "sampled": any(gr.sampled for r in results.values() for gr in r.gradients.values())})
    return out


def build_context(dirs: list[Path], baseline: Path | None = None, expectations: Expectations | None = None) -> dict:
    """Everything the template shows. ``expectations`` default to those the first directory kept."""
    records: list[dict] = []
    envs: dict = {}
    campaigns: list[dict] = []
    origin: dict[int, Path] = {}
    dirs = [Path(d) for d in dirs]
    unfinished = []
    for d in dirs:
        rs = read_results(d)
        for r in rs:
            origin[id(r)] = d
        records += rs
        envs.update(read_environments(d))
        runs = campaigns_of(read_campaign(d))
        campaigns += runs
        unfinished += [{"source": str(d), "status": c.get("status") or "unknown", "why": _unfinished_why(d, c)}
                       for c in runs if c.get("status") != "complete"]
    base = Baseline.read(Path(baseline)) if baseline is not None else None
    if expectations is None:
        expectations = next((e for e in map(read_expected, dirs) if e.entries), Expectations())
    coverage = expectations.coverage(records)
    table = summarize(records)
    backends = list(table)
    overview = []
    searched = cases_per_backend(records)
    for b in backends:
        cells = table[b]
        worst = worst_verdict(c.worst_verdict for c in cells.values())
        env_ids = sorted({r.environment_id for r in records if r.backend == b and r.environment_id})
        overview.append({"backend": b, "cells": cells, "worst": worst, "searched": searched.get(b, 0),
                         "format": next((r.format for r in records if r.backend == b), ""),
                         "environments": [envs.get(e, {}) for e in env_ids]})

    # findings: one per distinct (backend, gradient, verdict), its (shrunk) reproducer; then the rest
    models = {Path(d): read_model(d) for d in dirs}
    layer_of = {(Path(d), layer.get("case_file")): layer.get("name", "")
                for d, info in models.items() for layer in info.get("layers", [])}

    def detail(r: ResultRecord, g: str, shrunk: bool) -> Detail:
        d = origin[id(r)]
        cmd = (reproduce_command(d / r.case_file, r.backend, r.requested, sampled_of(r.gradients)) if r.case_file
               else "(no case file saved)")
        v = r.gradients[g].verdict
        big = r.largest_case
        big_cmd = (reproduce_command(d / big["case_file"], r.backend, sampled=big.get("sample"))
                   if big and big.get("case_file") else "")
        return Detail(record=r, gradient=g, verdict=v, command=cmd, shrunk=shrunk, largest_command=big_cmd,
                      status=base.status(r.backend, r.format, g, v) if base else "", worst=r.gradients[g].worst or {},
                      expected=expectations.explain_record(r, g), layer=layer_of.get((Path(d), r.case_file), ""))

    found = [detail(r, r.finding.gradient, r.phase == "shrunk") for r in findings(records)]
    found.sort(key=lambda it: (-SEVERITY[it.verdict], -it.record.gradients[it.gradient].max_ratio))
    shown = {(it.record.case_id, it.record.backend, it.gradient) for it in found}
    others = []
    for r in sorted(records, key=lambda r: -_worst_ratio(r)):
        for g, gr in r.gradients.items():
            if is_finding(gr.verdict) and (r.case_id, r.backend, g) not in shown:
                shown.add((r.case_id, r.backend, g))
                others.append(detail(r, g, False))
    for it in found:
        if it.verdict in HEATMAP_BOUND:
            bound, label = HEATMAP_BOUND[it.verdict]
            ratio, note = saved_ratio(origin[id(it.record)], it.record, it.gradient, bound)
            if ratio is not None:
                it.heatmap = heatmap(ratio, f"{it.record.backend} {it.gradient}: error / {label} "
                                            f"(boxed: beyond the bound)")
            it.note = note

    nf_use = []
    for b in backends:
        if b.startswith("nf-"):
            for g in GRADIENTS:
                rs = [r.gradients[g].max_ratio for r in records if r.backend == b and g in r.gradients]
                if rs:
                    nf_use.append({"backend": b, "gradient": g, "cases": len(rs), "median": float(np.median(rs)),
                                   "p90": float(np.percentile(rs, 90)), "max": float(np.max(rs))})

    exceeded = [o for o in overview if is_finding(o["worst"])]
    return {
        "records": records,
        "overview": overview,
        "verdicts": VERDICTS,
        "meaning": MEANING,
        "colors": COLORS,
        "gradients": GRADIENTS,
        "campaigns": campaigns,
        "unfinished": unfinished,
        "sources": [str(d) for d in dirs],
        "baseline": str(baseline) if baseline else "",
        "found": found,
        "others": others,
        "n_others": len(others),
        "n_findings": len(found),
        "n_expected": sum(it.expected is not None for it in found),
        "expectations": expectations,
        "not_seen": [c for c in coverage if c.state == "not seen any more"],
        "not_reached": [c for c in coverage if c.state == "not reached"],
        "reached_cases": REACHED_CASES,
        "n_new": sum(it.status == "new" for it in found),
        "n_not_in_baseline": sum(it.status == "not in baseline" for it in found),
        "comparison": base.differences(records, campaigns) if base else [],
        "plural": plural,
        "histograms": ratio_histograms(records, backends) if records else "",
        "nf_use": nf_use,
        "passed": [o for o in overview if not is_finding(o["worst"])],
        "exceeded": exceeded,
        "batch_extension": any(r.batch_extension for r in records),
        "general_extensions": sorted({e for r in records for e in r.extensions if e != "batch"}),
        "fingerprints": fingerprint_rows(dirs),
        "layers": model_layers(dirs, records, origin, backends),
        "models": [{"model": m.get("model", ""), "input_shape": m.get("input_shape", []), "seed": m.get("seed"),
                    "convolutions": m.get("convolutions")} for m in models.values() if m],
        "fingerprint_columns": [label for _, _, label in COLUMNS],
        "fmt": _fmt,
        "ratio": format_ratio,
        "ratios_text": ratios_text,
        "geometry_text": geometry_text,
        "violations_text": violations_text,
        "worst_text": worst_text,
        "sample_text": sample_text,
    }


def fingerprint_rows(dirs: list[Path]) -> list[dict]:
    """One row per backend × gradient of each directory's ``fingerprints.json`` (written by
    ``difftest fingerprint --out DIR``): the cells of :data:`difftest.claims.COLUMNS` (``?``: the
    probes cannot decide) and the evidence files (paths under the directory)."""
    rows = []
    for d in dirs:
        for b in read_fingerprints(d).get("backends", []):
            g = b["geometry"]
            shape = (f"input ({g.get('N')}, {g.get('C')}, {g.get('H')}, {g.get('W')}), "
                     f"{g.get('kH')}×{g.get('kW')}, stride {g.get('stride')}, padding {g.get('padding')}") if g else ""
            for grad, claims in b["gradients"].items():
                rows.append({"backend": b["backend"], "format": b["format"], "gradient": grad, "geometry": shape,
                             "cells": [cell(claims, k) for k, _, _ in COLUMNS],
                             "evidence": sorted(str(Path(d) / rel) for rel in claims["evidence"].values())})
        for f in read_fingerprints(d).get("failed", []):  # crashed or hung while probed
            rows.append({"backend": f["backend"], "format": "", "gradient": "", "geometry": "", "evidence": [],
                         "cells": [f"not fingerprinted: {f['reason']}"] + [""] * (len(COLUMNS) - 1)})
    return rows


def _unfinished_why(d: Path, info: dict) -> str:
    """Why a run did not finish, in words (``running`` with no live process holding its lock: killed)."""
    status = info.get("status")
    if status == "running":
        holder = lock_holder(d)
        if holder is not None:
            return f"it is still running ({holder_text(holder)}): this report shows what it had written so far"
        return "no process holds its lock any more: it was killed (or its machine stopped) before it finished"
    if status == "interrupted":
        return "it was interrupted (Ctrl-C or a signal) and kept what it had found"
    if status == "crashed":
        return "it stopped on an error" + (f" ({info['error']})" if info.get("error") else "")
    return "its campaign.json says no status" if status is None else f"its status is {status}"


def _worst_ratio(r: ResultRecord) -> float:
    return max(gr.max_ratio for gr in r.gradients.values())


def render(dirs: list[Path], out: Path, baseline: Path | None = None, expectations: Expectations | None = None) -> Path:
    """Write the report for ``dirs`` to ``out`` (one self-contained HTML file)."""
    from jinja2 import Environment, PackageLoader, select_autoescape

    env = Environment(loader=PackageLoader("difftest", "templates"), autoescape=select_autoescape(["html", "j2"]))
    page = env.get_template("report.html.j2").render(**build_context([Path(d) for d in dirs], baseline, expectations))
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_suffix(".tmp")
    tmp.write_text(page, encoding="utf-8")
    tmp.replace(out)
    return out
