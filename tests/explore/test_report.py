"""``shardguard report OUT --html FILE`` on a real scan: data/samples plus a hostile shard
whose texts and ids are HTML/JS injections (dataset text is untrusted input).

The page must be self-contained, show the same views as the notebook, escape every
text, and render in headless Chromium with every plot loaded.
"""

from __future__ import annotations

import base64
import hashlib
import json
import re
import shutil
import subprocess
from html.parser import HTMLParser
from pathlib import Path

import pytest

from shardguard import load_config, scan
from shardguard.cli import main
from shardguard.explore.report import LOADED_SCRIPT

INJECT = ("<img src=x onerror=\"document.body.setAttribute('data-pwned','img')\">"
          "<script>document.body.setAttribute('data-pwned','script')</script>")
# over the default flood size (20), each row one typo'd copy of the same spam (a letter added at
# its own place): edited copies of one text, so the hostile rows form a duplicate_flood
HOSTILE_ROWS = 22
HOSTILE_TEXT = "WIN a prize now, just reply to this message today"


def _chromium() -> str | None:
    for name in ("chromium", "chromium-browser", "google-chrome"):
        path = shutil.which(name)
        if path:
            return path
    return None


@pytest.fixture(scope="module")
def scanned(tmp_path_factory, samples_dir):
    base = tmp_path_factory.mktemp("report")
    data = base / "in"
    shutil.copytree(samples_dir, data, ignore=shutil.ignore_patterns("*.json", "*.md"))
    with open(data / "hostile.jsonl", "w") as f:
        for k in range(HOSTILE_ROWS):
            f.write(json.dumps({"id": f"evil-{k}<b>bold</b>", "label": "ham",
                                "text": f"{INJECT} {HOSTILE_TEXT[:k + 4]}x{HOSTILE_TEXT[k + 4:]} "
                                        "</td></table></style>"}) + "\n")
    out = base / "out"
    cfg = load_config(overrides={"input.id_column": "id", "input.label_column": "label",
                                 "embed.embedder": "hashing"})
    scan([data], out, cfg)
    return base, out


@pytest.fixture(scope="module")
def page(scanned) -> Path:
    base, out = scanned
    path = base / "report.html"
    assert main(["-q", "report", str(out), "--html", str(path)]) == 0
    return path


class _Collect(HTMLParser):
    def __init__(self):
        super().__init__(convert_charrefs=True)
        self.tags: list[tuple[str, dict]] = []
        self.data: list[str] = []
        self.scripts: list[str] = []
        self._in_script = False

    def handle_starttag(self, tag, attrs):
        self.tags.append((tag, dict(attrs)))
        self._in_script = tag == "script"

    def handle_endtag(self, tag):
        self._in_script = False

    def handle_data(self, data):
        (self.scripts if self._in_script else self.data).append(data)


def _parse(path: Path) -> _Collect:
    p = _Collect()
    p.feed(path.read_text(encoding="utf-8"))
    return p


def test_cli_writes_the_page(page, capsys):
    assert page.exists() and page.stat().st_size > 50_000
    assert not list(page.parent.glob(".report.html.*"))  # written atomically, no temp left


def test_page_is_self_contained_and_escapes_untrusted_text(page):
    doc = _parse(page)
    imgs = [a for t, a in doc.tags if t == "img"]
    assert len(imgs) == 3  # counts, score histograms, embedding map
    for a in imgs:
        assert a["src"].startswith("data:image/png;base64,")
        assert base64.b64decode(a["src"].split(",", 1)[1])[:8] == b"\x89PNG\r\n\x1a\n"
    # Nothing loads from elsewhere; the only script is the page's own, pinned by the CSP.
    assert not [a for t, a in doc.tags for k, v in a.items() if k in ("src", "href") and v
                and not v.startswith(("data:", "#"))]
    assert [t for t, _ in doc.tags].count("script") == 1 and doc.scripts == [LOADED_SCRIPT]
    csp = next(a["content"] for t, a in doc.tags if t == "meta" and a.get("http-equiv") == "Content-Security-Policy")
    digest = base64.b64encode(hashlib.sha256(LOADED_SCRIPT.encode()).digest()).decode()
    assert f"script-src 'sha256-{digest}'" in csp and "default-src 'none'" in csp
    # The injected markup arrives as text, never as elements or handlers.
    assert not [a for _, a in doc.tags if any(k.startswith("on") for k in a)]
    assert not [a for t, a in doc.tags if t == "img" and a.get("src") == "x"]
    assert {t for t, _ in doc.tags}.isdisjoint({"b", "iframe", "svg", "object"})
    text = "".join(doc.data)
    assert INJECT in text  # shown literally: in the flagged table and the cluster cards
    assert "evil-0<b>bold</b>" in text


def test_page_shows_every_view(page):
    html = page.read_text(encoding="utf-8")
    doc = _parse(page)
    sections = [a.get("id") for t, a in doc.tags if t == "section"]
    assert sections == ["counts", "scores", "map", "flagged", "clusters", "triggers", "run"]
    text = " ".join(" ".join(doc.data).split())
    assert "2,018 rows" in text  # 1,996 samples + 22 hostile rows
    for shard in ("sms_000.parquet", "extra/sms_002.arrow", "hostile.jsonl"):
        assert shard in text
    assert "flood-a-" in text and "flood-b-" in text
    assert "40 rows · flood" in text and "25 rows · flood" in text and f"{HOSTILE_ROWS} rows · flood" in text
    assert "labels: ham ×25" in text  # the label-flip flood
    assert "No trigger mining in this scan" in text
    assert re.search(r"spectral\s+16\b", text)  # thresholds table
    assert "<mark>" in html  # what flood members change against their root is highlighted


@pytest.mark.skipif(_chromium() is None, reason="chromium is not installed (Debian: apt-get install chromium); "
                    "the page's rendering is checked in headless Chromium")
def test_renders_in_headless_chromium_with_every_image_loaded(page, tmp_path):
    from PIL import Image

    base = [_chromium(), "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
            "--disable-component-update", "--disable-sync", "--no-first-run", "--hide-scrollbars",
            f"--user-data-dir={tmp_path / 'profile'}"]
    url = page.resolve().as_uri()
    dom = subprocess.run([*base, "--dump-dom", url], capture_output=True, text=True, timeout=120)
    assert dom.returncode == 0, dom.stderr[-2000:]
    body = re.search(r"<body[^>]*>", dom.stdout)
    assert body, dom.stdout[:500]
    attrs = dict(re.findall(r'([\w-]+)="([^"]*)"', body.group(0)))
    assert attrs.get("data-images") == "3", attrs  # the page's script ran (the CSP hash allows it)
    assert attrs.get("data-images-loaded") == "3", attrs  # and every plot decoded
    assert "data-pwned" not in attrs  # no injected handler or script ran
    assert "&lt;script&gt;document.body.setAttribute(" in dom.stdout

    shot = tmp_path / "page.png"
    r = subprocess.run([*base, "--window-size=1400,2400", f"--screenshot={shot}", url],
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 0 and shot.exists(), r.stderr[-2000:]
    with Image.open(shot) as im:
        assert im.size == (1400, 2400)
        colours = im.convert("RGB").resize((140, 240)).getcolors(maxcolors=1 << 16)
        assert colours is None or len(colours) > 50  # plots and tables drawn, not a blank page


@pytest.mark.slow
def test_mined_triggers_reach_report_json_the_explore_helpers_and_the_page(tmp_path, shared_data):
    """A real scan (the static embedder, BadNets planted in 1% of SST-2) writes its mined triggers
    to report.json["triggers"]; ScanOutput, the notebook's helpers and the HTML page show them."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from shardguard.bench import attacks, suite
    from shardguard.explore import ScanOutput, triggers_html

    data = suite.load_labelled(shared_data, "sst2")
    sc = attacks.badnets(data.ids, data.texts, data.labels, target="1", rate=0.01,
                         seed=suite.seed_of("sst2/badnets"), dataset="sst2")
    (tmp_path / "in").mkdir()
    pq.write_table(pa.table({"id": sc.ids, "text": sc.texts, "label": sc.labels}), tmp_path / "in" / "sst2.parquet")
    out = tmp_path / "out"
    scan([tmp_path / "in"], out, load_config(None, {"input.id_column": "id", "input.label_column": "label",
                                                   "embed.embedder": "static"}))
    mined = json.loads((out / "report.json").read_text())["triggers"]
    assert {t["ngram"] for t in mined} == set(attacks.BADNETS_TRIGGERS)
    assert all(t["label"] == "1" and t["rows"] >= 5 and 0 < t["p_value"] < 0.01 for t in mined)
    sg = ScanOutput.load(out)
    assert sg.triggers() == mined
    assert "mined triggers: 4" in sg.summary()
    assert all(f">{g}<" in triggers_html(sg.triggers()) for g in attacks.BADNETS_TRIGGERS)
    assert main(["report", str(out), "--html", str(tmp_path / "r.html")]) == 0
    html = (tmp_path / "r.html").read_text()
    section = html[html.index("Mined triggers"):]
    assert all(f">{g}<" in section for g in attacks.BADNETS_TRIGGERS)
