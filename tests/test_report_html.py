"""`vinbig report`'s page (WORK/report/index.html): its counts are the metric's, it is self-contained, and it works
in a real browser (headless Chromium, Debian's `chromium`, driven over the DevTools protocol on a pipe)."""

from __future__ import annotations

import json
import os
import re
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from browser import Browser
from conftest import own_work
from vinbig.artifacts import BOX, NO_FINDING, PRED_COLUMNS, READER_COLUMNS, Work, read_labels, read_meta, write_csv
from vinbig.metric import _ap, evaluate, mark, prepare_truth

from fusion import write_report
from fusion._html import ranked_runs, unrun

LOW, HIGH = 0.2, 0.8


# --------------------------------------------------------------------------- a tiny OOF output


def fused_preds(truth: pd.DataFrame, meta: pd.DataFrame, p: pd.Series, seed: int = 0) -> pd.DataFrame:
    """Fused, gated OOF predictions as `score_oof` gives them: the truth boxes jittered (a quarter of them missed or
    moved off), false positives of every score, and the gate's class-14 rows from `p`."""
    rng = np.random.default_rng(seed)
    rows = []
    for image_id, t in truth.groupby("image_id", sort=False):
        w, h = meta.loc[image_id, ["width", "height"]].to_numpy(float)
        pv = p[image_id]
        if pv < LOW:
            rows.append((image_id, NO_FINDING, 1.0, 0.0, 0.0, 1.0, 1.0))
            continue
        for c, *box in t.loc[t.class_id != NO_FINDING, ["class_id", *BOX]].itertuples(index=False):
            r = rng.random()
            if r < 0.15:
                continue  # missed
            jitter = rng.normal(0, 0.02 if r > 0.25 else 0.3, 4) * [w, h, w, h]
            rows.append((image_id, int(c), rng.uniform(0.3, 1), *(np.asarray(box) + jitter)))
        for _ in range(rng.integers(0, 4)):
            xy = rng.uniform(0, 0.7, 2) * [w, h]
            rows.append((image_id, int(rng.integers(0, 14)), rng.uniform(0.02, 0.95), *xy,
                         *(xy + rng.uniform(0.05, 0.3, 2) * [w, h])))
        if pv < HIGH:
            rows.append((image_id, NO_FINDING, 1 - pv, 0.0, 0.0, 1.0, 1.0))
    preds = pd.DataFrame(rows, columns=list(PRED_COLUMNS))
    preds.loc[preds.index[:3], "score"] = 0.5  # ties: ranked in submission order
    return preds


def readers_of(truth: pd.DataFrame, seed: int = 1) -> pd.DataFrame:
    """Three readers' own boxes around each truth box."""
    rng = np.random.default_rng(seed)
    boxes = truth[truth.class_id != NO_FINDING]
    parts = []
    for k in range(3):
        r = boxes.assign(rad_id=f"R{k + 8}")
        r[list(BOX)] = r[list(BOX)].to_numpy() + rng.normal(0, 3, (len(r), 4))
        parts.append(r)
    nf = truth[truth.class_id == NO_FINDING].assign(rad_id="R8")
    nf[list(BOX)] = np.nan
    return pd.concat(parts + [nf])[list(READER_COLUMNS)]


class Tiny:
    def __init__(self, root: Path, synth_work):
        self.work = Work(own_work(synth_work, root))
        self.truth = prepare_truth(read_labels(self.work))
        self.meta = read_meta(self.work.images("train")).set_index("image_id")
        ids = self.truth.image_id.unique()
        abnormal = set(self.truth.loc[self.truth.class_id != NO_FINDING, "image_id"])
        rng = np.random.default_rng(3)
        self.p = pd.Series([rng.uniform(0.5, 1) if i in abnormal else rng.uniform(0, 0.6) for i in ids], index=ids)
        self.preds = fused_preds(self.truth, self.meta, self.p)
        self.result = evaluate(self.truth, self.preds, curves=True)
        write_csv(readers_of(self.truth), self.work.readers, READER_COLUMNS)
        half = self.preds.image_id.isin(ids[::2])
        self.runs = {"yolo-a": evaluate(self.truth, self.preds[half]), "yolo-b": evaluate(self.truth, self.preds[~half])}
        self.report = write_report(self.work, self.result, self.preds, self.truth, self.work.report, per_class=1,
                                   score_thr=0.3, runs=self.runs, p_abnormal=self.p, low=LOW, high=HIGH)
        self.page = self.work.report / "index.html"
        self.data = page_json(self.page)


def page_json(page: Path) -> dict:
    html = page.read_text(encoding="utf-8")
    m = re.search(r'<script type="application/json" id="data">(.*?)</script>', html, flags=re.S)
    assert m, f"{page} holds no data"
    return json.loads(m.group(1))


@pytest.fixture(scope="module")
def tiny(synth_work, tmp_path_factory) -> Tiny:
    return Tiny(tmp_path_factory.mktemp("report_html"), synth_work)


# --------------------------------------------------------------------------- the data behind the page


def test_the_page_counts_give_the_metric_ap(tiny):
    """Per class, the ranked TP flags in the page give `vinbig score`'s AP; its TP/FP/FN counts add up to the truth
    and the predictions, and agree with the boxes each image shows."""
    table = {r["id"]: r for r in tiny.data["table"]}
    assert tiny.data["map"] == pytest.approx(tiny.result.mean_ap)
    present = 0
    for c, r in table.items():
        flags = unrun(r["ranked"])
        assert len(flags) == r["n_pred"] == r["tp"] + r["fp"] == tiny.result.n_pred[c]
        assert r["n_truth"] == r["tp"] + r["fn"] == tiny.result.n_truth[c]
        if tiny.result.present[c]:
            present += 1
            assert _ap(flags, r["n_truth"])[0] == pytest.approx(tiny.result.ap[c], abs=1e-12), c
            assert r["ap"] == pytest.approx(tiny.result.ap[c])
        else:
            assert r["ap"] is None
        # the same counts from the images: every box is in the page (scores >= 0.02, under 100 an image)
        images = tiny.data["images"]
        if c == NO_FINDING:
            tp = sum(1 for i in images if i["nf"] and i["nf"][1])
            found = sum(1 for i in images if i["nft"] is not None and i["nft"] >= 0)
            n_pred = sum(1 for i in images if i["nf"])
        else:
            tp = sum(1 for i in images for p in i["preds"] if p[0] == c and p[6])
            found = sum(1 for i in images for t in i["truth"] if t[0] == c and t[5] >= 0)
            n_pred = sum(1 for i in images for p in i["preds"] if p[0] == c)
        assert tp == found == r["tp"] and n_pred == r["n_pred"], c
    assert present >= 5 and sum(r["fp"] for r in table.values()) > 0 and sum(r["fn"] for r in table.values()) > 0
    assert [r["name"] for r in tiny.data["runs"]] == ["yolo-a", "yolo-b"]
    assert [r["map"] for r in tiny.data["runs"]] == pytest.approx([r.mean_ap for r in tiny.runs.values()])


def test_mark_is_the_matching_of_the_metric(tiny):
    """vinbig.metric.mark: a detection is TP iff the ranked matching says so; a truth box is found by a TP of its
    class and image."""
    m = mark(tiny.truth, tiny.preds)
    assert m.tp.sum() == m.matches.tp.sum() == m.found.sum()
    hit = tiny.preds.iloc[m.found_by[m.found]].reset_index(drop=True)
    t = tiny.truth[m.found].reset_index(drop=True)
    assert (hit.image_id == t.image_id).all() and (hit.class_id == t.class_id).all()
    assert m.tp[m.found_by[m.found]].all() and m.scored.all()


def test_ranked_runs_round_trip():
    for flags in ([], [1], [0], [1, 1, 0, 1, 0, 0], [0, 0, 1]):
        assert unrun(ranked_runs(np.array(flags, dtype=bool))).tolist() == [bool(f) for f in flags]


def test_the_gate_and_the_readers_in_the_page(tiny):
    by_id = {r["id"]: r for r in tiny.data["images"]}
    assert set(by_id) == set(tiny.truth.image_id)
    for image_id, p in tiny.p.items():
        want = "nf" if p < LOW else "both" if p < HIGH else "boxes"
        assert by_id[image_id]["gate"] == want and by_id[image_id]["p"] == pytest.approx(p, abs=1e-4)
        if want == "nf":
            assert by_id[image_id]["preds"] == []
    assert tiny.data["gate"] == {"low": LOW, "high": HIGH}
    assert tiny.data["readers"] and {r[0] for i in by_id.values() for r in i.get("readers", [])} == {0, 1, 2}


def test_the_page_is_self_contained(tiny):
    """No network: the only outside references are relative files of the report folder, thumbnails (JPEG, not the
    full PNGs) written beside the page."""
    html = tiny.page.read_text(encoding="utf-8")
    assert not re.search(r"""(src|href)\s*=\s*["']?(https?:)?//""", html)
    assert "<script src" not in html and "<link rel=\"stylesheet\"" not in html
    assert re.findall(r"https?://[^\s\"'<>]+", html) == ["http://www.w3.org/2000/svg"]
    for image in tiny.data["images"]:
        assert image["img"] == f"images/{image['id']}.jpg" and (tiny.page.parent / image["img"]).is_file()
    assert {p.suffix for p in (tiny.page.parent / "images").iterdir()} == {".jpg"}
    assert tiny.page in tiny.report.files
    for link in ("per_class_ap.png", "pr_curves.png", "metrics.csv"):
        assert f'href="{link}"' in html and (tiny.page.parent / link).is_file()


def test_too_many_images_keep_the_most_wrong(tiny, tmp_path):
    from fusion._html import page_data

    full = page_data(tiny.result, tiny.preds, tiny.truth, tiny.meta, score_thr=0.3)
    few = page_data(tiny.result, tiny.preds, tiny.truth, tiny.meta, score_thr=0.3, max_images=5)
    assert len(few["images"]) == 5 and few["n_images"] == len(full["images"]) == tiny.truth.image_id.nunique()

    def wrong(r):  # mistakes at 0.3, then the highest-scored false positive, from the page's own records
        fps = [p[1] for p in r["preds"] if not p[6] and p[1] >= 0.3] + (
            [r["nf"][0]] if r["nf"] and not r["nf"][1] and r["nf"][0] >= 0.3 else [])
        fn = sum(t[5] < 0.3 for t in r["truth"]) + (r["nft"] is not None and r["nft"] < 0.3)
        return fn + len(fps), max(fps, default=0.0)

    ranked = sorted(full["images"], key=wrong, reverse=True)
    kept = {r["id"] for r in few["images"]}
    cut = wrong(ranked[4])
    assert all(wrong(r) >= cut if r["id"] in kept else wrong(r) <= cut for r in full["images"])
    assert [r["id"] for r in few["images"]] == [r["id"] for r in full["images"] if r["id"] in kept]  # truth order
    assert few["table"] == full["table"]  # the table counts every image


def test_a_rerun_removes_stale_thumbnails_and_without_readers_hides_nothing(tiny, tmp_path):
    out = tmp_path / "report"
    earlier = tiny.truth.image_id.unique()[2:8]  # an earlier report's thumbnails, two of them shown again
    truth, preds = tiny.truth[tiny.truth.image_id.isin(earlier)], tiny.preds[tiny.preds.image_id.isin(earlier)]
    write_report(tiny.work, evaluate(truth, preds), preds, truth, out, per_class=1)
    assert len(list((out / "images").iterdir())) == len(earlier)
    one = tiny.truth.image_id.unique()[:4]
    truth, preds = tiny.truth[tiny.truth.image_id.isin(one)], tiny.preds[tiny.preds.image_id.isin(one)]
    os.rename(tiny.work.readers, tmp_path / "readers.csv")
    try:
        write_report(tiny.work, evaluate(truth, preds), preds, truth, out, per_class=1)
    finally:
        os.rename(tmp_path / "readers.csv", tiny.work.readers)
    assert sorted(p.name for p in (out / "images").iterdir()) == sorted(f"{i}.jpg" for i in one)
    data = page_json(out / "index.html")
    assert not data["readers"] and data["gate"] is None and data["runs"] == []


# --------------------------------------------------------------------------- in a real browser


def expected(tiny, cls=None, kind=None, thr=0.3) -> list[str]:
    """The images the browser should show, from the page's data (as the page's stats() counts)."""
    out = []
    for r in tiny.data["images"]:
        want = lambda c: cls is None or c == cls  # noqa: E731
        tp = sum(1 for p in r["preds"] if p[1] >= thr and want(p[0]) and p[6])
        fp = sum(1 for p in r["preds"] if p[1] >= thr and want(p[0]) and not p[6])
        fn = sum(1 for t in r["truth"] if want(t[0]) and t[5] < thr)
        if r["nf"] and r["nf"][0] >= thr and want(NO_FINDING):
            tp, fp = tp + r["nf"][1], fp + (not r["nf"][1])
        if r["nft"] is not None and want(NO_FINDING):
            fn += r["nft"] < thr
        anything = any(p[1] >= thr and want(p[0]) for p in r["preds"]) or any(want(t[0]) for t in r["truth"]) or (
            want(NO_FINDING) and ((r["nf"] and r["nf"][0] >= thr) or r["nft"] is not None))
        if (cls is None or anything) and (kind is None or {"tp": tp, "fp": fp, "fn": fn}[kind]):
            out.append(r["id"])
    return out


CARDS = "[...document.querySelectorAll('#grid .card')].map(c => c.dataset.id)"


def choose(b: Browser, select: str, value) -> None:
    b.js(f"(() => {{ const s = document.querySelector('{select}'); s.value = '{value}'; "
         "s.dispatchEvent(new Event('change')); })()")


def test_the_page_in_headless_chromium(tiny, browser, tmp_path):
    b = browser
    b.open(tiny.page.as_uri())
    assert b.problems() == []

    # the table: 15 classes, a column per run, the metric's AP; the curves' AP computed by the page from its flags
    assert b.js("document.querySelectorAll('#ap tbody tr').length") == 15
    assert b.js("[...document.querySelectorAll('#ap thead th')].map(t => t.textContent)")[2:5] == [
        "AP ensemble", "AP yolo-a", "AP yolo-b"]
    page_ap = b.js("Object.fromEntries([...document.querySelectorAll('.curve[data-page-ap]')]"
                   ".map(c => [c.dataset.class, Number(c.dataset.pageAp)]))")
    assert {int(c) for c in page_ap} == set(np.flatnonzero(tiny.result.present))
    for c, ap in page_ap.items():
        assert ap == pytest.approx(tiny.result.ap[int(c)], abs=1e-12)
    assert b.js("document.querySelector('#map').textContent") == f"{tiny.result.mean_ap:.4f}"

    # every image at first, the highest-scored false positive first; images load (no broken thumbnail)
    everything = b.js(CARDS)
    assert sorted(everything) == sorted(expected(tiny))
    top_fp = max([(p[1], r["id"]) for r in tiny.data["images"] for p in r["preds"] if not p[6] and p[1] >= 0.3]
                 + [(r["nf"][0], r["id"]) for r in tiny.data["images"] if r["nf"] and not r["nf"][1]])
    assert everything[0] == top_fp[1]
    assert b.js("Promise.all([...document.querySelectorAll('#grid image')].map(i => new Promise(ok => { "
                "const img = new Image(); img.onload = () => ok(img.naturalWidth); img.onerror = () => ok(0); "
                "img.src = i.getAttribute('href'); })))").count(0) == 0

    # the class filter: only that class's images and boxes
    c = int(tiny.truth.loc[tiny.truth.class_id != NO_FINDING, "class_id"].value_counts().index[0])
    choose(b, "#cls", c)
    shown = b.js(CARDS)
    assert sorted(shown) == sorted(expected(tiny, cls=c)) and 0 < len(shown) < len(everything)
    labels = b.js("[...document.querySelectorAll('#grid .box')].map(r => r.parentNode.querySelector('title')"
                  ".textContent)")
    assert labels and all(re.search(rf": {c} ", t) for t in labels)

    # the kind filter: images with a missed box of the class, and those boxes bright, the others faded
    choose(b, "#kind", "fn")
    shown = b.js(CARDS)
    assert sorted(shown) == sorted(expected(tiny, cls=c, kind="fn")) and shown
    bright = b.js("[...document.querySelectorAll('#grid g:not(.faded) > .box')].map(r => r.getAttribute('class'))")
    assert bright and set(bright) == {"box fn"}
    choose(b, "#cls", "all")
    choose(b, "#kind", "fp")
    assert sorted(b.js(CARDS)) == sorted(expected(tiny, kind="fp"))

    # sorting: most missed boxes first, then by the confidence of the best prediction
    choose(b, "#kind", "all")
    choose(b, "#sort", "fn")
    fn = {r: expected_fn(tiny, r) for r in everything}
    order = b.js(CARDS)
    assert [fn[r] for r in order] == sorted(fn.values(), reverse=True) and order != everything
    choose(b, "#sort", "conf")
    by_id = {i["id"]: i for i in tiny.data["images"]}
    conf = [max([p[1] for p in i["preds"] if p[1] >= 0.3] + ([i["nf"][0]] if i["nf"] and i["nf"][0] >= 0.3 else [])
                + [-1]) for i in (by_id[r] for r in b.js(CARDS))]
    assert conf == sorted(conf, reverse=True)

    # the score threshold: more boxes at a lower one
    n_boxes = b.js("document.querySelectorAll('#grid .box.tp, #grid .box.fp').length")
    b.js("(() => { const t = document.querySelector('#thr'); t.value = '0.01'; t.dispatchEvent(new Event('input')); })()")
    assert b.js("document.querySelectorAll('#grid .box.tp, #grid .box.fp').length") > n_boxes

    # the readers' boxes on demand; the gate's decision in each card
    assert b.js("document.querySelectorAll('#grid .box.reader').length") == 0
    b.js("(() => { const t = document.querySelector('#show-readers'); t.checked = true; "
         "t.dispatchEvent(new Event('change')); })()")
    assert b.js("document.querySelectorAll('#grid .box.reader').length") > 0
    gates = b.js("Object.fromEntries([...document.querySelectorAll('#grid .card')].map(c => "
                 "[c.dataset.id, c.querySelector('.gate').dataset.gate]))")
    assert gates == {r["id"]: r["gate"] for r in tiny.data["images"] if r["id"] in gates} and len(set(gates.values())) == 3

    # a card opens a larger view with its list of boxes
    first = b.js(CARDS)[0]
    b.js("document.querySelector('#grid .card').click()")
    assert b.js("document.querySelector('#dlg').open")
    want = by_id[first]
    n = sum(p[1] >= 0.01 for p in want["preds"]) + len(want["truth"]) + (want["nf"] is not None) + (want["nft"] is not None)
    assert b.js("document.querySelectorAll('#zoom tr[class^=row-]').length") == n > 0
    b.js("document.querySelector('#dlg').close()")

    choose(b, "#sort", "fp")
    assert b.problems() == []
    shot = b.screenshot(tmp_path / "report.png")
    assert shot.stat().st_size > 10_000 and shot.read_bytes()[:4] == b"\x89PNG"


def expected_fn(tiny, image_id: str, thr: float = 0.3) -> int:
    r = next(i for i in tiny.data["images"] if i["id"] == image_id)
    return sum(1 for t in r["truth"] if t[5] < thr) + (r["nft"] is not None and r["nft"] < thr)


def test_without_readers_the_toggle_is_hidden(tiny, browser, tmp_path):
    out = tmp_path / "report"
    one = tiny.truth.image_id.unique()[:3]
    truth, preds = tiny.truth[tiny.truth.image_id.isin(one)], tiny.preds[tiny.preds.image_id.isin(one)]
    write_report(tiny.work, evaluate(truth, preds), preds, truth, out, per_class=1, readers=pd.DataFrame(
        columns=list(READER_COLUMNS)))
    browser.open((out / "index.html").as_uri())
    assert browser.problems() == []
    assert browser.js("getComputedStyle(document.querySelector('#readers-toggle')).display") == "none"
    assert browser.js("[...document.querySelectorAll('#ap thead th')].map(t => t.textContent)")[2] == "AP"


def test_the_browser_check_sees_a_broken_page(browser, tmp_path):
    """The console check is not blind: a script error, console.error and a missing picture are all reported."""
    page = tmp_path / "broken.html"
    page.write_text('<!DOCTYPE html><link rel="icon" href="data:,"><img src="missing.jpg">'
                    '<script>console.error("bad"); undefinedFunction();</script>')
    browser.open(page.as_uri())
    problems = "\n".join(browser.problems())
    assert "bad" in problems and "undefinedFunction" in problems and "missing.jpg" in problems, problems


def test_the_embedded_data_cannot_end_its_script_element():
    from fusion._html import render

    html = render({"images": [{"id": "</script><script>alert(1)</script><!--"}]})
    m = re.search(r'<script type="application/json" id="data">(.*?)</script>', html, flags=re.S)
    assert json.loads(m.group(1)) == {"images": [{"id": "</script><script>alert(1)</script><!--"}]}
