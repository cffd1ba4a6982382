"""Median time per training iteration (compilation excluded) of each method on the digits task,
and the ratio of each +MetaAlign variant over its baseline.

    python benchmarks/step_time.py --iterations 60 --out benchmarks/results/step_time.md
"""

from __future__ import annotations

import argparse
import platform
import time
from pathlib import Path

import jax
import numpy as np

from uda_jax.config import load_config
from uda_jax.data.pipeline import PairStream
from uda_jax.experiment import build_experiment, compile_train_step, create_train_state

ROOT = Path(__file__).resolve().parent.parent
ENTRIES = [  # (label, config, overrides, baseline label for the ratio)
    ("source_only", "digits_source_only", [], None),
    ("mcd", "digits_mcd", [], None),
    ("cgdm", "digits_cgdm", ["cgdm.warmup_steps=0"], None),
    ("dann", "digits_dann", [], None),
    ("dann + MetaAlign (1st)", "digits_dann_metaalign", [], "dann"),
    ("dann + MetaAlign (2nd)", "digits_dann_metaalign", ["metaalign.order=second"], "dann"),
    ("cdan", "digits_cdan", [], None),
    ("cdan + MetaAlign (1st)", "digits_cdan_metaalign", [], "cdan"),
    ("cdan + MetaAlign (2nd)", "digits_cdan_metaalign", ["metaalign.order=second"], "cdan"),
    ("gvb", "digits_gvb", [], None),
    ("gvb + MetaAlign (1st)", "digits_gvb_metaalign", [], "gvb"),
    ("gvb + MetaAlign (2nd)", "digits_gvb_metaalign", ["metaalign.order=second"], "gvb"),
]


def median_iteration_seconds(config_name: str, overrides: list[str], iterations: int) -> float:
    """Median wall time of one iteration after the compiling ones, device work included."""
    config = load_config(ROOT / "configs" / f"{config_name}.yaml", [*overrides, "run_dir=/tmp"])
    experiment = build_experiment(config)
    state = create_train_state(experiment)
    if "pseudo_labels" in state.extras:  # labels of a fresh model: only their cost matters
        state = state.replace(
            extras={**state.extras, "pseudo_labels": state.extras["pseudo_labels"] * 0}
        )
    step_fn = compile_train_step(experiment)
    stream = PairStream(experiment.source, experiment.target, config.data.batch_size, 0)
    times = []
    for step in range(iterations + 2):
        batch = next(stream)
        start = time.perf_counter()
        state, _ = step_fn(state, batch)
        jax.block_until_ready(state.step)
        if step >= 2:  # step 0 compiles, step 1 warms caches
            times.append(time.perf_counter() - start)
    return float(np.median(times))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--iterations", type=int, default=60)
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks/results/step_time.md")
    parser.add_argument("--only", nargs="*", help="labels of the rows to measure (default: all)")
    args = parser.parse_args()
    seconds, rows = {}, []
    for label, config_name, overrides, baseline in ENTRIES:
        if args.only and label not in args.only:
            continue
        seconds[label] = median_iteration_seconds(config_name, overrides, args.iterations)
        ratio = f"{seconds[label] / seconds[baseline]:.2f}×" if baseline in seconds else ""
        rows.append(f"| {label} | {1000 * seconds[label]:.1f} | {ratio} |")
        print(rows[-1], flush=True)
    header = [
        f"Measured {time.strftime('%Y-%m-%d')} on {platform.machine()}, {jax.device_count()} "
        f"{jax.default_backend()} device(s), JAX {jax.__version__}, nothing else running.",
        f"Command: `python benchmarks/step_time.py --iterations {args.iterations}`. Batches: "
        "32+32 (source_only, MCD, CGDM with L_GD on), 24+24 (DANN, CDAN, GVB-GD, MetaAlign).",
        "",
        "| method | median ms / iteration | × baseline |",
        "|---|---|---|",
    ]
    table = "\n".join(header + rows) + "\n"
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(table)
    print(table)


if __name__ == "__main__":
    main()
