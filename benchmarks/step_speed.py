"""uda-jax vs PyTorch: median time and peak memory of one CGDM and one GVB-GD + MetaAlign
iteration on the same CPU or GPU, in one process, on the same batches.

    python benchmarks/step_speed.py --iterations 20 --warmup 3 --networks digits resnet50
    python benchmarks/step_speed.py --device gpu --resnet-batch 0 --resnet-size 224 \
        --peak-tflops 494.7          # H100 SXM dense TF32: the MFU column

JAX side: the library's own compiled train step (``compile_train_step(experiment)``: one jitted
``(state, batch) -> (state, metrics)`` for every iteration; MetaAlign's two roles are a traced
branch inside it, CGDM's warm-up switch is data), lowered and compiled once for timing, memory
and FLOP count, built from the digits configs; batches from ``PairStream``, placed on the device
beforehand as PyTorch's are. CGDM with ``cgdm.warmup_steps=0`` and pseudo-labels from the
method's own hook (the clustering the loop runs before step 0), so L^W and the double-backprop
L_GD are on. PyTorch side: ``benchmarks/torch_reference`` (the official code's sub-steps and
optimizers). Both float32 with each framework's default matmul/convolution precision (on an
Ampere-or-newer GPU that is TF32 convolutions in both, TF32 dots in JAX, full float32 dots in
PyTorch), same thread count on CPU, evaluation and pseudo-labelling excluded, compile/warm-up
iterations excluded, median over the timed iterations; on a GPU each iteration is timed to its
last kernel's end (JAX ``block_until_ready``, ``torch.cuda.synchronize``). The JAX cells use the
config's ``cpu_tuning`` (``auto``: the library's CPU kernels on a CPU); ``--set cpu_tuning=off``
times XLA's own convolutions instead.

FLOPs (:func:`model_flops`): XLA's cost analysis of the step lowered for the CPU before
optimisation, with step C unrolled, so the count is the model's arithmetic (every forward,
backward and double-backward pass), not the compiler's rewrites; for MetaAlign the mean of its
two roles, each counted with the role fixed (``metaalign.roles``), since XLA counts a branch's
most expensive side. ``--peak-tflops`` turns the achieved rate into model FLOP utilisation
(MFU). The report also gives each framework's rate for one dense float32 2048×2048 product on
the device (:func:`matmul_gflops`), the practical peak against which both frameworks' TFLOP/s
columns read.

Peak memory. JAX: the compiled step's ``memory_analysis()``, arguments (state + batch) + XLA
temporaries + outputs not aliased to donated inputs. PyTorch: the bytes of the persistent state
(parameters, BN buffers, optimizer state) + batch, plus the peak of live allocations during one
profiled iteration (``torch.profiler`` memory events, allocations minus frees in time order).
Both count tensor buffers, not the interpreter or library code.

Page faults and system time (:func:`timed_block`): ``getrusage`` of the process around each timed
block, per iteration. A step whose working memory is mapped afresh each time (XLA's CPU
temporaries without ``--cpu-memory reuse``) shows hundreds of MB of faults and tens of ms of
kernel time here, a cost no profile of the step's ops shows.
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import importlib.util
import os
import platform
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

try:
    import resource  # page faults and system time (Unix)
except ImportError:
    resource = None

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
    parser.add_argument(
        "--resnet-batch",
        type=int,
        default=4,
        help="per domain, ResNet-50; 0 = the config's batch (the official code's: CGDM 32, "
        "MetaAlign 24)",
    )
    parser.add_argument("--resnet-size", type=int, default=64, help="image side, ResNet-50")
    parser.add_argument(
        "--device",
        choices=["auto", "cpu", "gpu"],
        default="auto",
        help="where both frameworks run (auto: a GPU when JAX and PyTorch both see one)",
    )
    parser.add_argument(
        "--set",
        dest="jax_overrides",
        nargs="+",
        default=[],
        metavar="KEY=VALUE",
        help="config overrides for the JAX cells, after the cell's own (e.g. precision=bf16, "
        "cgdm.unroll_c=true, cpu_tuning=off); the PyTorch side stays float32",
    )
    parser.add_argument(
        "--peak-tflops",
        type=float,
        default=None,
        help="the device's peak rate for the MFU column (e.g. 494.7: H100 SXM dense TF32)",
    )
    parser.add_argument(
        "--cpu-memory",
        choices=["reuse", "release"],
        default="reuse",
        help="on CPU, XLA's per-step buffers: reuse (uda_jax.cpu.memory.reuse_cpu_buffers, as "
        "the CLI does for ResNets; malloc's settings apply to PyTorch too) or release "
        "(JAX's defaults)",
    )
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks/results/step_speed.md")
    return parser.parse_args(argv)


def cell_overrides(network: str, method: str, args: argparse.Namespace) -> list[str]:
    """Config overrides of one table cell (on top of ``configs/<CONFIGS[method]>.yaml``)."""
    overrides = ["run_dir=/tmp", "progress=false"]
    if method == "cgdm":
        overrides.append("cgdm.warmup_steps=0")  # pseudo-label CE and L_GD on from step 0
    if network == "resnet50":
        overrides += [
            "model.backbone=resnet50",
            f"data.image_size={args.resnet_size}",
        ]
        if args.resnet_batch:
            overrides.append(f"data.batch_size={args.resnet_batch}")
        if method == "cgdm":  # the CGDM code's ResBottle Linear(2048 → 256); GVB-GD has none
            # step C as one loop body: unrolled, the ResNet-50 step took > 15 min to compile
            overrides += ["model.bottleneck_dim=256", "cgdm.unroll_c=false"]
    return overrides + list(args.jax_overrides)


def _to_rgb(domain):
    """``domain`` with its images repeated over 3 channels."""
    import numpy as np

    rgb = lambda a: np.ascontiguousarray(np.repeat(a, 3, axis=-1))
    return dataclasses.replace(
        domain, train_images=rgb(domain.train_images), test_images=rgb(domain.test_images)
    )


class JaxCell:
    """The library's experiment, state, compiled step and batches for one cell."""

    def __init__(self, method: str, overrides: list[str], rgb: bool = False) -> None:
        import jax

        from uda_jax.config import load_config
        from uda_jax.data.pipeline import PairStream
        from uda_jax.data.sources import load_data_domain
        from uda_jax.evaluation import Predictor
        from uda_jax.experiment import build_experiment, compile_train_step, create_train_state

        self.config = load_config(ROOT / "configs" / f"{CONFIGS[method]}.yaml", overrides)
        data = self.config.data
        source, target = (load_data_domain(name, data) for name in (data.source, data.target))
        if rgb:  # the grey digits repeated to 3 channels: the ResNet's RGB input
            source, target = _to_rgb(source), _to_rgb(target)
        self.experiment = build_experiment(self.config, source=source, target=target)
        self.state = create_train_state(self.experiment)
        hooks = self.experiment.method
        if hooks.hook_due(0):  # the loop's host hook before step 0 (CGDM: pseudo-labels)
            predictor = Predictor(self.experiment)
            self.state = hooks.hook(self.state, functools.partial(predictor, self.state))
        stream = PairStream(source, target, data.batch_size, 0)
        self.host_batches = [next(stream) for _ in range(8)]  # shared with PyTorch
        self.batches = [jax.device_put(b) for b in self.host_batches]  # on the device, as torch's
        self.compiled = (
            compile_train_step(self.experiment).lower(self.state, self.batches[0]).compile()
        )
        self.flops = model_flops(self.experiment, self.state, self.batches[0])
        self._jax = jax

    def batch(self, i: int) -> dict[str, Any]:
        """The ``i``-th batch, cycling over a few fixed ones."""
        return self.batches[i % len(self.batches)]

    def run(self, i: int) -> float:
        """One iteration, blocked until done; its wall time in seconds."""
        start = time.perf_counter()
        self.state, _ = self.compiled(self.state, self.batch(i))
        self._jax.block_until_ready(self.state)
        return time.perf_counter() - start

    def flops_per_iteration(self) -> float | None:
        """The model FLOPs of one iteration (:func:`model_flops`), None if XLA gives no count."""
        return self.flops

    def peak_bytes(self) -> int:
        """The compiled step's ``memory_analysis()``: arguments (state + batch) + XLA
        temporaries + outputs not aliased to donated inputs."""
        m = self.compiled.memory_analysis()
        outputs = m.output_size_in_bytes - m.alias_size_in_bytes
        return m.argument_size_in_bytes + m.temp_size_in_bytes + outputs


def counting_variants(method) -> list:
    """The method as :func:`model_flops` counts it: step C unrolled (``unroll_c``), and a
    method with alternating roles (``roles``) once per role with the role fixed."""
    if not dataclasses.is_dataclass(method.config):
        return [method]
    fields = {f.name for f in dataclasses.fields(method.config)}
    configs = [method.config]
    if "unroll_c" in fields:
        configs = [dataclasses.replace(c, unroll_c=True) for c in configs]
    if "roles" in fields and method.config.roles == "alternate":
        configs = [
            dataclasses.replace(c, roles=role)
            for c in configs
            for role in ("cls_first", "align_first")
        ]
    variants = [dataclasses.replace(method, config=c) for c in configs]
    base = getattr(method, "base", None)  # MetaAlign: its base method's step C, if any
    if base is not None:
        variants = [dataclasses.replace(v, base=counting_variants(base)[0]) for v in variants]
    return variants


def model_flops(experiment, state, batch) -> float | None:
    """XLA's FLOP count of one training iteration, None where XLA gives none.

    Counted on the step lowered for the CPU from abstract shapes, before optimisation: every
    forward, backward and double-backward pass as the step writes them, whatever device runs it
    (the GPU plugin cannot analyse that stage, and its optimised module hides the cuDNN
    convolutions from the count). Step C is unrolled for the count (XLA counts a loop body
    once), and a method that alternates roles is counted once per role and averaged (XLA counts
    a ``lax.cond`` as its most expensive branch).
    """
    import jax
    import jax.numpy as jnp

    from uda_jax.experiment import compile_train_step

    abstract = lambda tree: jax.tree.map(
        lambda x: jax.ShapeDtypeStruct(jnp.shape(x), jnp.result_type(x)), tree
    )
    counts = []
    for method in counting_variants(experiment.method):
        step = compile_train_step(dataclasses.replace(experiment, method=method))
        try:
            traced = step.trace(abstract(state), abstract(batch))
            cost = traced.lower(lowering_platforms=("cpu",)).cost_analysis()
        except Exception:  # not every JAX version offers cross-platform lowering or the analysis
            return None
        if isinstance(cost, list | tuple):  # older JAX: one dict per computation
            cost = cost[0] if cost else None
        flops = cost.get("flops") if isinstance(cost, dict) else None
        if not flops:
            return None
        counts.append(float(flops))
    return sum(counts) / len(counts)


class TorchCell:
    """The PyTorch iteration of one cell on the JAX cell's batches."""

    def __init__(self, method: str, jax_cell: JaxCell, device: str = "cpu") -> None:
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
        o = config.optimizer
        if method == "cgdm":
            m = config.cgdm
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
            self.iteration = cgdm.CGDMIteration(settings, device=device)
        else:
            meta = config.metaalign
            m = config.section(meta.base)
            schedule = o.schedule
            if meta.base != "gvb" or schedule.name != "inv":
                raise SystemExit(
                    "step_speed: the PyTorch MetaAlign iteration is GVB-GD's with the inv "
                    f"schedule, not metaalign.base={meta.base}, schedule {schedule.name}"
                )
            settings = metaalign.MetaAlignSettings(
                **common,
                hidden=config.model.discriminator_hidden,
                dropout=config.model.discriminator_dropout,
                lr=o.learning_rate,
                weight_decay=o.weight_decay,
                momentum=o.kwargs.get("momentum", 0.0),
                head_lr_mult=o.groups["f"].lr_mult,
                meta_lr=meta.meta_lr,
                trade_off=m.trade_off,
                gamma=schedule.kwargs.get("gamma", 0.001),  # optim.inv_schedule's defaults
                power=schedule.kwargs.get("power", 0.75),
                max_iter=m.grl_max_iter,
            )
            self.iteration = metaalign.MetaAlignIteration(settings, device=device)
        pseudo = jax_cell.state.extras.get("pseudo_labels")  # CGDM's; the others have none
        pseudo = None if pseudo is None else np.asarray(pseudo)
        target_labels = lambda rows: np.zeros_like(rows) if pseudo is None else pseudo[rows]
        nchw = lambda a: np.ascontiguousarray(np.transpose(a, (0, 3, 1, 2)))
        on_device = lambda a: torch.from_numpy(a).to(device)
        self.batches = [
            (
                on_device(nchw(b["source_image"])),
                on_device(b["source_label"]).long(),
                on_device(nchw(b["target_image"])),
                on_device(target_labels(b["target_index"])).long(),
            )
            for b in jax_cell.host_batches
        ]
        self.cuda = device == "cuda"
        self._torch = torch

    def run(self, i: int) -> float:
        """One iteration; its wall time in seconds."""
        xs, ys, xt, yt = self.batches[i % len(self.batches)]
        start = time.perf_counter()
        if self.method == "cgdm":
            self.iteration.step(xs, ys, xt, yt)
        else:
            self.iteration.step(xs, ys, xt)
        if self.cuda:
            self._torch.cuda.synchronize()
        return time.perf_counter() - start

    def peak_bytes(self, i: int) -> int:
        """Persistent state + batch bytes, plus the peak of live allocations in one iteration
        (on a GPU: ``torch.cuda.max_memory_allocated`` over one iteration, which holds both)."""
        from torch.profiler import ProfilerActivity, profile

        if self.cuda:
            self._torch.cuda.reset_peak_memory_stats()
            self.run(i)
            return self._torch.cuda.max_memory_allocated()

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


@dataclasses.dataclass(frozen=True)
class Block:
    """One timed block of iterations: the median time, and the process's page faults and
    system (kernel) time per iteration over the block (None where ``resource`` is missing)."""

    median_ms: float
    fault_mb: float | None  # minor page faults × page size, per iteration
    system_ms: float | None  # kernel CPU time of all the process's threads, per iteration


def timed_block(run, offset: int, iterations: int) -> Block:
    """:func:`median_ms` of ``run`` with ``getrusage`` around the block, so a step that maps
    its working memory afresh each time (page faults, kernel zeroing; see
    ``uda_jax/cpu/memory.py``) shows as such instead of as slow arithmetic."""
    if resource is None:  # not Unix
        return Block(median_ms(run, offset, iterations), None, None)
    before = resource.getrusage(resource.RUSAGE_SELF)
    ms = median_ms(run, offset, iterations)
    after = resource.getrusage(resource.RUSAGE_SELF)
    faults = (after.ru_minflt - before.ru_minflt) * resource.getpagesize() / MB / iterations
    system = 1000 * (after.ru_stime - before.ru_stime) / iterations
    return Block(ms, faults, system)


def _page_kib() -> int:
    """The base page size in KiB (4 where ``resource`` is missing)."""
    return resource.getpagesize() // 1024 if resource else 4


def _pair(jax_value: float | None, torch_value: float | None) -> str:
    """``"JAX / PyTorch"`` to the nearest unit, or ``–`` where not measured."""
    if jax_value is None or torch_value is None:
        return "–"
    return f"{jax_value:.0f} / {torch_value:.0f}"


def _seconds(call) -> float:
    """Wall time of ``call()`` in seconds."""
    start = time.perf_counter()
    call()
    return time.perf_counter() - start


def matmul_gflops(device: str, n: int = 2048, calls: int = 10) -> tuple[float, float]:
    """GFLOP/s of one float32 ``n×n @ n×n`` product in JAX (compiled with the library's CPU
    options) and in PyTorch, median of ``calls``: the practical peak the steps' rates compare
    to on this machine."""
    import jax
    import jax.numpy as jnp
    import torch

    from uda_jax import cpu

    a = jnp.ones((n, n), jnp.float32)
    product = cpu.jit(jnp.dot, cpu.CpuTuning(kernels=True, reuse_memory=False))
    product = product.lower(a, a).compile()
    t = torch.ones(n, n, device="cuda" if device == "gpu" else "cpu")

    def torch_product() -> None:
        torch.mm(t, t)
        if device == "gpu":
            torch.cuda.synchronize()

    rates = []
    for product_once in (lambda: jax.block_until_ready(product(a, a)), torch_product):
        product_once()  # warm-up
        ms = median_ms(lambda _, call=product_once: _seconds(call), 0, calls)
        rates.append(2 * n**3 / ms / 1e6)
    return rates[0], rates[1]


def machine() -> str:
    """``lscpu`` model name and CPU count."""
    try:
        lines = subprocess.run(["lscpu"], capture_output=True, text=True).stdout.splitlines()
        model = next(line.split(":", 1)[1].strip() for line in lines if "Model name" in line)
    except (OSError, StopIteration):
        model = platform.processor() or platform.machine()
    return f"{model}, {os.cpu_count()} CPUs"


def choose_device(requested: str) -> str:
    """``cpu`` or ``gpu`` for both frameworks; sets JAX's platform before JAX is imported."""
    import torch

    if requested == "auto":
        requested = "gpu" if torch.cuda.is_available() else "cpu"
    if requested == "gpu" and not torch.cuda.is_available():
        raise SystemExit("step_speed: --device gpu, but PyTorch sees no CUDA device")
    if requested == "cpu":
        os.environ["JAX_PLATFORMS"] = "cpu"
    else:  # one process holds both frameworks: JAX preallocates 45 %, PyTorch takes the rest
        os.environ.setdefault("XLA_PYTHON_CLIENT_MEM_FRACTION", "0.45")
    return requested


def describe_device(device: str) -> str:
    """The CPU (model, count) and, on a GPU, its name and the frameworks' precision flags."""
    if device == "cpu":
        return machine()
    import jax
    import torch

    return (
        f"{torch.cuda.get_device_name()} (JAX: {jax.devices()[0].device_kind}); host "
        f"{machine()}; PyTorch TF32: cudnn {torch.backends.cudnn.allow_tf32}, matmul "
        f"{torch.backends.cuda.matmul.allow_tf32}; cudnn.benchmark "
        f"{torch.backends.cudnn.benchmark}"
    )


def main(argv: list[str] | None = None) -> int:
    """Runs the cells and writes the table."""
    args = parse_args(argv)
    load_before = os.getloadavg()[0]
    if importlib.util.find_spec("torch") is None:
        print("step_speed: PyTorch is not installed (pip install torch); nothing measured.")
        return 2
    device = choose_device(args.device)
    if device == "cpu" and args.threads < (os.cpu_count() or 1):  # XLA CPU uses every core
        os.environ["XLA_FLAGS"] = (
            os.environ.get("XLA_FLAGS", "")
            + f" --xla_cpu_multi_thread_eigen=true intra_op_parallelism_threads={args.threads}"
        )
    sys.path.insert(0, str(ROOT))
    import jax
    import torch

    from uda_jax.cpu.memory import reuse_cpu_buffers

    reused = device == "cpu" and args.cpu_memory == "reuse" and reuse_cpu_buffers()

    if jax.default_backend() != device:
        raise SystemExit(f"step_speed: --device {device}, but JAX runs on {jax.default_backend()}")
    torch.set_num_threads(args.threads)
    torch_device = "cuda" if device == "gpu" else "cpu"
    mfu = " | MFU" if args.peak_tflops else ""
    header = (
        "| network | method | batch | repeat | JAX ms | PyTorch ms | speed-up (PyTorch/JAX) "
        f"| JAX peak MB | PyTorch peak MB | GFLOP/iter | JAX TFLOP/s | PyTorch TFLOP/s{mfu} "
        "| page faults MB/iter (JAX / PyTorch) | system ms/iter (JAX / PyTorch) |"
    )
    rows = [header, "|---" * header.count(" | ") + "|---|"]
    print(f"torch threads {torch.get_num_threads()}, {describe_device(device)}", flush=True)
    jax_peak, torch_peak = matmul_gflops(device)
    peak_line = (
        f"Dense float32 2048×2048 product on this device: JAX {jax_peak:.0f} GFLOP/s, "
        f"PyTorch {torch_peak:.0f} GFLOP/s (median of 10; the practical peak the TFLOP/s "
        "columns compare to)."
    )
    print(peak_line, flush=True)
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
            torch_cell = TorchCell(method, jax_cell, torch_device)
            iterations = args.iterations
            if network == "resnet50" and args.resnet_iterations:
                iterations = args.resnet_iterations
            warmup = max(args.warmup, 2)  # both of MetaAlign's roles run before the timing
            runs = {"jax": jax_cell.run, "torch": torch_cell.run}
            for run in runs.values():
                for i in range(warmup):
                    run(i)
            jax_mb = jax_cell.peak_bytes() / MB
            torch_mb = torch_cell.peak_bytes(warmup) / MB
            flops = jax_cell.flops_per_iteration()
            b = jax_cell.config.data.batch_size
            shape = "×".join(str(s) for s in jax_cell.experiment.source.image_shape)
            for repeat in range(args.repeats):
                offset = warmup + 1 + repeat * iterations
                jax_block, torch_block = (
                    timed_block(run, offset, iterations) for run in runs.values()
                )
                jax_ms, torch_ms = jax_block.median_ms, torch_block.median_ms
                rate = flops / jax_ms / 1e9 if flops else None  # TFLOP/s
                rate_cells = (
                    f"| {flops / 1e9:.1f} | {rate:.3g} | {flops / torch_ms / 1e9:.3g} |"
                    if rate
                    else "| – | – | – |"
                )
                if args.peak_tflops:
                    rate_cells += f" {100 * rate / args.peak_tflops:.1f} % |" if rate else " – |"
                rows.append(
                    f"| {network} | {method} | {b}+{b} ({shape}) | {repeat + 1} | {jax_ms:.1f} "
                    f"| {torch_ms:.1f} | {torch_ms / jax_ms:.2f}× | {jax_mb:.1f} | {torch_mb:.1f} "
                    + rate_cells
                    + f" {_pair(jax_block.fault_mb, torch_block.fault_mb)} "
                    f"| {_pair(jax_block.system_ms, torch_block.system_ms)} |"
                )
                print(rows[-1], flush=True)
    command = "python benchmarks/step_speed.py " + " ".join(
        argv if argv is not None else sys.argv[1:]
    )
    threads = (
        f"{args.threads} threads for both (torch.set_num_threads; XLA's CPU client)"
        if device == "cpu"
        else "one GPU for both (in one process)"
    )
    resnet_note = ""
    if "resnet50" in args.networks:
        resnet_note = f" ({args.resnet_iterations or args.iterations} for ResNet-50)"
    report = [
        f"Measured {time.strftime('%Y-%m-%d %H:%M')} on {describe_device(device)}; 1-minute "
        f"load average {load_before:.2f} before and {os.getloadavg()[0]:.2f} after the run.",
        f"Versions: Python {platform.python_version()}, JAX {jax.__version__}, "
        f"PyTorch {torch.__version__}; {threads}, float32 both"
        + ("; XLA's CPU buffers reused between steps (`--cpu-memory reuse`)." if reused else "."),
        f"Command: `{command.strip()}`. Per cell: {max(args.warmup, 2)} untimed iterations "
        "per framework (after JAX's compilation) and one for memory, then "
        f"{args.repeats} repeats of [JAX block, PyTorch block], each the median of "
        f"{args.iterations} iterations{resnet_note}. GFLOP/iter: XLA's count for the lowered "
        "JAX step (the PyTorch iteration does the same passes; PyTorch TFLOP/s divides the same "
        "count by its time). Page faults and system time: `getrusage` of the whole process "
        "(all threads) around each timed block, per iteration; MB = minor faults × the "
        f"{_page_kib()} KiB page size (a fault that maps a huge page counts as one page).",
        peak_line,
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
