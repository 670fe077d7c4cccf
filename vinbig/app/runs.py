"""`vinbig runs`: the named runs of the config (its ``runs`` section), for people and for the Makefile."""

from __future__ import annotations

import argparse

from vinbig.runs import STAGES, declared, run_config, run_names


def cmd_runs(args: argparse.Namespace, cfg: dict) -> int:
    stages = [args.stage] if args.stage else list(STAGES)
    for stage in stages:
        names = run_names(cfg, stage)
        if args.stage:
            print(" ".join(names))
            continue
        print(f"{stage} runs:")
        for name in names:
            changed = declared(cfg, stage).get(name) or {}
            keys = run_config(cfg, stage, name)
            what = ", ".join(f"{k}={keys[k]}" for k in changed) or f"the {stage} section as it is"
            print(f"  {name}: {what}")
    return 0


def register(add) -> None:
    """Add `vinbig runs` with ``add(name, func, help, description, reads=...)``."""
    p = add("runs", cmd_runs, "list the named detector and classifier runs of the config",
            "Each run of the config's runs section and the keys it changes of its stage's section; a config "
            "without runs has one run of each stage, 'default'. With --stage, only that stage's names on one line "
            "(what the Makefile reads).", reads=["runs"])
    p.add_argument("--stage", choices=STAGES, help="only this stage's run names, space-separated")
