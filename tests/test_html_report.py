"""The HTML claims report (harness/html_report.py): built from a synthetic run folder whose plots,
references and verdicts are known, then opened in headless chromium (where installed) to see
that the verdict table and every plot actually render."""

from __future__ import annotations

import base64
import json
import re
import shutil
import struct
import subprocess
from html import unescape
from html.parser import HTMLParser
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import pytest  # noqa: E402

from harness import html_report as report  # noqa: E402

REPO = Path(__file__).resolve().parent.parent
ENV = {"torch": "2.13.0+cpu", "device_name": "Test CPU", "harness_commit": "abc123",
       "kernel_path": {"ATEN_CPU_CAPABILITY": None, "aten_capability": "AVX512"}}


def plot(path: Path, color: str, width: float = 4) -> None:
    fig, ax = plt.subplots(figsize=(width, 3))
    ax.plot([0, 1, 2], [0, 1, 4], color=color)
    ax.set_title(path.stem)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=80)
    plt.close(fig)


def reference(refs: Path, claim: str, verdict: str, **metrics: tuple[float, float]) -> None:
    path = refs / "smoke" / "cpu" / f"{claim}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"schema": 1, "claim": claim, "verdict": verdict, "metrics": {
        n: {"value": v, "abs_tol": tol, "justification": f"band of {n}: test noise", "paper": None}
        for n, (v, tol) in metrics.items()}}))


def make_run(root: Path, name: str = "run-a", x: float = 1.02, verdict: str = "REPRODUCED") -> Path:
    """Two claims: one with two plots and a table, inside its bands; one regressed, with a
    metric out of its band; and a skipped one."""
    run = root / name
    refs = root / "refs"
    reference(refs, "demo.plotted", "REPRODUCED", x=(1.0, 0.1), acc=(0.8, 0.05))
    reference(refs, "demo.regressed", "REPRODUCED", y=(2.0, 0.5))
    plot(run / "demo.plotted" / "curve.png", "tab:blue")
    plot(run / "demo.plotted" / "other.png", "tab:red", width=5)
    (run / "demo.plotted" / "cells.csv").write_text("cell,acc\na,0.81\nb,0.79\n")
    claims = [
        {"claim": "demo.plotted", "verdict": verdict, "reason": "x is near 1",
         "measured": f"x={x}", "paper": "x: 1", "reference": "PASS", "problems": [],
         "metrics": {"x": x, "acc": 0.81}, "metric_papers": {"x": "1"},
         "artifacts": [str(run / "demo.plotted" / f) for f in ("curve.png", "other.png",
                                                                "cells.csv")],
         "statement": "x is about 1 <script>alert('escaped')</script>", "source": "Paper §3",
         "seeds": [0, 1], "observed": {"speedup": 1.5}},
        {"claim": "demo.regressed", "verdict": "NOT_REPRODUCED", "reason": "y moved",
         "measured": "y=3", "paper": "", "reference": "REGRESSED",
         "problems": ["y: measured 3 outside [1.5, 2.5] (reference 2)"],
         "metrics": {"y": 3.0}, "statement": "y is 2", "source": "Paper §4"},
        {"claim": "demo.skipped", "verdict": "SKIPPED", "reason": "no CIFAR under /data",
         "measured": "", "paper": "", "reference": "SKIPPED", "statement": "needs data"},
    ]
    doc = {"profile": "smoke", "dry_run": False, "device_class": "cpu", "environment": ENV,
           "references_dir": str(refs), "claims": claims}
    run.mkdir(parents=True, exist_ok=True)
    (run / "claims.json").write_text(json.dumps(doc))
    return run


class Page(HTMLParser):
    """The parts of the report a reader relies on."""

    def __init__(self) -> None:
        super().__init__()
        self.images: list[dict[str, str]] = []
        self.row_classes: list[str] = []
        self.tags: set[str] = set()
        self.text: list[str] = []

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        self.tags.add(tag)
        if tag == "img":
            self.images.append(a)
        if tag == "tr" and a.get("class"):
            self.row_classes.append(a["class"])

    def handle_data(self, data):
        self.text.append(data)


def parse(html: str) -> Page:
    page = Page()
    page.feed(html)
    return page


def png_size(data: bytes) -> tuple[int, int]:
    assert data[:8] == b"\x89PNG\r\n\x1a\n", "not a PNG"
    return struct.unpack(">II", data[16:24])


def test_report_has_the_summary_each_claim_with_bands_and_plots_and_the_environment(tmp_path):
    run = make_run(tmp_path)
    out = report.write_html(run)
    assert out == run / "report.html"
    html = out.read_text()
    page = parse(html)
    text = " ".join(page.text)
    # the summary first: verdict counts, the regression called out, one row per claim
    assert html.index('id="summary"') < html.index('id="claim-demo-plotted"')
    assert page.row_classes.count("verdict-row") == 3
    assert "REPRODUCED: 1" in text and "NOT_REPRODUCED: 1" in text and "REGRESSED: 1" in text
    assert re.search(r"1\s+claim\(s\) regressed or errored", text)
    # per claim: statement (escaped), source, reason, numbers beside the paper and the band
    assert "&lt;script&gt;alert" in html and "<script>alert" not in html
    assert "Paper §3" in text and "Why REPRODUCED:" in text and "x is near 1" in text
    assert "[0.9, 1.1]" in text and "[0.75, 0.85]" in text  # the reference bands
    assert "band of x: test noise" in text
    assert "y: measured 3 outside [1.5, 2.5]" in text and "OUT OF BAND" in text
    assert "reported, not guarded" in text  # an observed number
    assert "no CIFAR under /data" in text
    # plots embedded, decodable, at their own size; the table inlined
    assert len(page.images) == 2
    sizes = []
    for img in page.images:
        prefix, data = img["src"].split(",", 1)
        assert prefix == "data:image/png;base64"
        sizes.append(png_size(base64.b64decode(data)))
    assert sizes == [(320, 240), (400, 240)]
    assert "cells.csv" in text and "0.81" in text
    # the environment, nested values flattened
    assert "kernel_path.aten_capability" in text and "2.13.0+cpu" in text
    # self-contained: nothing fetched from elsewhere
    assert "link" not in page.tags and not re.search(r'src="(?!data:)', html)


def test_a_moved_run_folder_still_finds_its_plots(tmp_path):
    run = make_run(tmp_path / "old")
    moved = shutil.move(run, tmp_path / "moved")
    page = parse(report.write_html(Path(moved)).read_text())
    assert len(page.images) == 2


def test_a_missing_reference_and_a_missing_plot_are_said(tmp_path):
    run = make_run(tmp_path)
    (tmp_path / "refs" / "smoke" / "cpu" / "demo.plotted.json").unlink()
    (run / "demo.plotted" / "other.png").unlink()
    text = " ".join(parse(report.write_html(run).read_text()).text)
    assert "no reference" in text and "other.png (missing)" in text


def test_not_a_run_folder_is_a_clear_error(tmp_path, capsys):
    with pytest.raises(report.ReportError, match="not a results folder"):
        report.load_run(tmp_path)
    (tmp_path / "claims.json").write_text("{broken")
    assert report.main([str(tmp_path)]) == 2
    assert "malformed" in capsys.readouterr().err


def test_two_runs_compared_metric_by_metric(tmp_path, capsys):
    a = make_run(tmp_path, "run-a", x=1.0)
    b = make_run(tmp_path, "run-b", x=1.25, verdict="NOT_REPRODUCED")
    assert report.main([str(a), str(b)]) == 0
    out = capsys.readouterr().out
    assert re.search(r"demo.plotted\s+verdict\s+REPRODUCED\s+NOT_REPRODUCED\s+changed", out)
    assert re.search(r"demo.plotted\s+x\s+1\s+1.25\s+\+0.25 \(\+25.0%\)", out)
    assert re.search(r"demo.plotted\s+acc\s+0.81\s+0.81\s+0\b", out)
    page = parse((b / "compare.html").read_text())
    assert page.row_classes.count("change-row changed") == 2
    assert any(c.startswith("change-row") for c in page.row_classes)


def test_the_template_ships_with_the_package():
    tomllib = pytest.importorskip("tomllib", reason="tomllib is in the standard library from 3.11")
    data = tomllib.loads((REPO / "pyproject.toml").read_text())
    globs = data["tool"]["setuptools"]["package-data"]["harness"]
    assert any((REPO / "harness").glob(g) for g in globs)
    assert (REPO / "harness" / "templates" / report.TEMPLATE).exists()
    assert any(d.lower().startswith("jinja2") for d in data["project"]["dependencies"])


# ------------------------------------- in a browser ------------------------------------- #

CHROMIUM = next((shutil.which(b) for b in ("chromium", "chromium-browser", "google-chrome")
                 if shutil.which(b)), None)
# Written into the page after it loads: what the browser made of the table and the images.
PROBE = """<script>
window.addEventListener('load', () => {
  const out = document.createElement('pre'); out.id = 'render-check';
  out.textContent = JSON.stringify({
    images: [...document.images].map(i => [i.alt, i.complete, i.naturalWidth, i.naturalHeight,
                                           i.getBoundingClientRect().height]),
    rows: document.querySelectorAll('#verdict-table tbody tr').length,
    tableHeight: document.getElementById('verdict-table').getBoundingClientRect().height});
  document.body.appendChild(out);
});
</script>"""


def chromium(*args: str) -> str:
    result = subprocess.run([CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu",
                             "--hide-scrollbars", *args], capture_output=True, text=True,
                            timeout=120)
    assert result.returncode == 0, result.stderr[-2000:]
    return result.stdout


@pytest.mark.skipif(CHROMIUM is None, reason="chromium is not installed (apt-get install "
                                            "chromium; .ci/run installs it)")
def test_the_report_renders_in_a_browser(tmp_path):
    run = make_run(tmp_path)
    html = report.write_html(run).read_text()
    probed = tmp_path / "probed.html"
    probed.write_text(html.replace("</body>", PROBE + "</body>"))
    dom = chromium("--virtual-time-budget=5000", "--dump-dom", probed.as_uri())
    found = re.search(r'<pre id="render-check">(.*?)</pre>', dom, re.S)
    assert found, dom[-2000:]
    check = json.loads(unescape(found.group(1)))
    assert check["rows"] == 3 and check["tableHeight"] > 50
    assert [(alt, w, h) for alt, _, w, h, _ in check["images"]] == [
        ("curve.png", 320, 240), ("other.png", 400, 240)]
    assert all(done and shown > 100 for _, done, _, _, shown in check["images"])

    shot = tmp_path / "report.png"
    chromium(f"--screenshot={shot}", "--window-size=1280,2400", (run / "report.html").as_uri())
    pixels = plt.imread(shot)[..., :3]
    assert pixels.shape[:2] == (2400, 1280)
    not_white = (pixels < 0.95).any(axis=-1)
    assert not_white.mean() > 0.03, "the screenshot is (almost) blank"
    # the plots' own colours (matplotlib's tab:blue and tab:red lines), which nothing else
    # on the page uses (links are pure blue, the regression pills a darker red)
    def near(rgb):
        return (abs(pixels - [c / 255 for c in rgb]) < 0.08).all(axis=-1)

    blue, red = near((31, 119, 180)), near((214, 39, 40))
    assert blue.sum() > 100 and red.sum() > 100
