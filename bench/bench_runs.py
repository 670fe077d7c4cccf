"""Ensembles of runs and reader-aware labels on the synthetic leaderboard: is each lever worth its training time?

One fixed synthetic dataset, larger than the demo's (`--n-train` train images, half of them abnormal, and
`--n-test` test images whose truth `vinbig synth` keeps in DATA/private/), goes through `vinbig demo` with the
demo's config plus four detector runs:

- ``n160``: the demo's YOLOv8n at 160 px, on the readers' consolidated boxes;
- ``n128``: the same model at 128 px (another image size; smaller, so that the benchmark fits a CPU);
- ``readers``: ``labels: per_reader``, each abnormal image once per reader with that reader's boxes;
- ``careful``: ``exclude_readers: [R8, R9, R10]``, without the prolific readers' boxes.

The demo trains every run on every fold, predicts OOF and test (hflip TTA), tunes WBF, the gate and one weight per
run on the OOF predictions, fuses the test submission and one per run alone, and scores each against the hidden
truth. This script adds the ensemble with equal run weights (the tuned WBF and gate values, run weights 1) on both
OOF and test, and writes every figure to `--out`/bench_runs.json and a Markdown table to bench_runs.md.

    python bench/bench_runs.py --out work/bench_runs --n-train 240 --n-test 80 --folds 2   # about 40 minutes on 2 cores
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
RUNS = {"n160": {}, "n128": {"imgsz": 128}, "readers": {"labels": "per_reader"},
        "careful": {"exclude_readers": ["R8", "R9", "R10"]}}


def config(out: Path, args: argparse.Namespace) -> Path:
    """The demo config with the larger dataset, `--folds` folds and the four detector runs."""
    cfg = yaml.safe_load((ROOT / "configs" / "demo.yaml").read_text())
    cfg["synth"].update(n_train=args.n_train, n_test=args.n_test, seed=args.seed)
    cfg.setdefault("folds", {})["n_folds"] = args.folds
    cfg["runs"] = {"detector": RUNS}
    path = out / "bench_runs.yaml"
    path.write_text(yaml.safe_dump(cfg, sort_keys=False))
    return path


def equal_weights(work: Path, data: Path, cfg_path: Path) -> dict:
    """OOF and test mAP of the ensemble with every run weight 1 (tuned WBF and gate values otherwise)."""
    from fusion import fusion_config, score_oof
    from vinbig.app.cli import main
    from vinbig.submission import score_files

    equal = "fusion.run_weights={" + ", ".join(f"{r}: 1" for r in RUNS) + "}"
    out = work / "submission_equal.csv"
    assert main(["fuse", "--work", str(work), "--split", "test", "--out", str(out), "--config", str(cfg_path),
                 "--set", equal, "-q"]) == 0
    f = fusion_config(work, cfg_path, [equal])["fusion"]
    return {"oof": score_oof(work, f).result.mean_ap,
            "test": score_files(data / "private" / "test_labels.csv", out).mean_ap}


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", type=Path, default=ROOT / "work" / "bench_runs")
    p.add_argument("--n-train", type=int, default=300)
    p.add_argument("--n-test", type=int, default=100)
    p.add_argument("--folds", type=int, default=3)
    p.add_argument("--seed", type=int, default=7)
    args = p.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    cfg_path = config(args.out, args)

    from vinbig.app.demo import run_demo

    t0 = time.perf_counter()
    s = run_demo(args.out, cfg_path)
    seconds = time.perf_counter() - t0
    work, data = Path(s["work"]), Path(s["data"])
    tuned = (yaml.safe_load((work / "fusion.yaml").read_text()) or {}).get("fusion", {})
    equal = equal_weights(work, data, cfg_path)
    rows = [{"what": what, "oof": oof, "test": test} for what, oof, test in s["leaderboard"]]
    rows.insert(1, {"what": "ensemble, equal run weights", **equal})
    result = {"n_train": args.n_train, "n_test": args.n_test, "folds": args.folds, "seed": args.seed, "runs": RUNS,
              "tuned": tuned, "rows": rows, "times": s["times"], "seconds": seconds}
    (args.out / "bench_runs.json").write_text(json.dumps(result, indent=1, default=float))
    lines = [f"| submission | OOF mAP | test mAP (synthetic leaderboard) |", "|---|---|---|"]
    lines += [f"| {r['what']} | {r['oof']:.4f} | {r['test']:.4f} |" for r in rows]
    lines += ["", f"tuned: {json.dumps(tuned)}", f"time: {seconds / 60:.1f} min"]
    (args.out / "bench_runs.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
