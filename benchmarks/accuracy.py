"""Target accuracy of several configs on the embedded digits task, both directions.

Every entry gets the same budget (steps) and the same seeds. An entry is a config name in
``configs/`` with optional overrides after a colon: ``digits_gvb_metaalign:metaalign.order=second``.
Writes a Markdown table (target accuracy mean ± std over seeds, median steps/s) to ``--out``.

    python benchmarks/accuracy.py --steps 400 --seeds 0 1 2                 # CGDM table
    python benchmarks/accuracy.py --steps 300 --out benchmarks/results/metaalign.md \
        --configs digits_dann digits_dann_metaalign digits_dann_metaalign:metaalign.order=second
"""

from __future__ import annotations

import argparse
import json
import platform
import tempfile
import time
from pathlib import Path

import jax
import numpy as np

from uda_jax.config import load_config
from uda_jax.train import train_and_evaluate

ROOT = Path(__file__).resolve().parent.parent
DEFAULT_CONFIGS = ["digits_source_only", "digits_mcd", "digits_cgdm"]
KEYS = ("method", "source", "target", "seed", "target_accuracy", "steps_per_s")
DIRECTIONS = [("mnist5k", "ucidigits"), ("ucidigits", "mnist5k")]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=500)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--configs", nargs="+", default=DEFAULT_CONFIGS)
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks/results/accuracy.md")
    parser.add_argument("overrides", nargs="*", help="extra key=value overrides for every run")
    args = parser.parse_args()

    rows, raw = [], []
    with tempfile.TemporaryDirectory() as tmp:
        for source, target in DIRECTIONS:
            for entry in args.configs:
                name, _, extra_overrides = entry.partition(":")
                accuracies, speeds = [], []
                for seed in args.seeds:
                    overrides = [
                        f"data.source={source}",
                        f"data.target={target}",
                        f"steps={args.steps}",
                        f"seed={seed}",
                        "eval_every=0",
                        "progress=false",
                        f"run_dir={tmp}/{len(raw)}",
                        *args.overrides,
                        *filter(None, extra_overrides.split(",")),
                    ]
                    config = load_config(ROOT / "configs" / f"{name}.yaml", overrides)
                    result = train_and_evaluate(config, Path(config.run_dir))
                    accuracies.append(result["target_accuracy"])
                    speeds.append(result["steps_per_s"])
                    raw.append({"config": entry} | {k: result[k] for k in KEYS})
                    print(json.dumps(raw[-1]), flush=True)
                rows.append(
                    f"| {source} → {target} | {entry} | "
                    f"{100 * np.mean(accuracies):.1f} ± {100 * np.std(accuracies):.1f} | "
                    f"{np.median(speeds):.1f} |"
                )
    extra = " " + " ".join(args.overrides) if args.overrides else ""
    seeds = " ".join(map(str, args.seeds))
    header = [
        f"Measured {time.strftime('%Y-%m-%d')} on {platform.processor() or platform.machine()}, "
        f"{jax.device_count()} {jax.default_backend()} device(s), JAX {jax.__version__}.",
        f"Command: `python benchmarks/accuracy.py --steps {args.steps} --seeds {seeds} "
        f"--configs {' '.join(args.configs)}{extra}`",
        "",
        f"| task | config | target accuracy % (mean ± std, {len(args.seeds)} seeds) | steps/s |",
        "|---|---|---|---|",
    ]
    table = "\n".join(header + rows) + "\n"
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(table)
    args.out.with_suffix(".jsonl").write_text("".join(json.dumps(r) + "\n" for r in raw))
    print(table)


if __name__ == "__main__":
    main()
