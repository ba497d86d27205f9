"""HTML reports: valid, self-contained, complete; rendered by a real browser where one is installed."""

import re
import shutil
import subprocess
import sys
from pathlib import Path

import html5lib
import numpy as np
import pytest

from difftest.backends import get_backend
from difftest.campaign import Campaign, CampaignConfig
from difftest.cli import main
from difftest.formats import BINARY32
from difftest.report import render
from difftest.store import read_results
from difftest.summary import format_summary


class RaisingBackend:
    """A backend that fails on every case: its verdicts are `error`."""

    name = "broken-float32"
    format = BINARY32
    device = "cpu"

    def conv2d_backward(self, x, w, d, stride, padding):
        raise RuntimeError("kernel launch failed")

    def environment(self):
        return {"backend": self.name}


def campaign(out: Path, backends, examples: int, rounds: int = 1, seed: int = 0) -> Path:
    """A campaign bounded by work (examples × rounds) and a seed, never by time."""
    Campaign(CampaignConfig(backends=backends, out=out, database=None, progress=False, examples=examples,
                            rounds=rounds, seed=seed)).run()
    return out


@pytest.fixture(scope="module")
def result_sets(tmp_path_factory):
    base = tmp_path_factory.mktemp("results")
    return {
        "pass-only": campaign(base / "pass", [get_backend("nf-binary16")], 15),
        # seed 1: numpy's orders show within its 60 draws
        "mixed": campaign(base / "mixed", [get_backend("numpy-float32"), get_backend("nf-binary32")], 30, rounds=2, seed=1),
        "error": campaign(base / "error", [RaisingBackend(), get_backend("nf-binary32")], 10),
        "empty": campaign(base / "empty", [], 1),  # no backend: a campaign that checks no case
    }


def parse(path: Path):
    return html5lib.HTMLParser(strict=True, namespaceHTMLElements=False).parse(path.read_text(encoding="utf-8"))


def assert_self_contained(doc, text: str):
    assert doc.findall(".//script") == [] and doc.findall(".//link") == [] and doc.findall(".//iframe") == []
    for el in doc.iter():
        for attr in ("src", "href", "{http://www.w3.org/1999/xlink}href", "xlink:href", "action", "data"):
            v = el.get(attr)
            if v is not None:
                assert v.startswith("data:") or v.startswith("#"), (el.tag, attr, v[:60])
    assert not re.search(r"url\((?!#|data:)", text)
    assert "@import" not in text


@pytest.mark.parametrize("name", ["pass-only", "mixed", "error", "empty"])
def test_report_is_valid_self_contained_html_with_every_backend_and_finding(result_sets, tmp_path, name):
    d = result_sets[name]
    out = render([d], tmp_path / "r.html")
    text = out.read_text(encoding="utf-8")
    doc = parse(out)  # strict: raises on any HTML5 parse error
    assert_self_contained(doc, text)
    assert doc.find(".//table[@id='overview']") is not None
    records = read_results(d)
    for b in {r.backend for r in records}:
        assert b in text
    for r in records:
        if r.case_file:
            assert r.case_file in text  # each finding's reproduce command
    if name == "empty":
        assert "checked no case" in text
    if name == "error":
        assert "kernel launch failed" in text and ">error<" in text.replace("\n", "")
    if name == "mixed":
        assert "order" in text and "data:image/png;base64," in text  # a heatmap of the order finding
    if name == "pass-only":
        assert "How much of the certified bound the NF reference uses" in text


def test_a_baseline_marks_new_findings_and_compares_like_with_like(result_sets, tmp_path, capsys):
    # a baseline that ran the same backends and settings, and saw only passes
    base = tmp_path / "base"
    shutil.copytree(result_sets["mixed"], base)
    lines = (base / "results.jsonl").read_text().splitlines()
    (base / "results.jsonl").write_text("\n".join(l for l in lines if '"verdict": "order"' not in l
                                                   and '"verdict": "precision"' not in l) + "\n")
    out = tmp_path / "r.html"
    assert main(["report", str(result_sets["mixed"]), "-o", str(out), "--baseline", str(base)]) == 0
    text = out.read_text()
    n_findings = int(re.search(r"Findings \((\d+)\)", text).group(1))
    assert n_findings > 0 and f"<b>{n_findings}</b> new since the baseline" in text
    assert "Same backends, formats and campaign settings as the baseline" in text
    # a baseline that never ran these backends: nothing is "new", each is "not in baseline"
    assert main(["report", str(result_sets["mixed"]), str(result_sets["error"]), "-o", str(out),
                 "--baseline", str(result_sets["pass-only"])]) == 0
    text = out.read_text()
    assert "<b>0</b> new since the baseline" in text and '<span class="new">not in baseline</span>' in text
    assert "backends not in the baseline: broken-float32, nf-binary32, numpy-float32" in text
    assert "backends only in the baseline: nf-binary16" in text
    out2 = tmp_path / "same.html"
    main(["report", str(result_sets["mixed"]), "-o", str(out2), "--baseline", str(result_sets["mixed"])])
    assert "<b>0</b> new since the baseline" in out2.read_text()


def test_findings_are_one_per_key_and_counted_alike_in_the_summary_and_the_report(result_sets, tmp_path):
    records = read_results(result_sets["mixed"])
    keys = {(r.backend, g, gr.verdict) for r in records for g, gr in r.gradients.items() if gr.verdict != "pass"}
    text = render([result_sets["mixed"]], tmp_path / "r.html").read_text()
    assert f"Findings ({len(keys)})" in text
    assert f"{len(keys)} finding" in format_summary(records)


def test_the_report_imports_none_of_the_mathematics():
    code = ("import sys, difftest.report; "
            "print(sorted(m for m in sys.modules if m.startswith('difftest.')))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    loaded = set(eval(out))
    math_modules = {"difftest." + m for m in ("case", "check", "compare", "exact", "replay", "orderfree", "lean",
                                               "kernels", "fparith", "formats", "oracles", "backends")}
    assert loaded & math_modules == set()


def test_a_heatmap_draws_the_saved_per_entry_arrays_and_an_old_directory_renders_with_a_note(result_sets, tmp_path):
    old = tmp_path / "old"
    shutil.copytree(result_sets["mixed"], old)
    for f in (old / "cases").glob("*--*.npz"):  # what an older difftest saved: raw outputs only
        with np.load(f) as z:
            raw = {k: z[k] for k in z.files if "__" not in k}
        np.savez(f, **raw)
    text = render([old], tmp_path / "old.html").read_text()
    parse(tmp_path / "old.html")
    assert "data:image/png;base64," not in text and "heatmap is omitted" in text
    assert "data:image/png;base64," in render([result_sets["mixed"]], tmp_path / "new.html").read_text()


def test_run_writes_the_report_at_the_end(tmp_path, capsys):
    assert main(["run", "--backend", "nf-binary16", "--examples", "5", "--rounds", "1", "--out", str(tmp_path), "--no-database", "--quiet"]) == 0
    assert (tmp_path / "report.html").is_file()
    parse(tmp_path / "report.html")


CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser") or shutil.which("google-chrome")


@pytest.mark.skipif(CHROMIUM is None, reason="no Chromium here (Debian package 'chromium')")
def test_a_browser_renders_the_report_without_console_errors_and_the_overview_is_visible(result_sets, tmp_path):
    page = render([result_sets["mixed"]], tmp_path / "r.html")
    shot = tmp_path / "shot.png"
    proc = subprocess.run(
        [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync",
         f"--user-data-dir={tmp_path / 'profile'}", "--enable-logging=stderr", "--v=0",
         "--window-size=1280,800", f"--screenshot={shot}", page.resolve().as_uri()],
        capture_output=True, text=True, timeout=120,
    )
    assert shot.is_file(), proc.stderr[-2000:]
    console = [l for l in proc.stderr.splitlines() if "CONSOLE" in l or "Uncaught" in l]
    assert console == []
    import matplotlib.image as mpimg

    img = (mpimg.imread(shot)[:, :, :3] * 255).astype(int)
    top = img[:800]  # the first screen, no scrolling
    def present(rgb):
        return bool((np.abs(top - np.array(rgb)).sum(axis=2) < 30).any())
    assert present((0x2E, 0x7D, 0x32))  # a pass cell
    assert present((0xF9, 0xA8, 0x25))  # the order cell of numpy-float32
