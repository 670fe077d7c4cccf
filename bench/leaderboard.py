"""The synthetic leaderboard over several datasets and training seeds: every figure with its spread.

For each seed S of `--seeds`, a synthetic dataset of that seed (`--n-train` train and `--n-test` test images of
`--size` px) goes through `vinbig demo` with `--config` (a config with a ``runs`` section, such as
configs/demo.yaml) on `--folds` folds: every detector and classifier run of the config is trained, predicts OOF
and test (hflip TTA), `vinbig tune` chooses the fusion on the OOF predictions, and the ensemble's submission and
one per detector run alone are scored OOF (against labels.csv) and on the synthetic leaderboard (against
DATA/private/test_labels.csv, which no stage reads), beside a "No finding" submission for every image. Then:

- ``ensemble, equal weights``: the tuned WBF and gate values with every detector and classifier run weighing 1
  (when a stage has several runs), for the paired difference "tuned - equal weights";
- ``run R, reseeded``: run R (`--reseed R`, default the first detector run) trained again on the same dataset and
  folds with its training seed + 1000, as an extra run ``R_reseed`` declared only in the seed's
  ``config_reseed.yaml``, after the ensemble was tuned and fused: it never enters the ensemble. It is fused alone
  with the tuned values (`vinbig fuse --run`). Its LB against run R's, seed by seed, is the noise floor: the sd of
  one run's score from its training seed alone. `--no-reseed` leaves it out.

Training seeds: each section's ``seed`` in the config (detector, classifier) and each run's own ``seed`` are
offsets added to the dataset seed S (absent: 0). So run ``{s1: {seed: 1}}`` trains with S + 1, and a seed ensemble
is a config of two lines (``runs: {detector: {s0: {}, s1: {seed: 1}}}``).

OUT/seedS/ holds each dataset (data/), its work folder (work/), the config it ran with (config.yaml) and the
stages' output (stages.log). A rerun keeps the datasets and the trained folds (resumed when interrupted) and
makes the rest again; use a new --out when the config changes. The terminal gets one line per stage and seed.

OUT/results.json: ``{"rows": [{"seed", "submission", "oof", "lb"}, ...], "summary": summarize(rows), "info":
{...}}``; OUT/results.md: mean +- sd over seeds of OOF and LB for each submission, the paired differences
(mean, standard error, on how many seeds the ensemble is ahead), the noise floor, the command, the machine and the
time. Exit 0 when every seed ran, 1 naming the seed and stage that failed.

    python bench/leaderboard.py --config configs/demo.yaml --seeds 0 1 2 --out work/leaderboard
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import shlex
import sys
import time
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
RESEED = 1000  # the reseeded run's training seed: its run's + this
SUFFIX = "_reseed"
ENSEMBLE, EQUAL, NO_FINDING = "ensemble", "ensemble, equal weights", "no finding"
PAIRED = {  # key: what it is, in results.md
    "ensemble - picked member": "ensemble - the member a user would pick (best OOF)",
    "ensemble - oracle member": "ensemble - the best member on the LB (an oracle)",
    "tuned - equal weights": "tuned run weights - equal run weights (the ensemble)",
}


class Failed(Exception):
    """A seed stopped; the message is the one line printed."""


# --------------------------------------------------------------------------- the summary, from the rows alone


def _mean_sd(xs: list[float]) -> dict:
    n = len(xs)
    mean = sum(xs) / n if n else None
    sd = math.sqrt(sum((x - mean) ** 2 for x in xs) / (n - 1)) if n > 1 else None
    return {"mean": mean, "sd": sd}


def _paired(diffs: list[tuple[int, float, str | None]]) -> dict:
    """Paired differences (seed, difference, the member compared with): mean, standard error (sd / sqrt(n)), n and
    the seeds where the first is ahead."""
    values = [d for _, d, _ in diffs]
    ms = _mean_sd(values)
    se = ms["sd"] / math.sqrt(len(values)) if ms["sd"] is not None else None
    return {"n": len(values), "mean": ms["mean"], "se": se, "ahead": sum(d > 0 for d in values),
            "seeds": [{"seed": s, "diff": d, **({"member": m} if m else {})} for s, d, m in diffs]}


def is_member(submission: str) -> bool:
    """A detector run alone ("run NAME"), not a reseeded copy."""
    return submission.startswith("run ") and not submission.endswith(", reseeded")


def summarize(rows: list[dict]) -> dict:
    """Per submission: n and mean and sd over seeds of OOF and LB; the paired LB differences "ensemble - picked
    member" (the member with the best OOF on that seed, the first on a tie), "ensemble - oracle member" (the best
    member on the LB) and "tuned - equal weights"; the noise floor: the sd of one run's LB from its training seed
    alone, sqrt(mean(d^2) / 2) over the seeds' differences d between the run reseeded and the run (their mean is 0
    by design), with their number and mean."""
    seeds: dict[int, dict[str, dict]] = {}
    for r in rows:
        seeds.setdefault(r["seed"], {})[r["submission"]] = r
    subs = list(dict.fromkeys(r["submission"] for r in rows))
    out = {"submissions": {}, "paired": {}, "noise": None}
    for s in subs:
        got = [r for r in rows if r["submission"] == s]
        out["submissions"][s] = {"n": len(got), "oof": _mean_sd([r["oof"] for r in got]),
                                 "lb": _mean_sd([r["lb"] for r in got])}
    picked, oracle, equal, noise = [], [], [], []
    for seed, by in seeds.items():
        ens = by.get(ENSEMBLE)
        members = [r for s, r in by.items() if is_member(s)]
        if ens is not None and members:
            p = max(members, key=lambda r: r["oof"])
            picked.append((seed, ens["lb"] - p["lb"], p["submission"]))
            o = max(members, key=lambda r: r["lb"])
            oracle.append((seed, ens["lb"] - o["lb"], o["submission"]))
        if ens is not None and EQUAL in by:
            equal.append((seed, ens["lb"] - by[EQUAL]["lb"], None))
        for s, r in by.items():
            if s.endswith(", reseeded") and s[: -len(", reseeded")] in by:
                first = by[s[: -len(", reseeded")]]
                noise.append((seed, r["lb"] - first["lb"], r["oof"] - first["oof"], first["submission"]))
    for key, diffs in zip(PAIRED, (picked, oracle, equal)):
        if diffs:
            out["paired"][key] = _paired(diffs)
    if noise:
        lb, oof = [d for _, d, _, _ in noise], [d for _, _, d, _ in noise]
        out["noise"] = {"runs": sorted({r for *_, r in noise}), "n": len(noise),
                        "lb_sd": math.sqrt(sum(d * d for d in lb) / len(lb) / 2),
                        "oof_sd": math.sqrt(sum(d * d for d in oof) / len(oof) / 2),
                        "lb_mean_diff": sum(lb) / len(lb)}
    return out


# --------------------------------------------------------------------------- the configs of a seed


def seed_config(base: dict, seed: int, args: argparse.Namespace) -> dict:
    """`base` (the keys of --config) for the dataset `seed`: its synth and folds sizes, every training seed offset
    by `seed`."""
    cfg = json.loads(json.dumps(base))  # a deep copy of plain YAML
    synth = cfg.setdefault("synth", {})
    synth["seed"] = seed
    for key, value in (("n_train", args.n_train), ("n_test", args.n_test), ("size", args.size)):
        if value is not None:
            synth[key] = value
    if args.folds is not None:
        cfg.setdefault("folds", {})["n_folds"] = args.folds
    for stage in ("detector", "classifier"):
        section = cfg.setdefault(stage, {})
        section["seed"] = seed + int(section.get("seed", 0))
        for keys in ((cfg.get("runs") or {}).get(stage) or {}).values():
            if isinstance(keys, dict) and "seed" in keys:
                keys["seed"] = seed + int(keys["seed"])
    return cfg


def reseed_config(cfg: dict, resolved: dict, run: str) -> tuple[dict, str]:
    """`cfg` with one more detector run: `run` with its training seed + RESEED, and that run's name."""
    from vinbig.runs import declared, run_config

    name = run + SUFFIX
    out = json.loads(json.dumps(cfg))
    runs = out.setdefault("runs", {})
    detector = dict(declared(resolved, "detector")) or {run: {}}  # no runs declared: the one run, 'default'
    detector[name] = {**(detector.get(run) or {}), "seed": run_config(resolved, "detector", run)["seed"] + RESEED}
    runs["detector"] = detector
    return out, name


# --------------------------------------------------------------------------- one seed


class Seed:
    """One dataset seed: its folders, its configs and the stages run on it."""

    def __init__(self, args: argparse.Namespace, base: dict, seed: int, say):
        from vinbig.config import load_config
        from vinbig.runs import run_names

        self.args, self.seed, self.say = args, seed, say
        self.out = args.out / f"seed{seed}"
        self.work, self.data = self.out / "work", self.out / "data"
        self.cfg = seed_config(base, seed, args)
        self.config = write(self.out / "config.yaml", yaml.safe_dump(self.cfg, sort_keys=False))
        self.resolved = load_config(self.config, args.overrides)
        self.check_data()
        runs = run_names(self.resolved, "detector")
        self.reseed = None if args.reseed is False else args.reseed or runs[0]
        if self.reseed is not None and self.reseed not in runs:
            raise Failed(f"--reseed {self.reseed}: not a detector run of {args.config}; its detector runs are "
                         f"{', '.join(runs)}")

    def check_data(self) -> None:
        """A dataset already in OUT/seedS/data must be the one asked for (a rerun with other sizes would use it)."""
        from vinbig.artifacts import config_path
        from vinbig.config import saved_section

        saved = config_path(self.data, "synth")
        if not (self.data / "train.csv").is_file() or not saved.is_file():
            return
        want = {k: v for k, v in self.resolved["synth"].items() if k != "workers"}
        have = {k: v for k, v in saved_section(saved, "synth").items() if k != "workers"}
        if want != have:
            diff = ", ".join(f"synth.{k}: {have.get(k)} there, {v} asked" for k, v in want.items() if have.get(k) != v)
            raise Failed(f"seed {self.seed}: {self.data} was made with other settings ({diff}); give another --out "
                         f"or remove {self.out}")

    def progress(self, stage: str, commands: list[list[str]], seconds: float) -> None:
        named: dict[str, list[str]] = {}  # the runs and folds a stage names ('vinbig train --run a --run b ...')
        for argv in commands:
            for a, b in zip(argv, argv[1:]):
                if a in ("--run", "--fold") and b not in named.setdefault(a[2:], []):
                    named[a[2:]].append(b)
        what = "; ".join(f"{k} {', '.join(v)}" for k, v in named.items())
        self.say(f"seed {self.seed}: {stage}{f' ({what})' if what else ''}: {seconds:.1f} s")

    def stopped(self, e) -> Failed:
        return Failed(f"seed {self.seed} stopped at stage '{e.stage}': 'vinbig {shlex.join(e.argv)}' failed (its "
                      f"error is above; the stages' output is in {self.out / 'stages.log'}); rerun the same command once it is fixed: "
                      "the datasets and the trained folds are kept")

    def run(self) -> list[dict]:
        """Every submission of this seed: its rows."""
        from vinbig.app.demo import DemoError, run_demo
        from vinbig.errors import VinbigError

        verbosity = -1
        try:
            with open(self.out / "stages.log", "w") as log, contextlib.redirect_stdout(log):
                s = run_demo(self.out, self.resolved, self.config, self.args.overrides, verbosity,
                             echo=print, progress=self.progress)
                rows = [{"seed": self.seed, **r} for r in s["leaderboard"]]
                if not rows:
                    raise Failed(f"seed {self.seed}: no leaderboard: {s['private']} is missing")
                rows += self.single_run(rows)
                rows += self.equal_weights(verbosity)
                if self.reseed is not None:
                    rows += self.reseeded(verbosity)
        except DemoError as e:
            raise self.stopped(e) from None
        except VinbigError as e:
            raise Failed(f"seed {self.seed}: {e}") from None
        return rows

    def single_run(self, rows: list[dict]) -> list[dict]:
        """With one detector run the demo fuses no run alone: that run alone is the ensemble."""
        from vinbig.runs import run_names

        runs = run_names(self.resolved, "detector")
        if len(runs) > 1:
            return []
        ens = next(r for r in rows if r["submission"] == ENSEMBLE)
        return [{**ens, "submission": f"run {runs[0]}"}]

    def equal_weights(self, verbosity: int) -> list[dict]:
        """The ensemble with every run weighing 1 (tuned values otherwise), when a stage has several runs."""
        from fusion import fusion_config, score_oof
        from vinbig.app.demo import Demo
        from vinbig.runs import WEIGHTS, run_names
        from vinbig.submission import score_files
        from vinbig.synth import PRIVATE_TRUTH

        equal = [f"fusion.{key}=" + "{" + ", ".join(f"{r}: 1" for r in run_names(self.resolved, stage)) + "}"
                 for stage, key in WEIGHTS.items() if len(run_names(self.resolved, stage)) > 1]
        if not equal:
            return []
        out = self.work / "submission_equal.csv"
        d = Demo(self.out, self.config, [*self.args.overrides, *equal], verbosity, self.progress)
        d.stage("equal weights", ["fuse", "--work", str(self.work), "--split", "test", "--out", str(out)])
        f = fusion_config(self.work, self.config, [*self.args.overrides, *equal])["fusion"]
        return [{"seed": self.seed, "submission": EQUAL, "oof": float(score_oof(self.work, f).result.mean_ap),
                 "lb": float(score_files(self.data / PRIVATE_TRUTH, out).mean_ap)}]

    def reseeded(self, verbosity: int) -> list[dict]:
        """Run --reseed trained again with another training seed, fused alone with the tuned values."""
        from fusion import fusion_config, score_oof
        from vinbig.app.demo import Demo, run_submission
        from vinbig.submission import score_files
        from vinbig.synth import PRIVATE_TRUTH

        run = self.reseed
        cfg, name = reseed_config(self.cfg, self.resolved, run)
        config = write(self.out / "config_reseed.yaml", yaml.safe_dump(cfg, sort_keys=False))
        d = Demo(self.out, config, self.args.overrides, verbosity, self.progress)
        w = str(self.work)
        d.train("detector", [name], list(range(self.resolved["folds"]["n_folds"])))
        d.stage("predict reseeded", *[["predict-detector", "--work", w, "--split", s, "--tta", "hflip", "--run", name]
                                      for s in ("oof", "test")])
        sub = run_submission(self.work, name)
        d.stage("submission reseeded", ["fuse", "--work", w, "--split", "test", "--run", name, "--out", str(sub)])
        f = fusion_config(self.work, config, self.args.overrides)["fusion"]
        return [{"seed": self.seed, "submission": f"run {run}, reseeded",
                 "oof": float(score_oof(self.work, f, runs=[name]).result.mean_ap),
                 "lb": float(score_files(self.data / PRIVATE_TRUTH, sub).mean_ap)}]


# --------------------------------------------------------------------------- the outputs


def write(path: Path, text: str) -> Path:
    """`text` to `path`, never half-written."""
    from vinbig.artifacts import atomic_path, writing

    path.parent.mkdir(parents=True, exist_ok=True)
    with writing(path, "free disk space or give another --out"), atomic_path(path) as tmp:
        tmp.write_text(text)
    return path


def _pm(ms: dict) -> str:
    if ms["mean"] is None:
        return "-"
    return f"{ms['mean']:.4f}" + (f" ± {ms['sd']:.4f}" if ms["sd"] is not None else "")


def markdown(rows: list[dict], summary: dict, info: dict) -> str:
    """results.md: the tables of the summary, the rows seed by seed, the command, the machine and the time."""
    seeds = sorted({r["seed"] for r in rows})
    lines = [f"Synthetic leaderboard over {len(seeds)} dataset seed{'s' * (len(seeds) != 1)} "
             f"({', '.join(map(str, seeds))}): mean ± sd over seeds.", "", "| submission | n | OOF mAP | LB mAP |", "|---|---|---|---|"]
    lines += [f"| {s} | {v['n']} | {_pm(v['oof'])} | {_pm(v['lb'])} |" for s, v in summary["submissions"].items()]
    lines += ["", "Paired LB differences, seed by seed (SE: sd of the differences / sqrt(n)):", "",
              "| difference | mean | SE | ahead |", "|---|---|---|---|"]
    for key, p in summary["paired"].items():
        se = f"{p['se']:.4f}" if p["se"] is not None else "-"
        lines.append(f"| {PAIRED[key]} | {p['mean']:+.4f} | {se} | on {p['ahead']} of {p['n']} seeds |")
    picked = summary["paired"].get("ensemble - picked member")
    if picked:
        lines += ["", "member picked by OOF: " + ", ".join(f"seed {s['seed']}: {s['member']}" for s in picked["seeds"])]
    noise = summary["noise"]
    lines += [""]
    if noise:
        lines.append(f"Noise floor: one run ({', '.join(noise['runs'])}) retrained with another training seed on the "
                     f"same dataset: sd of its LB {noise['lb_sd']:.4f} (OOF {noise['oof_sd']:.4f}), from "
                     f"{noise['n']} pair{'s' * (noise['n'] != 1)} (mean difference {noise['lb_mean_diff']:+.4f}). "
                     "A lever's gain below about twice this is not known to be real.")
    else:
        lines.append("Noise floor: not measured (--no-reseed).")
    by = {(r["seed"], r["submission"]): r for r in rows}
    subs = list(summary["submissions"])
    lines += ["", "Seed by seed, LB mAP (OOF mAP):", "", "| seed | " + " | ".join(subs) + " |",
              "|---|" + "---|" * len(subs)]
    for seed in seeds:
        cells = [f"{by[seed, s]['lb']:.4f} ({by[seed, s]['oof']:.4f})" if (seed, s) in by else "-" for s in subs]
        lines.append(f"| {seed} | " + " | ".join(cells) + " |")
    lines += ["", f"command: `{info['command']}`", f"machine: {info['machine']}; torch {info['torch']}",
              f"time: {info['seconds'] / 60:.1f} min"]
    return "\n".join(lines) + "\n"


def machine() -> tuple[str, str]:
    """The machine (the GPU, else the CPU model and its cores) and torch's version."""
    import torch

    from gpu_check import device_name  # bench/, beside this file

    cuda = torch.cuda.is_available()
    name = device_name(cuda)
    if cuda:
        name += f", {os.cpu_count()} CPU cores"
    return name, torch.__version__


# --------------------------------------------------------------------------- main


def parse(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", type=Path, default=ROOT / "configs" / "demo.yaml",
                   help="the config, with its runs (default: configs/demo.yaml)")
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2], metavar="S",
                   help="dataset seeds: one synthetic dataset each, its training seeds offset by it (default: 0 1 2)")
    p.add_argument("--n-train", type=int, help="train images per dataset (default: the config's synth.n_train)")
    p.add_argument("--n-test", type=int, help="test images per dataset (default: the config's synth.n_test)")
    p.add_argument("--folds", type=int, help="folds (default: the config's folds.n_folds)")
    p.add_argument("--size", type=int, help="synthetic images' median height in px (synth.size; images.size, "
                                            "the PNGs' long side, stays the config's)")
    p.add_argument("--reseed", metavar="RUN", help="the detector run retrained with another training seed for the "
                                                   "noise floor (default: the first)")
    p.add_argument("--no-reseed", dest="reseed", action="store_false", help="no noise floor (faster)")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="SECTION.KEY=VALUE",
                   help="a config value over every seed's config, as vinbig's --set (repeatable)")
    p.add_argument("--out", type=Path, default=ROOT / "work" / "leaderboard", help="output folder")
    args = p.parse_args(argv)
    if len(set(args.seeds)) != len(args.seeds):
        p.error("--seeds: each seed once")
    if not args.config.is_file():
        p.error(f"--config {args.config} not found")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse(argv)
    terminal = sys.stdout
    t0 = time.perf_counter()

    def say(line: str) -> None:
        print(f"[{time.perf_counter() - t0:7.1f} s] {line}", file=terminal, flush=True)

    base = yaml.safe_load(args.config.read_text()) or {}
    rows: list[dict] = []
    try:
        from vinbig.errors import VinbigError

        for seed in args.seeds:
            try:
                rows += Seed(args, base, seed, say).run()
            except VinbigError as e:
                raise Failed(f"seed {seed}: {e}") from None
            say(f"seed {seed}: " + ", ".join(f"{r['submission']} {r['lb']:.4f}" for r in rows if r["seed"] == seed))
    except Failed as e:
        print(f"leaderboard: {e}", file=sys.stderr)
        return 1
    name, torch_version = machine()
    info = {"command": shlex.join([sys.executable.rsplit("/", 1)[-1], "bench/leaderboard.py",
                                   *(argv if argv is not None else sys.argv[1:])]),
            "machine": name, "torch": torch_version, "seconds": time.perf_counter() - t0}
    summary = summarize(rows)
    write(args.out / "results.json", json.dumps({"rows": rows, "summary": summary, "info": info}, indent=1))
    md = markdown(rows, summary, info)
    write(args.out / "results.md", md)
    print(md, file=terminal)
    return 0


if __name__ == "__main__":
    sys.exit(main())
