"""Step time before and after the method-protocol refactor, measured in one run.

Digits CGDM (L_GD on, 32+32) and GVB-GD + MetaAlign (first order, 24+24): median milliseconds per
iteration (compilation excluded) of the checkout before the refactor (commit 7c43932, whose API
had ``make_step_fn``) and of this checkout, interleaved round by round, each measurement a fresh
subprocess, so a slow phase of the machine hits both sides alike.

    git worktree add /tmp/before 7c43932
    python benchmarks/ab_refactor_step_time.py --rounds 4 --iterations 40
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
TIMING = """
    times = []
    for i in range(n + 4):
        batch = next(stream)
        start = time.perf_counter()
        {call}
        jax.block_until_ready(state.step)
        if i >= 4:
            times.append(time.perf_counter() - start)
    print(1000 * float(np.median(times)))
"""
BEFORE = """
import sys, time, jax, numpy as np
from uda_jax.config import load_config
from uda_jax.data.pipeline import DomainPairStream
from uda_jax.experiment import build_experiment, create_train_state, make_step_fn
name, overrides, n = sys.argv[1], sys.argv[2:-1], int(sys.argv[-1])
config = load_config(f"configs/{name}.yaml", [*overrides, "run_dir=/tmp"])
experiment = build_experiment(config)
state = create_train_state(experiment)
if experiment.method.USES_PSEUDO_LABELS:
    state = state.replace(pseudo_labels=state.pseudo_labels * 0)
step_fn = make_step_fn(experiment)
stream = DomainPairStream(experiment.source, experiment.target, config.data.batch_size, 0)
if True:""" + TIMING.format(call="state, _ = step_fn(state, batch, i)")
AFTER = """
import sys, time, jax, numpy as np
from uda_jax.config import load_config
from uda_jax.data.pipeline import PairStream
from uda_jax.experiment import build_experiment, compile_train_step, create_train_state
name, overrides, n = sys.argv[1], sys.argv[2:-1], int(sys.argv[-1])
config = load_config(f"configs/{name}.yaml", [*overrides, "run_dir=/tmp"])
experiment = build_experiment(config)
state = create_train_state(experiment)
if "pseudo_labels" in state.extras:
    labels = state.extras["pseudo_labels"] * 0
    state = state.replace(extras={**state.extras, "pseudo_labels": labels})
step_fn = compile_train_step(experiment)
stream = PairStream(experiment.source, experiment.target, config.data.batch_size, 0)
if True:""" + TIMING.format(call="state, _ = step_fn(state, batch)")
CASES = {  # label: (config, overrides before, overrides after)
    "digits CGDM": ("digits_cgdm", ["method.warmup_steps=0"], ["cgdm.warmup_steps=0"]),
    "digits GVB-GD + MetaAlign (1st)": ("digits_gvb_metaalign", [], []),
}


def measure(side: str, checkout: Path, case: str, iterations: int) -> float:
    """Median ms per iteration of ``case`` in a fresh interpreter on ``checkout``."""
    config, before, after = CASES[case]
    code, overrides = (BEFORE, before) if side == "before" else (AFTER, after)
    env = {"PATH": "/usr/bin:/bin", "HOME": "/root", "JAX_PLATFORMS": "cpu"}
    env["PYTHONPATH"] = str(checkout)
    command = [sys.executable, "-c", code, config, *overrides, str(iterations)]
    done = subprocess.run(command, cwd=checkout, env=env, capture_output=True, text=True)
    if done.returncode:
        sys.exit(done.stderr[-2000:])
    return float(done.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--before", type=Path, default=Path("/tmp/before"))
    parser.add_argument("--rounds", type=int, default=4)
    parser.add_argument("--iterations", type=int, default=40)
    args = parser.parse_args()
    results = {case: {"before": [], "after": []} for case in CASES}
    for round_ in range(args.rounds):
        for case in CASES:
            for side, checkout in (("before", args.before), ("after", ROOT)):
                ms = measure(side, checkout, case, args.iterations)
                results[case][side].append(ms)
                print(f"round {round_} {case} {side}: {ms:.1f} ms", flush=True)
    for case, sides in results.items():
        before, after = (statistics.median(sides[s]) for s in ("before", "after"))
        ratio = after / before
        print(f"{case}: median {before:.1f} ms before, {after:.1f} ms after ({ratio:.2f}×)")


if __name__ == "__main__":
    main()
