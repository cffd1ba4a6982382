"""uda-jax vs PyTorch: median time and peak memory of one CGDM and one GVB-GD + MetaAlign
iteration on the same CPU, in one process, on the same batches.

    python benchmarks/step_speed.py --iterations 20 --warmup 3 --networks digits resnet50

JAX side: the library's own compiled steps (``make_step_fn``) built from the digits configs,
batches from ``DomainPairStream``; CGDM with ``method.warmup_steps=0`` and clustered
pseudo-labels, so L^W and the double-backprop L_GD are on. PyTorch side:
``benchmarks/torch_reference`` (the reference code's sub-steps and optimizers). Both float32,
same thread count, evaluation and pseudo-labelling excluded, compile/warm-up iterations
excluded, median over the timed iterations.

Peak memory. JAX: the compiled step's ``memory_analysis()``, arguments (state + batch) + XLA
temporaries + outputs not aliased to donated inputs. PyTorch: the bytes of the persistent state
(parameters, BN buffers, optimizer state) + batch, plus the peak of live allocations during one
profiled iteration (``torch.profiler`` memory events, allocations minus frees in time order).
Both count tensor buffers, not the interpreter or library code.
"""

from __future__ import annotations

import argparse
import dataclasses
import importlib.util
import os
import platform
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
CONFIGS = {"cgdm": "digits_cgdm", "metaalign": "digits_gvb_metaalign"}
MB = 1024 * 1024


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """The command line."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--iterations", type=int, default=20, help="timed iterations per cell")
    parser.add_argument("--warmup", type=int, default=3, help="untimed iterations (≥ 2 for JAX)")
    parser.add_argument(
        "--resnet-iterations", type=int, default=None, help="timed iterations, ResNet-50 cells"
    )
    parser.add_argument(
        "--repeats", type=int, default=2, help="timed blocks per framework, alternating"
    )
    parser.add_argument(
        "--networks", nargs="+", default=["digits", "resnet50"], choices=["digits", "resnet50"]
    )
    parser.add_argument(
        "--methods", nargs="+", default=["cgdm", "metaalign"], choices=["cgdm", "metaalign"]
    )
    parser.add_argument(
        "--threads",
        type=int,
        default=os.cpu_count() or 1,
        help="torch threads and XLA intra-op threads (default: all CPUs)",
    )
    parser.add_argument("--resnet-batch", type=int, default=4, help="per domain, ResNet-50")
    parser.add_argument("--resnet-size", type=int, default=64, help="image side, ResNet-50")
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks/results/step_speed.md")
    return parser.parse_args(argv)


def cell_overrides(network: str, method: str, args: argparse.Namespace) -> list[str]:
    """Config overrides of one table cell (on top of ``configs/<CONFIGS[method]>.yaml``)."""
    overrides = ["run_dir=/tmp", "progress=false"]
    if method == "cgdm":
        overrides.append("method.warmup_steps=0")  # pseudo-label CE and L_GD on from step 0
    if network == "resnet50":
        overrides += [
            "model.backbone=resnet50",
            f"data.image_size={args.resnet_size}",
            f"data.batch_size={args.resnet_batch}",
        ]
        if method == "cgdm":  # ResBottle's Linear(2048 → 256); GVB-GD has no bottleneck (§2.5)
            # step C as one loop body: unrolled, the ResNet-50 step took > 15 min to compile
            overrides += ["model.bottleneck_dim=256", "method.unroll_c=false"]
    return overrides


def _to_rgb(domain):
    """``domain`` with its images repeated over 3 channels."""
    import numpy as np

    rgb = lambda a: np.ascontiguousarray(np.repeat(a, 3, axis=-1))
    return dataclasses.replace(
        domain, train_images=rgb(domain.train_images), test_images=rgb(domain.test_images)
    )


class JaxCell:
    """The library's experiment, state, compiled step and batch stream for one cell."""

    def __init__(self, method: str, overrides: list[str], rgb: bool = False) -> None:
        import jax

        from uda_jax.config import load_config
        from uda_jax.data.pipeline import DomainPairStream
        from uda_jax.evaluation import make_predict_fn
        from uda_jax.experiment import build_experiment, create_train_state, make_step_fn
        from uda_jax.loop_eval import refresh_pseudo_labels

        self.config = load_config(ROOT / "configs" / f"{CONFIGS[method]}.yaml", overrides)
        self.experiment = build_experiment(self.config)
        if rgb:  # the grey digits repeated to 3 channels: the ResNet's RGB input
            self.experiment = dataclasses.replace(
                self.experiment,
                source=_to_rgb(self.experiment.source),
                target=_to_rgb(self.experiment.target),
            )
        self.state = create_train_state(self.experiment)
        if self.experiment.method.USES_PSEUDO_LABELS:  # the loop's refresh at step 0 (excluded)
            predict_fn = make_predict_fn(self.experiment.ctx.network)
            self.state = refresh_pseudo_labels(self.experiment, self.state, predict_fn)
        self.step_fn = make_step_fn(self.experiment)
        self.stream = DomainPairStream(
            self.experiment.source, self.experiment.target, self.config.data.batch_size, 0
        )
        self.batches = [next(self.stream) for _ in range(8)]  # shared with PyTorch
        self.step = 0
        self._jax = jax

    def batch(self, i: int) -> dict[str, Any]:
        """The ``i``-th batch, cycling over a few fixed ones."""
        return self.batches[i % len(self.batches)]

    def run(self, i: int) -> float:
        """One iteration, blocked until done; its wall time in seconds."""
        start = time.perf_counter()
        self.state, _ = self.step_fn(self.state, self.batch(i), self.step)
        self._jax.block_until_ready(self.state)
        self.step += 1
        return time.perf_counter() - start

    def peak_bytes(self) -> int:
        """The largest ``memory_analysis()`` total over the step's compiled functions (built as
        ``make_step_fn`` builds them: one, or one per MetaAlign role)."""
        import functools

        from uda_jax.methods import metaalign
        from uda_jax.methods.base import compile_loop_step

        ctx = self.experiment.ctx
        if ctx.metaalign:
            fns = [
                compile_loop_step(functools.partial(metaalign.branch_step, align_first=f), ctx)
                for f in (False, True)
            ]
        else:
            fns = [compile_loop_step(self.experiment.method.train_step, ctx)]
        peaks = []
        for fn in fns:
            m = fn.lower(self.state, self.batch(0)).compile().memory_analysis()
            outputs = m.output_size_in_bytes - m.alias_size_in_bytes
            peaks.append(m.argument_size_in_bytes + m.temp_size_in_bytes + outputs)
        return max(peaks)


class TorchCell:
    """The PyTorch iteration of one cell on the JAX cell's batches."""

    def __init__(self, method: str, jax_cell: JaxCell) -> None:
        import numpy as np
        import torch

        from benchmarks.torch_reference import cgdm, metaalign

        config, self.method = jax_cell.config, method
        image_shape = jax_cell.experiment.source.image_shape
        num_classes = jax_cell.experiment.source.num_classes
        common = dict(
            backbone=config.model.backbone,
            in_channels=image_shape[-1],
            bottleneck_dim=config.model.bottleneck_dim,
            num_classes=num_classes,
        )
        m, o = config.method, config.optimizer
        if method == "cgdm":
            settings = cgdm.CGDMSettings(
                **common,
                widths=tuple(config.model.classifier_widths),
                dropout=config.model.dropout,
                lr=o.learning_rate,
                weight_decay=o.weight_decay,
                f_momentum=o.kwargs.get("momentum", 0.0),
                g_momentum=o.groups["g"].kwargs.get("momentum", 0.0),
                num_k=m.num_k,
                entropy_weight=m.entropy_weight,
                pseudo_weight=m.pseudo_weight,
                gd_weight=m.gd_weight,
                discrepancy_weight=m.discrepancy_weight,
            )
            self.iteration = cgdm.CGDMIteration(settings)
        else:
            settings = metaalign.MetaAlignSettings(
                **common,
                hidden=config.model.discriminator_hidden,
                dropout=config.model.discriminator_dropout,
                lr=o.learning_rate,
                weight_decay=o.weight_decay,
                momentum=o.kwargs.get("momentum", 0.0),
                head_lr_mult=o.groups["f"].lr_mult,
                meta_lr=config.metaalign.meta_lr,
                trade_off=m.trade_off,
                gamma=o.schedule_gamma,
                power=o.schedule_power,
                max_iter=m.grl_max_iter,
            )
            self.iteration = metaalign.MetaAlignIteration(settings)
        pseudo = np.asarray(jax_cell.state.pseudo_labels)
        nchw = lambda a: torch.from_numpy(np.ascontiguousarray(np.transpose(a, (0, 3, 1, 2))))
        self.batches = [
            (
                nchw(b["source_image"]),
                torch.from_numpy(b["source_label"]).long(),
                nchw(b["target_image"]),
                torch.from_numpy(pseudo[b["target_index"]]).long(),
            )
            for b in jax_cell.batches
        ]
        self._torch = torch

    def run(self, i: int) -> float:
        """One iteration; its wall time in seconds."""
        xs, ys, xt, yt = self.batches[i % len(self.batches)]
        start = time.perf_counter()
        if self.method == "cgdm":
            self.iteration.step(xs, ys, xt, yt)
        else:
            self.iteration.step(xs, ys, xt)
        return time.perf_counter() - start

    def peak_bytes(self, i: int) -> int:
        """Persistent state + batch bytes, plus the peak of live allocations in one iteration."""
        from torch.profiler import ProfilerActivity, profile

        persistent = sum(t.numel() * t.element_size() for t in self.iteration.state_tensors())
        persistent += sum(t.numel() * t.element_size() for t in self.batches[0])
        with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
            self.run(i)
        events = [e for e in prof.profiler.kineto_results.events() if e.name() == "[memory]"]
        live = peak = 0
        for e in sorted(events, key=lambda e: e.start_ns()):
            live += e.nbytes()
            peak = max(peak, live)
        return persistent + peak


def median_ms(run, offset: int, iterations: int) -> float:
    """Median of ``run(offset + i)`` over ``iterations`` calls, in ms."""
    import numpy as np

    return 1000 * float(np.median([run(offset + i) for i in range(iterations)]))


def machine() -> str:
    """``lscpu`` model name and CPU count."""
    try:
        lines = subprocess.run(["lscpu"], capture_output=True, text=True).stdout.splitlines()
        model = next(line.split(":", 1)[1].strip() for line in lines if "Model name" in line)
    except (OSError, StopIteration):
        model = platform.processor() or platform.machine()
    return f"{model}, {os.cpu_count()} CPUs"


def main(argv: list[str] | None = None) -> int:
    """Runs the cells and writes the table."""
    args = parse_args(argv)
    load_before = os.getloadavg()[0]
    if importlib.util.find_spec("torch") is None:
        print("step_speed: PyTorch is not installed (pip install torch); nothing measured.")
        return 2
    if args.threads < (os.cpu_count() or 1):  # XLA's CPU client uses every core by default
        os.environ["XLA_FLAGS"] = (
            os.environ.get("XLA_FLAGS", "")
            + f" --xla_cpu_multi_thread_eigen=true intra_op_parallelism_threads={args.threads}"
        )
    sys.path.insert(0, str(ROOT))
    import jax
    import torch

    torch.set_num_threads(args.threads)
    header = (
        "| network | method | batch | repeat | JAX ms | PyTorch ms | speed-up (PyTorch/JAX) "
        "| JAX peak MB | PyTorch peak MB |"
    )
    rows = [header, "|---|---|---|---|---|---|---|---|---|"]
    print(f"torch threads {torch.get_num_threads()}, {machine()}", flush=True)
    print("\n".join(rows), flush=True)
    notes = []
    for network in args.networks:
        if network == "resnet50":
            from uda_jax.models import BACKBONES

            if "resnet50" not in BACKBONES:
                notes.append("resnet50: skipped, uda_jax.models.BACKBONES has no 'resnet50' yet")
                print(notes[-1], flush=True)
                continue
        for method in args.methods:
            rgb = network == "resnet50"
            jax_cell = JaxCell(method, cell_overrides(network, method, args), rgb=rgb)
            torch_cell = TorchCell(method, jax_cell)
            iterations = args.iterations
            if network == "resnet50" and args.resnet_iterations:
                iterations = args.resnet_iterations
            warmup = max(args.warmup, 2)  # JAX compiles at steps 0 (and 1 for MetaAlign)
            runs = {"jax": jax_cell.run, "torch": torch_cell.run}
            for run in runs.values():
                for i in range(warmup):
                    run(i)
            jax_mb = jax_cell.peak_bytes() / MB
            torch_mb = torch_cell.peak_bytes(warmup) / MB
            b = jax_cell.config.data.batch_size
            shape = "×".join(str(s) for s in jax_cell.experiment.source.image_shape)
            for repeat in range(args.repeats):
                offset = warmup + 1 + repeat * iterations
                jax_ms, torch_ms = (median_ms(run, offset, iterations) for run in runs.values())
                rows.append(
                    f"| {network} | {method} | {b}+{b} ({shape}) | {repeat + 1} | {jax_ms:.1f} "
                    f"| {torch_ms:.1f} | {torch_ms / jax_ms:.2f}× | {jax_mb:.1f} | {torch_mb:.1f} |"
                )
                print(rows[-1], flush=True)
    command = "python benchmarks/step_speed.py " + " ".join(
        argv if argv is not None else sys.argv[1:]
    )
    report = [
        f"Measured {time.strftime('%Y-%m-%d %H:%M')} on {machine()}; 1-minute load average "
        f"{load_before:.2f} before and {os.getloadavg()[0]:.2f} after the run.",
        f"Versions: Python {platform.python_version()}, JAX {jax.__version__}, "
        f"PyTorch {torch.__version__}; {args.threads} threads for both (torch.set_num_threads; "
        "XLA's CPU client), float32 both.",
        f"Command: `{command.strip()}`. Per cell: {max(args.warmup, 2)} untimed iterations "
        "per framework (JAX compilation among them) and one profiled for memory, then "
        f"{args.repeats} repeats of [JAX block, PyTorch block], each the median of "
        f"{args.iterations} iterations ({args.resnet_iterations or args.iterations} for "
        "ResNet-50).",
        "",
        *rows,
        "",
        *notes,
    ]
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text("\n".join(report).rstrip() + "\n")
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
