"""ResNet backbones, ImageNet weight import/export, PyTorch parity and bfloat16 compute.

ResNet variables come from ``jax.eval_shape`` plus numpy or from a PyTorch model: a real
``init`` of ResNet-50 spends ~35 s compiling its 161 random initialisers on a 2-core CPU.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import traverse_util
from safetensors.numpy import save_file

from uda_jax import cpu
from uda_jax.config import load_config
from uda_jax.errors import UserError
from uda_jax.methods import StepContext, build_method, cgdm
from uda_jax.models import build_network
from uda_jax.models import torch_weights as tw
from uda_jax.models.resnet import ResNet
from uda_jax.optim import build_optimizers
from uda_jax.state import TrainState

TORCHVISION_PARAMS_WITHOUT_FC = {  # torchvision's counts minus fc (2048·1000+1000, 512·1000+1000)
    18: 11_689_512 - 513_000,
    34: 21_797_672 - 513_000,
    50: 25_557_032 - 2_049_000,
    101: 44_549_160 - 2_049_000,
}


def _abstract(depth: int, size: int = 64) -> dict:
    model = ResNet(depth=depth)
    return jax.eval_shape(
        lambda: model.init(jax.random.key(0), jnp.zeros((2, size, size, 3)), train=False)
    )


def _random_variables(reference, seed: int = 0) -> dict:
    rng = np.random.default_rng(seed)
    return jax.tree.map(
        lambda s: rng.normal(size=s.shape).astype(np.float32) * 0.05 + 1.0, reference
    )


def _plausible_variables(reference, seed: int = 0) -> dict:
    """Variables like a fresh init without running one (its random initialisers are slow to
    compile on CPU): kernels N(0, 1/fan_in), biases N(0, 0.1²), γ = 1, running mean 0, var 1."""
    rng = np.random.default_rng(seed)

    def leaf(path, s):
        name = path[-1].key
        if name == "kernel":
            return (rng.normal(size=s.shape) / np.sqrt(np.prod(s.shape[:-1]))).astype(np.float32)
        if name in ("scale", "var"):
            return np.ones(s.shape, np.float32)
        if name == "mean":
            return np.zeros(s.shape, np.float32)
        return (0.1 * rng.normal(size=s.shape)).astype(np.float32)

    return jax.tree_util.tree_map_with_path(leaf, reference)


def _assert_trees_equal(a, b):
    flat_a, flat_b = traverse_util.flatten_dict(a), traverse_util.flatten_dict(b)
    assert flat_a.keys() == flat_b.keys()
    for key in flat_a:
        np.testing.assert_array_equal(np.asarray(flat_a[key]), np.asarray(flat_b[key]), str(key))


@pytest.mark.parametrize("depth", [18, 34, 50, 101])
def test_parameter_count_and_feature_shape_match_torchvision(depth):
    variables = _abstract(depth)
    assert (
        sum(x.size for x in jax.tree.leaves(variables["params"]))
        == (TORCHVISION_PARAMS_WITHOUT_FC[depth])
    )
    features = jax.eval_shape(
        lambda v: ResNet(depth=depth).apply(v, jnp.zeros((2, 64, 64, 3)), train=False), variables
    )
    assert features.shape == (2, 2048 if depth >= 50 else 512)
    assert features.dtype == jnp.float32


def test_generator_with_resnet50_and_bottleneck_has_the_reference_shapes():
    config = load_config(None, ["model.backbone=resnet50", "model.bottleneck_dim=256"]).model
    network = build_network(config, 12, 2)
    params, stats = jax.eval_shape(lambda: network.init(jax.random.key(0), (64, 64, 3)))
    assert params["g"]["bottleneck"]["fc"]["kernel"].shape == (2048, 256)
    assert params["g"]["backbone"]["layer4_2"]["conv3"]["kernel"].shape == (1, 1, 512, 2048)
    assert stats["g"]["backbone"]["bn1"]["var"].shape == (64,)
    assert params["f1"]["out"]["kernel"].shape[-1] == 12


def test_safetensors_round_trip_is_exact(tmp_path):
    reference = _abstract(50)
    variables = _random_variables(reference)
    state = tw.export_torch_state_dict(variables)
    assert state["conv1.weight"].shape == (64, 3, 7, 7)
    assert state["layer1.0.downsample.1.running_var"].shape == (256,)
    assert len(state) == 265  # torchvision's 320 keys less fc (2) and num_batches_tracked (53)
    state["fc.weight"] = np.zeros((1000, 2048), np.float32)  # ignored, like torchvision's fc
    state["bn1.num_batches_tracked"] = np.zeros((), np.int64)
    save_file(state, str(tmp_path / "model.safetensors"))
    _assert_trees_equal(tw.load_pretrained(tmp_path / "model.safetensors", reference), variables)


def test_pth_round_trip_with_torch_and_with_the_pure_python_reader(tmp_path):
    torch = pytest.importorskip("torch")
    reference = _abstract(18)
    variables = _random_variables(reference, seed=1)
    state = {k: torch.from_numpy(v) for k, v in tw.export_torch_state_dict(variables).items()}
    state["conv1.weight"] = state["conv1.weight"].transpose(0, 1).contiguous().transpose(0, 1)
    state["bn1.num_batches_tracked"] = torch.tensor(7)
    state["extra_bf16"] = torch.ones(3, dtype=torch.bfloat16)
    path = tmp_path / "resnet18.pth"
    torch.save({"state_dict": state}, path)
    with_torch = tw.read_state_dict(path)
    without_torch = tw._normalise(tw._TorchZipReader(path).load(), path)
    assert with_torch.keys() == without_torch.keys()
    for key in with_torch:
        np.testing.assert_array_equal(with_torch[key], without_torch[key], key)
    assert without_torch["extra_bf16"].dtype == np.float32
    del with_torch["extra_bf16"]
    _assert_trees_equal(tw.import_state_dict(with_torch, reference), variables)


def test_import_errors_name_the_problem(tmp_path):
    reference = _abstract(101)
    with pytest.raises(UserError, match="not found"):
        tw.read_state_dict(tmp_path / "missing.pth")
    (tmp_path / "junk.pth").write_bytes(b"not a checkpoint")
    with pytest.raises(UserError, match="unknown weights format"):
        tw.read_state_dict(tmp_path / "junk.pth")
    state50 = tw.export_torch_state_dict(_random_variables(_abstract(50)))
    with pytest.raises(UserError, match="resnet50 weights but the backbone is resnet101"):
        tw.import_state_dict(state50, reference, source="r50.pth")
    state = tw.export_torch_state_dict(_random_variables(reference))
    missing = {k: v for k, v in state.items() if k != "layer3.7.bn2.running_mean"}
    with pytest.raises(UserError, match=r"1 missing key\(s\): layer3\.7\.bn2\.running_mean"):
        tw.import_state_dict(missing, reference)
    with pytest.raises(UserError, match=r"1 unexpected key\(s\): head\.weight"):
        tw.import_state_dict({**state, "head.weight": np.zeros(3)}, reference)
    bad = {**state, "layer2.0.conv2.weight": np.zeros((128, 128, 1, 1), np.float32)}
    with pytest.raises(UserError, match=r"shape mismatch for layer2\.0\.conv2\.weight"):
        tw.import_state_dict(bad, reference)


def test_pretrained_weights_go_into_the_networks_backbone_only(tmp_path):
    config = load_config(None, ["model.classifier_widths=[16,16]"]).model
    network = build_network(config, 10, 2)
    shapes = jax.eval_shape(lambda: network.init(jax.random.key(0), (32, 32, 1)))
    params, stats = _random_variables(shapes, seed=3)
    backbone = _random_variables(tw.backbone_variables(params, stats), seed=2)
    save_file(tw.export_torch_state_dict(backbone), str(tmp_path / "lenet.safetensors"))
    new_params, new_stats = tw.load_pretrained_backbone(
        tmp_path / "lenet.safetensors", params, stats
    )
    _assert_trees_equal(tw.backbone_variables(new_params, new_stats), backbone)
    _assert_trees_equal(new_params["f1"], params["f1"])
    with pytest.raises(UserError, match="do not match"):
        tw.merge_backbone(params, stats, {"params": {}, "batch_stats": backbone["batch_stats"]})


def test_resnet50_matches_pytorch_in_eval_and_train_mode(tmp_path):
    torch = pytest.importorskip("torch")
    from torch_resnet import ResNet as TorchResNet  # tests/ is on sys.path under pytest
    from torch_resnet import randomise_batchnorm

    torch.manual_seed(0)
    net = TorchResNet(50)
    randomise_batchnorm(net)
    torch.save(net.state_dict(), tmp_path / "resnet50.pth")
    variables = tw.load_pretrained(tmp_path / "resnet50.pth", _abstract(50))
    images = np.random.default_rng(0).normal(size=(2, 64, 64, 3)).astype(np.float32)
    x_torch = torch.from_numpy(images.transpose(0, 3, 1, 2).copy())
    model = ResNet(depth=50)

    net.eval()
    with torch.no_grad():
        expected = net(x_torch).numpy()
    got = jax.jit(lambda v, x: model.apply(v, x, train=False))(variables, images)
    _assert_close(np.asarray(got), expected, 1e-4)

    # Train mode: BN over a batch of 2 (8 values per channel in layer4) amplifies round-off;
    # torch's own float32 result is 1.3e-4 (relative) off its float64 one, and so is ours.
    net.train()
    with torch.no_grad():
        expected = net(x_torch).numpy()
    train = jax.jit(lambda v, x: model.apply(v, x, train=True, mutable=["batch_stats"]))
    got, updates = train(variables, images)
    _assert_close(np.asarray(got), expected, 1e-3)
    new_stats = tw.export_torch_state_dict({"batch_stats": updates["batch_stats"]})
    torch_stats = net.state_dict()
    assert new_stats.keys() == {k for k in torch_stats if "running" in k}
    for key, value in new_stats.items():
        _assert_close(value, torch_stats[key].numpy(), 1e-3, key)


def test_resnet_in_bfloat16_keeps_float32_statistics_and_features_close_to_float32():
    variables = _plausible_variables(_abstract(18))
    images = jnp.asarray(np.random.default_rng(0).normal(size=(2, 64, 64, 3)), jnp.float32)

    @jax.jit
    def run(variables, images):
        model = lambda dtype: ResNet(depth=18, dtype=dtype)
        f32, f16 = (
            model(d).apply(variables, images, train=False) for d in (jnp.float32, jnp.bfloat16)
        )
        return (
            f32,
            f16,
            model(jnp.bfloat16).apply(variables, images, train=True, mutable=["batch_stats"]),
        )

    f32, f16, (train16, stats16) = run(variables, images)
    assert f16.dtype == train16.dtype == jnp.float32
    assert {leaf.dtype for leaf in jax.tree.leaves(stats16)} == {jnp.dtype(jnp.float32)}
    _assert_close(np.asarray(f16), np.asarray(f32), 5e-2)


def _assert_close(got, expected, rel, what=""):
    """max |got − expected| ≤ rel · max |expected| (features span several magnitudes)."""
    error = np.max(np.abs(got - expected))
    assert error <= rel * np.max(np.abs(expected)), f"{what}: {error} vs {np.max(np.abs(expected))}"


def _cgdm_setup(dtype):
    config = load_config(
        None,
        [
            "model.classifier_widths=[32,32]",
            "model.bottleneck_dim=16",
            "cgdm.warmup_steps=0",
            "cgdm.num_k=1",
        ],
    )
    method = build_method(config)
    ops = cpu.layer_ops(cpu.tuning("auto", config.model.backbone))  # on CPU: its kernels in bf16
    network = build_network(config.model, 10, method.network.num_classifiers, dtype=dtype, ops=ops)
    shapes = jax.eval_shape(lambda: network.init(jax.random.key(0), (32, 32, 1)))
    params, stats = _plausible_variables(shapes)
    optimizers = build_optimizers(
        config.optimizer, {g: network.frozen_mask(g, t) for g, t in params.items()}
    )
    rng = np.random.default_rng(0)
    labels = jnp.asarray(rng.integers(0, 10, 16), jnp.int32)
    state = TrainState.create(
        params, stats, optimizers, jax.random.key(1), {"pseudo_labels": labels}
    )
    batch = {
        "source_image": jnp.asarray(rng.normal(size=(8, 32, 32, 1)), jnp.float32),
        "source_label": jnp.asarray(rng.integers(0, 10, 8), jnp.int32),
        "target_image": jnp.asarray(rng.normal(size=(8, 32, 32, 1)), jnp.float32),
        "target_index": jnp.arange(8, dtype=jnp.int32),
    }
    return method, StepContext(network, optimizers), state, batch


def test_bfloat16_network_keeps_float32_params_and_outputs_close_to_float32():
    _, ctx32, state, batch = _cgdm_setup(jnp.float32)
    _, ctx16, _, _ = _cgdm_setup(jnp.bfloat16)
    shapes = jax.eval_shape(lambda: ctx16.network.init(jax.random.key(0), (32, 32, 1)))
    assert {leaf.dtype for leaf in jax.tree.leaves(shapes)} == {jnp.dtype(jnp.float32)}

    @jax.jit
    def outputs(params, stats, images):
        results = []
        for ctx in (ctx32, ctx16):
            net = ctx.network
            features, _ = net.apply_generator(params["g"], stats["g"], images, train=False)
            logits, _ = net.apply_classifier(params["f1"], stats["f1"], features, train=False)
            results.append((features, logits))
        return results

    (f32, l32), (f16, l16) = outputs(state.params, state.batch_stats, batch["source_image"])
    assert f16.dtype == l16.dtype == jnp.float32
    _assert_close(np.asarray(f16), np.asarray(f32), 3e-2)
    _assert_close(np.asarray(l16), np.asarray(l32), 3e-2)


def test_gradient_discrepancy_through_bfloat16_classifiers_matches_float32():
    """L_GD and its gradient with respect to the features (a gradient of a gradient) in
    bfloat16 stay float32 and close to float32's, including the cosines of the biases before
    BatchNorm, whose gradients are zero up to round-off."""
    _, ctx32, state, batch = _cgdm_setup(jnp.float32)
    _, ctx16, _, _ = _cgdm_setup(jnp.bfloat16)
    features = jnp.asarray(np.random.default_rng(1).normal(size=(16, 16)), jnp.float32)

    @jax.jit
    def both(features, key):
        loss = lambda f, ctx: cgdm.gradient_discrepancy_loss(ctx, state, batch, f, key)
        return [jax.value_and_grad(loss)(features, ctx) for ctx in (ctx32, ctx16)]

    (l32, g32), (l16, g16) = both(features, jax.random.key(0))
    assert l16.dtype == g16.dtype == jnp.float32
    # 5e-4 apart here; with the biases added in bfloat16 (nn.Dense(dtype=bfloat16)) the noisy
    # cosines of the biases before BatchNorm move L_GD by 3 %
    assert float(l16) == pytest.approx(float(l32), rel=5e-3)
    cosine = jnp.sum(g16 * g32) / (jnp.linalg.norm(g16) * jnp.linalg.norm(g32))
    assert float(cosine) > 0.98


@pytest.mark.slow
def test_cgdm_step_runs_with_a_bfloat16_network():
    """The whole iteration (steps A, B, C with L_GD); ~30 s of compilation on a 2-core CPU."""
    method, ctx, state, batch = _cgdm_setup(jnp.bfloat16)
    step = jax.jit(functools.partial(method.step, ctx))
    new_state, metrics = step(state, batch, jax.random.key(0))
    assert all(np.isfinite(float(v)) for v in metrics.values())
    assert float(metrics["train/loss_gd"]) > 0.0
    for tree in (new_state.params, new_state.batch_stats, new_state.opt_state):
        assert {leaf.dtype for leaf in jax.tree.leaves(tree) if hasattr(leaf, "dtype")} <= {
            jnp.dtype(jnp.float32),
            jnp.dtype(jnp.int32),
        }
