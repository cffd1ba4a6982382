"""Median time of a ResNet-50 training step (forward + backward + SGD update, BatchNorm in train
mode), compilation excluded; optionally CGDM's whole iteration with a ResNet-50 G.

    python benchmarks/resnet_step.py --batch 8 --size 224 --iterations 5 \
        [--dtypes float32 bfloat16] [--cgdm] [--out benchmarks/results/resnet_step.md]

Variables are filled with numpy (kaiming-scaled) instead of ``init``, whose 161 random
initialisers take ~35 s to compile on a 2-core CPU; the timing does not depend on the values.
"""

from __future__ import annotations

import argparse
import os
import platform
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

from uda_jax.models.resnet import ResNet


def fill(reference, seed: int = 0):
    """Plausible variables shaped like ``reference``: kernels N(0, 2/fan_in), γ = 1, β = 0."""
    rng = np.random.default_rng(seed)

    def leaf(path, s):
        name = path[-1].key
        if name == "kernel":
            std = np.sqrt(2.0 / np.prod(s.shape[:-1]))
            return (std * rng.normal(size=s.shape)).astype(np.float32)
        if name in ("scale", "var"):
            return np.ones(s.shape, np.float32)
        return np.zeros(s.shape, np.float32)

    return jax.tree_util.tree_map_with_path(leaf, reference)


def time_calls(fn, args, iterations: int) -> tuple[float, float]:
    """(first call seconds, median of the next ``iterations`` calls)."""
    start = time.perf_counter()
    out = jax.block_until_ready(fn(*args))
    first = time.perf_counter() - start
    times = []
    for _ in range(iterations):
        start = time.perf_counter()
        out = jax.block_until_ready(fn(*out[:1], *args[1:]))
        times.append(time.perf_counter() - start)
    return first, float(np.median(times))


def resnet_step_seconds(dtype, batch: int, size: int, iterations: int) -> tuple[float, float]:
    """ResNet-50 + a 1000-way linear head, cross-entropy, plain SGD on every parameter."""
    model = ResNet(depth=50, dtype=dtype)
    images = jnp.asarray(np.random.default_rng(0).normal(size=(batch, size, size, 3)), jnp.float32)
    labels = jnp.arange(batch, dtype=jnp.int32) % 1000
    reference = jax.eval_shape(lambda: model.init(jax.random.key(0), images[:1], train=False))
    variables = fill(reference)
    head = jnp.zeros((2048, 1000), jnp.float32)

    @jax.jit
    def step(state, images, labels):
        params, stats, head = state

        def loss_fn(params, head):
            variables = {"params": params, "batch_stats": stats}
            features, updates = model.apply(variables, images, train=True, mutable=["batch_stats"])
            logits = features @ head
            picked = jnp.take_along_axis(logits, labels[:, None], axis=1)[:, 0]
            return jnp.mean(jax.nn.logsumexp(logits, axis=1) - picked), updates["batch_stats"]

        (_, stats), grads = jax.value_and_grad(loss_fn, argnums=(0, 1), has_aux=True)(params, head)
        params = jax.tree.map(lambda p, g: p - 0.01 * g, params, grads[0])
        return ((params, stats, head - 0.01 * grads[1]),)

    state = (variables["params"], variables["batch_stats"], head)
    return time_calls(lambda s, x, y: step(s, x, y), (state, images, labels), iterations)


def cgdm_experiment(batch: int, size: int, backbone: str = "resnet50"):
    """The experiment, a filled initial state and one batch of CGDM's iteration (L_GD on) with
    ``backbone`` as G and the official heads (bottleneck 256, classifier 1000-1000-12), on random
    in-memory domains of ``batch`` images of ``size``×``size``×3 and 12 classes."""
    from uda_jax.config import load_config
    from uda_jax.data.domains import from_arrays
    from uda_jax.experiment import build_experiment
    from uda_jax.state import TrainState

    config = load_config(
        None,
        [
            f"model.backbone={backbone}",
            "model.bottleneck_dim=256",
            "model.classifier_widths=[1000,1000]",
            f"data.batch_size={batch}",
            "cgdm.warmup_steps=0",
        ],
    )
    rng = np.random.default_rng(0)
    classes = [str(k) for k in range(12)]

    def domain(name: str):
        images = rng.normal(size=(batch, size, size, 3)).astype(np.float32)
        return from_arrays(name, images, rng.integers(0, 12, batch), class_names=classes)

    source, target = domain("source"), domain("target")
    experiment = build_experiment(config, source=source, target=target)
    network = experiment.ctx.network
    params, stats = fill(jax.eval_shape(lambda: network.init(jax.random.key(0), (size, size, 3))))
    extras = experiment.method.init_extras(params, batch)
    extras["pseudo_labels"] = jnp.asarray(rng.integers(0, 12, batch), jnp.int32)
    state = TrainState.create(params, stats, experiment.ctx.optimizers, jax.random.key(1), extras)
    batch_data = {
        "source_image": jnp.asarray(source.train_images),
        "source_label": jnp.asarray(source.train_labels),
        "target_image": jnp.asarray(target.train_images),
        "target_index": jnp.arange(batch, dtype=jnp.int32),
    }
    return experiment, state, batch_data


def cgdm_step_seconds(batch: int, size: int, iterations: int) -> tuple[float, float]:
    """CGDM's iteration (steps A, B, C×4 with L_GD on) with a ResNet-50 G and the official
    heads, ``batch`` source + ``batch`` target, compiled as the training loop compiles it
    (:func:`uda_jax.experiment.compile_train_step`, the config's ``cpu_tuning``)."""
    from uda_jax.experiment import compile_train_step

    experiment, state, batch_data = cgdm_experiment(batch, size)
    step = compile_train_step(experiment)
    return time_calls(step, (state, batch_data), iterations)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--size", type=int, default=224)
    parser.add_argument("--iterations", type=int, default=5)
    parser.add_argument("--dtypes", nargs="+", default=["float32"])
    parser.add_argument("--cgdm", action="store_true", help="also time CGDM with a ResNet-50 G")
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    rows = []
    for name in args.dtypes:
        first, median = resnet_step_seconds(jnp.dtype(name), args.batch, args.size, args.iterations)
        rows.append((f"ResNet-50 step, {name}", args.batch, first, median))
        print(rows[-1], flush=True)
    if args.cgdm:
        first, median = cgdm_step_seconds(args.batch, args.size, args.iterations)
        label = "CGDM iteration (A, B, 4×C + L_GD), ResNet-50 G, float32"
        rows.append((label, f"{args.batch}+{args.batch}", first, median))
        print(rows[-1], flush=True)
    lines = [
        f"Machine: {platform.machine()}, {os.cpu_count()} CPU cores, "
        f"{jax.devices()[0].platform} ({len(jax.devices())} device), JAX {jax.__version__}.",
        f"Input {args.size}×{args.size}×3; median of {args.iterations} iterations after the "
        "first (compiling) one.",
        "",
        "| what | batch | first call (compile) s | median s / step |",
        "|---|---|---|---|",
        *(f"| {w} | {b} | {f:.1f} | {m:.3f} |" for w, b, f, m in rows),
    ]
    print("\n".join(lines))
    if args.out:
        args.out.write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
