"""``camzoo report``: the HTML page of a tiny run, read back with a small HTML parser.

The run: the tiny CNN (random weights) on the six sample photos, Grad-CAM, Fake-CAM and
``boom`` (fails on the batch holding "coffee"), every protocol and ROAD at one fraction, the
grid maps of the first two images stored. Checked: the table's cells are ``camzoo table``'s,
one row per method; the best / worst images of every column are the extreme rows of
``Run.rows()``; every image is embedded; the failures are listed; a recomputed map equals the
stored one; user errors are one line; the random-weights mark; several runs and a sanity folder.
"""
import math
import os
import re
from html.parser import HTMLParser

import numpy as np
import pytest
from click.testing import CliRunner

from camzoo.bench import BenchConfig, run
from camzoo.cli import main
from camzoo.engine.report import recompute_maps, rebuild, stored_map, write_report
from camzoo.results import tables
from camzoo.results.report_html import NO_MAP
from tests.helpers import TINY, Boom, marker_of, registered

VOID = {"img", "meta", "br", "link", "input", "hr", "source", "wbr"}
N = 2  # best / worst images per column


class Node:
    """An element of the parsed page: tag, attributes, children (nodes and text)."""

    def __init__(self, tag, attrs, parent):
        self.tag, self.attrs, self.parent, self.children = tag, attrs, parent, []

    def text(self) -> str:
        return "".join(c if isinstance(c, str) else c.text() for c in self.children)

    def all(self, tag=None, **attrs):
        """Every descendant element with ``tag`` (any when None) and the given attribute values
        (``cls="x"``: the class list holds x)."""
        out = []
        for c in self.children:
            if isinstance(c, str):
                continue
            ok = tag in (None, c.tag)
            for k, v in attrs.items():
                if k == "cls":
                    ok = ok and v in c.attrs.get("class", "").split()
                else:
                    ok = ok and c.attrs.get(k) == v
            if ok:
                out.append(c)
            out += c.all(tag, **attrs)
        return out

    def one(self, tag=None, **attrs):
        found = self.all(tag, **attrs)
        assert len(found) == 1, (tag, attrs, len(found))
        return found[0]


class Page(HTMLParser):
    """The page as a tree of :class:`Node` (``page.root``)."""

    def __init__(self, text: str):
        super().__init__(convert_charrefs=True)
        self.root = self.cur = Node("#root", {}, None)
        self.feed(text)
        self.close()

    def handle_starttag(self, tag, attrs):
        n = Node(tag, {k: v or "" for k, v in attrs}, self.cur)
        self.cur.children.append(n)
        if tag not in VOID:
            self.cur = n

    def handle_startendtag(self, tag, attrs):
        self.cur.children.append(Node(tag, {k: v or "" for k, v in attrs}, self.cur))

    def handle_endtag(self, tag):
        n = self.cur
        while n is not None and n.tag != tag:
            n = n.parent
        if n is not None and n.parent is not None:
            self.cur = n.parent

    def handle_data(self, data):
        self.cur.children.append(data)


def squash(s: str) -> str:
    return " ".join(s.split())


def markdown_rows(md: str):
    """``camzoo table``'s Markdown: {method: [cell text without ** and <u>]} and the notes."""
    lines = md.splitlines()
    rows = [line for line in lines if line.startswith("|")][2:]
    out = {}
    for line in rows:
        cells = [re.sub(r"\*\*|</?u>", "", c).strip() for c in line.strip("|").split("|")]
        out[cells[0]] = cells[1:]
    notes = [re.sub(r"</?sub>", "", line) for line in lines if line.startswith("<sub>")]
    return out, notes


@pytest.fixture(scope="module")
def report_run(tmp_path_factory):
    """The tiny run (module docstring) and its report (``N`` images per list); boom stays
    registered (the report recomputes its maps too)."""
    d = tmp_path_factory.mktemp("report")
    Boom.marker, Boom.BROKEN = marker_of("coffee"), True
    with registered(Boom):
        r = run(BenchConfig(backbone=TINY, weights="random", methods="gradcam,fakecam,boom", metrics="all,road",
                            metric_options={"rise": {"steps": 4}, "road": {"fractions": [0.5]}}, batch_size=3,
                            grid_images=2, out=str(d / "run"), progress=False, figures=False, device="cpu"),
                echo=lambda s: None)
        lines = []
        path = write_report(r, str(d / "report.html"), n_images=N, device="cpu", echo=lines.append)
        yield r, path, lines


@pytest.fixture(scope="module")
def page(report_run):
    with open(report_run[1], encoding="utf-8") as f:
        return Page(f.read()).root


def test_the_table_is_camzoo_table_with_one_row_per_method(report_run, page):
    r, _, _ = report_run
    res = CliRunner().invoke(main, ["table", r.dir, "--format", "markdown"])
    assert res.exit_code == 0, res.output
    md, notes = markdown_rows(res.output)
    table = page.one("table", id="r0-results")
    rows = table.all("tr", **{})
    body = [tr for tr in rows if "data-method" in tr.attrs]
    assert [tr.attrs["data-method"] for tr in body] == r.methods == list(md)
    df = tables.summary(r).df
    for tr in body:
        m = tr.attrs["data-method"]
        cells = tr.all("td")
        assert [squash(td.text()) for td in cells] == [squash(c) for c in md[m]], m
        means = [float(td.attrs["data-v"]) if td.attrs["data-v"] else math.nan for td in cells]
        np.testing.assert_array_equal(means, df.loc[m].to_numpy(float))
    # bold and underline where the Markdown has them
    head = [squash(th.text()) for th in table.all("th", cls="sortable")]
    assert head == list(df.columns)
    text = squash(page.one("section", id="r0-table").text())
    for n in notes:  # legend and footnotes, failures included
        assert squash(n) in text


def expected_extremes(rows, method, spec, n):
    """The n best and n worst image ids by spec.key, computed apart from the report."""
    mine = rows[rows.method == method]
    vals = [(float(v), i) for i, v in zip(mine.image_id, mine[spec.key]) if not math.isnan(float(v))]
    sign = -1.0 if spec.higher_is_better else 1.0
    best = [i for _, i in sorted(vals, key=lambda t: (sign * t[0], t[1]))][:n]
    worst = [i for _, i in sorted(vals, key=lambda t: (-sign * t[0], t[1]))][:n]
    return best, worst, vals


def test_best_and_worst_images_are_the_extreme_rows(report_run, page):
    r, _, _ = report_run
    rows = r.rows()
    specs = {s.header: s for s in r.specs()}
    for mi, m in enumerate(r.methods):
        det = page.one("details", id=f"r0-m{mi}")
        lines = det.one("table", cls="extremes").all("tr")[1:]
        assert [squash(tr.one("th").text()) for tr in lines] == list(specs)
        for tr in lines:
            spec = specs[squash(tr.one("th").text())]
            got_best = [a.text() for a in tr.one("td", cls="best").all("a")]
            got_worst = [a.text() for a in tr.one("td", cls="worst").all("a")]
            best, worst, vals = expected_extremes(rows, m, spec, N)
            assert (got_best, got_worst) == (best, worst), (m, spec.header)
            # the worst are as bad as any other row, the best as good
            sign = -1.0 if spec.higher_is_better else 1.0
            v = dict((i, x) for x, i in vals)
            rest = [x for x, i in vals if i not in worst]
            assert all(sign * v[i] >= sign * x for i in worst for x in rest)
            rest = [x for x, i in vals if i not in best]
            assert all(sign * v[i] <= sign * x for i in best for x in rest)
        # a card per image listed, with the photo, every method's map (or why not) and its values
        ids = list(dict.fromkeys(a.text() for a in det.all("a")))
        cards = det.all("article", cls="card")
        assert [c.attrs["data-image"] for c in cards] == ids
        for c in cards:
            caps = [squash(f.one("figcaption").text()) for f in c.all("figure")]
            assert caps[0] == "photo" and caps[1].startswith(m) and len(caps) == 1 + len(r.methods)
            row = rows[(rows.method == m) & (rows.image_id == c.attrs["data-image"])]
            for kv in c.all("div", cls="kv"):
                s = specs[kv.attrs["data-col"]]
                assert kv.one("span", cls="val").text() == tables.format_value(s.header, s.scale * float(row[s.key].iloc[0]))


def test_every_image_is_embedded(report_run, page):
    _, path, _ = report_run
    imgs = page.all("img")
    assert len(imgs) > 20
    assert all(i.attrs["src"].startswith(("data:image/png;base64,", "data:image/jpeg;base64,")) for i in imgs)
    text = open(path, encoding="utf-8").read()
    assert "http:" not in text and "https:" not in text and 'src="/' not in text and "<link" not in text
    assert not [s for s in page.all("script") if "src" in s.attrs]
    # the photo is the backbone's view: 32 px for the tiny CNN, embedded at the card's size
    from PIL import Image
    import base64
    import io

    card = page.all("article", cls="card")[0]
    photo = card.all("img")[0].attrs["src"].split(",", 1)[1]
    assert Image.open(io.BytesIO(base64.b64decode(photo))).size == (150, 150)


def test_failures_are_listed(report_run, page):
    r, _, _ = report_run
    fails = r.failures()
    assert len(fails) == 3 and set(fails.method) == {"boom"}
    sec = page.one("section", id="r0-failures")
    rows = [[squash(td.text()) for td in tr.all("td")] for tr in sec.all("tr")[1:]]
    assert sorted(row[1] for row in rows) == sorted(fails.image_id)
    assert all(row[0] == "boom" and row[3] == "error" and "boom on purpose" in row[5] for row in rows)
    # a card whose boom map cannot be made says why
    whys = [squash(n.text()) for n in page.all("div", cls="nomap")]
    assert whys and all("recomputing failed: RuntimeError: boom on purpose" in w for w in whys)


def test_a_recomputed_map_equals_the_stored_one(report_run, page):
    r, _, lines = report_run
    iid = "chelsea"  # the first image: its grid map is stored (float16)
    stored, where = stored_map(r.dir, "gradcam", iid)
    assert where == "stored, float16"
    with registered(Boom):
        bb, opts, ds, note = rebuild(r, device="cpu")
        assert note is None
        maps, why = recompute_maps(r, bb, opts, ds, {("gradcam", iid), ("gradcam", "astronaut")},
                                   echo=lambda s: None)
    assert not why and set(maps) == {("gradcam", iid), ("gradcam", "astronaut")}
    np.testing.assert_allclose(maps[("gradcam", iid)], stored, atol=1e-3, rtol=0)
    assert np.abs(maps[("gradcam", iid)] - maps[("gradcam", "astronaut")]).max() > 0.05
    # the report says where each map came from
    caps = {squash(f.text()) for f in page.all("figure", cls="own")}
    assert any("(stored, float16)" in c for c in caps) and any("(recomputed)" in c for c in caps)
    assert any(line.startswith("report: recomputing") for line in lines)


def test_provenance_has_the_random_weights_mark_and_the_versions(report_run, page):
    r, _, _ = report_run
    prov = {squash(tr.one("th").text()): squash(tr.one("td").text())
            for tr in page.one("table", cls="prov").all("tr")}
    assert prov["backbone"] == f"{r.config['backbone']['name']} (random weights)"
    assert prov["torch"] == r.config["torch_version"] and prov["camzoo"] == r.config["camzoo_version"]
    assert prov["CUDA"].endswith("(at report time; not recorded by the run)") or "cuda_version" in r.config
    assert prov["images"].startswith("6 (layout samples")
    assert "RANDOM WEIGHTS" in squash(page.one("p", cls="warn").text())


def test_several_runs_no_recompute_and_a_sanity_folder(report_run, tmp_path):
    from camzoo.engine.randomization import run as sanity_run

    r, _, _ = report_run
    sanity_run("py:camzoo.models.testing:tiny_backbone", "gradcam,fakecam", weights="random", limit=2,
               max_blocks=2, out=str(tmp_path / "sanity"), progress=False, echo=lambda s: None)
    with registered(Boom):
        path = write_report([r.dir, r], n_images=1, sanity=str(tmp_path / "sanity"), recompute=False,
                            echo=lambda s: None)
    assert os.path.dirname(path) == os.path.dirname(os.path.abspath(r.dir))
    page = Page(open(path, encoding="utf-8").read()).root
    res = CliRunner().invoke(main, ["compare", r.dir, r.dir, "--format", "markdown"])
    md = [[re.sub(r"\*\*|</?u>", "", c).strip() for c in line.strip("|").split("|")]
          for line in res.output.splitlines() if line.startswith("|")][2:]
    got = [[squash(td.text()) for td in tr.all("td")] for tr in page.one("table", id="cmp-results").all("tr")
           if "data-method" in tr.attrs]
    assert got == [[squash(c) for c in row[2:]] for row in md]
    assert len(page.all("section", id="r1-images")) == 1
    # no recomputation: the images without a stored map say so; the stored ones are shown
    whys = {squash(n.text()) for n in page.all("div", cls="nomap")}
    assert NO_MAP in whys and all(w == NO_MAP for w in whys)
    caps = {squash(f.text()) for f in page.all("figure", cls="own")}
    assert not any("recomputed" in c for c in caps) and any("stored" in c for c in caps)
    # the sanity folder: a summary per similarity and its figures
    san = page.one("section", id="sanity")
    assert {squash(h.text()) for h in san.all("h4")} >= {"spearman", "ssim"}
    assert len(san.all("img")) >= 4
    os.remove(path)


def test_user_errors_are_one_line(report_run, tmp_path):
    r, _, _ = report_run
    runner = CliRunner()
    for args, said in ((["report", str(tmp_path)], "is not a camzoo run (no config.json)"),
                       (["report", str(tmp_path / "nothing")], "is not a camzoo run"),
                       (["report", r.dir, "--sanity", str(tmp_path)], "is not a camzoo sanity folder"),
                       (["report", r.dir, "--out", str(tmp_path)], "is a directory")):
        res = runner.invoke(main, args)
        assert res.exit_code in (1, 2) and said in res.output, (args, res.output)
        assert "Traceback" not in res.output and res.exception is None or isinstance(res.exception, SystemExit)


def test_bench_report_writes_the_page_at_the_end(tmp_path):
    """`camzoo bench --report` writes RUN/report.html once the tables are written."""
    from click.testing import CliRunner

    from camzoo.cli import main
    from tests.conftest import SAMPLES
    from tests.helpers import TINY1000

    out = tmp_path / "run"
    res = CliRunner().invoke(main, ["bench", "--backbone", TINY1000, "--weights", "random", "--data", SAMPLES,
                                    "--limit", "2", "--methods", "gradcam,fakecam", "--metrics", "lcam",
                                    "--no-progress", "--no-figures", "--report", "--out", str(out)])
    assert res.exit_code == 0, res.output
    page = (out / "report.html").read_text()
    assert res.output.count("report.html") == 1
    assert "gradcam" in page and "fakecam" in page and "http://" not in page and "https://" not in page
