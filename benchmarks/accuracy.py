"""Target accuracy of source_only, MCD and CGDM on the embedded digits task, both directions.

Every method gets the same budget (steps, batch, optimizer) and the same seeds. Writes a
Markdown table (target accuracy mean ± std over seeds, steps/s) to ``--out`` and prints it.

    python benchmarks/accuracy.py --steps 500 --seeds 0 1 2 --out benchmarks/results/accuracy.md
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
from uda_jax.train import run

ROOT = Path(__file__).resolve().parent.parent
CONFIGS = {
    "source_only": ROOT / "configs/digits_source_only.yaml",
    "mcd": ROOT / "configs/digits_mcd.yaml",
    "cgdm": ROOT / "configs/digits_cgdm.yaml",
}
DIRECTIONS = [("mnist5k", "ucidigits"), ("ucidigits", "mnist5k")]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=500)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--methods", nargs="+", default=list(CONFIGS))
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks/results/accuracy.md")
    parser.add_argument("overrides", nargs="*", help="extra key=value overrides for every run")
    args = parser.parse_args()

    rows, raw = [], []
    with tempfile.TemporaryDirectory() as tmp:
        for source, target in DIRECTIONS:
            for method in args.methods:
                accuracies, speeds = [], []
                for seed in args.seeds:
                    overrides = [
                        f"data.source={source}",
                        f"data.target={target}",
                        f"steps={args.steps}",
                        f"seed={seed}",
                        "eval_every=0",
                        "progress=false",
                        f"run_dir={tmp}/{method}_{source}_{seed}",
                        *args.overrides,
                    ]
                    config = load_config(CONFIGS[method], overrides)
                    result = run(config, Path(config.run_dir))
                    accuracies.append(result["target_accuracy"])
                    speeds.append(result["steps_per_s"])
                    raw.append(
                        {
                            k: result[k]
                            for k in (
                                "method",
                                "source",
                                "target",
                                "seed",
                                "target_accuracy",
                                "steps_per_s",
                            )
                        }
                    )
                    print(json.dumps(raw[-1]), flush=True)
                rows.append(
                    f"| {source} → {target} | {method} | "
                    f"{100 * np.mean(accuracies):.1f} ± {100 * np.std(accuracies):.1f} | "
                    f"{np.median(speeds):.1f} |"
                )
    extra = " " + " ".join(args.overrides) if args.overrides else ""
    seeds = " ".join(map(str, args.seeds))
    header = [
        f"Measured {time.strftime('%Y-%m-%d')} on {platform.processor() or platform.machine()}, "
        f"{jax.device_count()} {jax.default_backend()} device(s), JAX {jax.__version__}.",
        f"Command: `python benchmarks/accuracy.py --steps {args.steps} --seeds {seeds}{extra}`",
        "",
        f"| task | method | target accuracy % (mean ± std, {len(args.seeds)} seeds) | steps/s |",
        "|---|---|---|---|",
    ]
    table = "\n".join(header + rows) + "\n"
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(table)
    args.out.with_suffix(".jsonl").write_text("".join(json.dumps(r) + "\n" for r in raw))
    print(table)


if __name__ == "__main__":
    main()
