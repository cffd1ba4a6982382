"""One convolution at a time on CPU: why ``cpu_tuning: auto`` compiles and differentiates
convolutions the way it does on CPU (``uda_jax/cpu/kernels.py``).

    python benchmarks/conv_kernels.py --threads 2 --calls 15

Per shape of the digits LeNet and of ResNet-50 at 64×64 (batch 4+4), median ms of:

* forward: XLA's default (jaxlib 0.10 hands CPU convolutions to YNNPACK), XLA with the library's
  CPU compiler options (:data:`uda_jax.cpu.kernels.CPU_COMPILER_OPTIONS`: Eigen convolutions),
  PyTorch;
* forward + gradients (input and kernel) of ``Σ conv·c``: ``lax.conv_general_dilated`` with
  XLA's defaults and with the options, ``uda_jax.cpu.kernels.conv_general_dilated`` with the
  options, PyTorch;
* the same gradient step inside a 4-iteration ``lax.scan`` compiled as a loop (per iteration):
  lax and the CPU kernels with the options. A ``while`` body is where XLA's CPU compiler leaves
  JAX's transposed convolutions in the dimension orders it runs on a generic loop, as in the
  ResNet-50 CGDM step with step C as a loop.

PyTorch (optional, ``pip install torch``) runs the same shapes in NCHW with the same thread
count. Written to ``benchmarks/results/conv_kernels.md`` (``--out``).
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import platform
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
LOOP_LENGTH = 4
# (name, batch, side, cin, kernel, cout, stride, padding per side)
SHAPES = [
    ("LeNet conv1", 64, 32, 1, 5, 32, 1, 0),
    ("LeNet conv2", 64, 14, 32, 5, 48, 1, 0),
    ("ResNet stem 7×7/2", 8, 64, 3, 7, 64, 2, 3),
    ("ResNet 3×3 at 16²", 8, 16, 64, 3, 64, 1, 1),
    ("ResNet 3×3/2 at 16²", 8, 16, 128, 3, 128, 2, 1),
    ("ResNet 1×1 at 16²", 8, 16, 256, 1, 64, 1, 0),
    ("ResNet 3×3 at 2² (last stage)", 8, 2, 512, 3, 512, 1, 1),
]


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--threads", type=int, default=2, help="CPU threads, both frameworks")
    parser.add_argument("--calls", type=int, default=15, help="timed calls per cell (median)")
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks/results/conv_kernels.md")
    return parser.parse_args(argv)


def median_ms(run, calls: int) -> float:
    """Median wall time of ``run()`` (which returns once its work is done) over ``calls`` calls
    after two untimed ones, in ms."""
    import numpy as np

    for _ in range(2):
        run()
    times = []
    for _ in range(calls):
        start = time.perf_counter()
        run()
        times.append(time.perf_counter() - start)
    return 1000 * float(np.median(times))


def jax_cells(shape, calls: int) -> dict[str, float]:
    """The JAX columns of one shape."""
    import jax
    import jax.numpy as jnp
    from jax import lax

    from uda_jax.cpu import kernels

    _, n, side, cin, k, cout, stride, pad = shape
    keys = jax.random.split(jax.random.key(0), 3)
    x = jax.random.normal(keys[0], (n, side, side, cin))
    kernel = jax.random.normal(keys[1], (k, k, cin, cout)) * 0.05
    strides, padding = (stride, stride), ((pad, pad), (pad, pad))
    convs = {
        "lax": lambda x, w: lax.conv_general_dilated(
            x, w, strides, padding, dimension_numbers=kernels.NHWC
        ),
        "cpu": lambda x, w: kernels.conv_general_dilated(
            x, w, strides, padding, dimension_numbers=kernels.NHWC
        ),
    }
    c = jax.random.normal(keys[2], convs["lax"](x, kernel).shape)

    def grads(conv):
        return jax.grad(lambda x, w: jnp.sum(conv(x, w) * c), (0, 1))

    def loop(conv):
        def body(carry, _):
            gx, gw = grads(conv)(*carry)
            return (carry[0] - 1e-3 * gx, carry[1] - 1e-3 * gw), None

        return lambda x, w: lax.scan(body, (x, w), None, LOOP_LENGTH, unroll=False)[0]

    def timed(fn, options):
        compiled = jax.jit(fn).lower(x, kernel).compile(compiler_options=options)
        return median_ms(lambda: jax.block_until_ready(compiled(x, kernel)), calls)

    eigen = kernels.CPU_COMPILER_OPTIONS
    return {
        "fwd YNNPACK": timed(convs["lax"], None),
        "fwd Eigen": timed(convs["lax"], eigen),
        "grad lax YNNPACK": timed(grads(convs["lax"]), None),
        "grad lax Eigen": timed(grads(convs["lax"]), eigen),
        "grad cpu kernels": timed(grads(convs["cpu"]), eigen),
        "loop lax Eigen": timed(loop(convs["lax"]), eigen) / LOOP_LENGTH,
        "loop cpu kernels": timed(loop(convs["cpu"]), eigen) / LOOP_LENGTH,
    }


def torch_cells(shape, calls: int) -> dict[str, float]:
    """PyTorch's forward and forward + gradients of one shape (NCHW), in ms."""
    import torch

    _, n, side, cin, k, cout, stride, pad = shape
    x = torch.randn(n, cin, side, side, requires_grad=True)
    w = (0.05 * torch.randn(cout, cin, k, k)).requires_grad_()
    conv = lambda: torch.nn.functional.conv2d(x, w, stride=stride, padding=pad)
    c = torch.randn_like(conv())

    def forward():
        with torch.no_grad():
            return conv()

    def gradients():
        return torch.autograd.grad((conv() * c).sum(), (x, w))

    return {"fwd torch": median_ms(forward, calls), "grad torch": median_ms(gradients, calls)}


COLUMNS = [  # (header, key)
    ("fwd: XLA default (YNNPACK)", "fwd YNNPACK"),
    ("fwd: XLA + options (Eigen)", "fwd Eigen"),
    ("fwd: PyTorch", "fwd torch"),
    ("fwd+grads: lax, XLA default", "grad lax YNNPACK"),
    ("fwd+grads: lax + options", "grad lax Eigen"),
    ("fwd+grads: CPU kernels + options", "grad cpu kernels"),
    ("fwd+grads: PyTorch", "grad torch"),
    ("in a loop, per iteration: lax + options", "loop lax Eigen"),
    ("in a loop, per iteration: CPU kernels + options", "loop cpu kernels"),
]


def main(argv: list[str] | None = None) -> int:
    """Measures every shape and writes the table."""
    args = parse_args(argv)
    os.environ["JAX_PLATFORMS"] = "cpu"
    os.environ["XLA_FLAGS"] = (
        os.environ.get("XLA_FLAGS", "")
        + f" --xla_cpu_multi_thread_eigen=true intra_op_parallelism_threads={args.threads}"
    )
    sys.path.insert(0, str(ROOT))
    sys.path.insert(0, str(ROOT / "benchmarks"))
    import jax
    from step_speed import machine

    has_torch = importlib.util.find_spec("torch") is not None
    if has_torch:
        import torch

        torch.set_num_threads(args.threads)
    header = "| shape (N, H=W, Cin, k, Cout, stride) | " + " | ".join(h for h, _ in COLUMNS) + " |"
    rows = [header, "|---" * (len(COLUMNS) + 1) + "|"]
    print(header, flush=True)
    for shape in SHAPES:
        cells = jax_cells(shape, args.calls)
        if has_torch:
            cells |= torch_cells(shape, args.calls)
        values = " | ".join(f"{cells[key]:.2f}" if key in cells else "–" for _, key in COLUMNS)
        rows.append(f"| {shape[0]} {tuple(shape[1:7])} | {values} |")
        print(rows[-1], flush=True)
    versions = f"Python {platform.python_version()}, JAX {jax.__version__}"
    if has_torch:
        versions += f", PyTorch {torch.__version__}"
    command = "python benchmarks/conv_kernels.py " + " ".join(
        argv if argv is not None else sys.argv[1:]
    )
    report = [
        f"Measured {time.strftime('%Y-%m-%d %H:%M')} on {machine()}; {versions}; "
        f"{args.threads} threads each, float32, median ms of {args.calls} calls.",
        f"Command: `{command.strip()}`. Loop columns: a {LOOP_LENGTH}-iteration `lax.scan` "
        f"compiled as a loop, total / {LOOP_LENGTH}.",
        "",
        *rows,
        "",
    ]
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text("\n".join(report))
    print(f"written to {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
