"""``uda_jax.cpu``'s kernels: the CPU-friendly convolution and max-pool equal XLA's own ops, in
value and in derivatives of first and second order (float64, so only the summation order may
differ); the compiler options the steps compile with; and the ``cpu_tuning`` switch."""

import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import linen as nn
from jax import lax

from uda_jax import cpu
from uda_jax.config import load_config
from uda_jax.cpu import kernels
from uda_jax.models import XLA_OPS, build_network

pytestmark = pytest.mark.usefixtures("float64")
KERNELS_ON = cpu.CpuTuning(kernels=True, reuse_memory=False)
KERNELS_OFF = cpu.CpuTuning(kernels=False, reuse_memory=False)

CASES = [  # (input shape NHWC, kernel HWIO, strides, padding): LeNet, ResNet stem/3×3/1×1
    ((2, 14, 14, 3), (5, 5, 3, 4), (1, 1), "VALID"),
    ((2, 15, 15, 3), (7, 7, 3, 4), (2, 2), ((3, 3), (3, 3))),
    ((2, 9, 9, 4), (3, 3, 4, 5), (2, 2), ((1, 1), (1, 1))),
    ((2, 8, 8, 4), (1, 1, 4, 6), (2, 2), ((0, 0), (0, 0))),
    ((1, 6, 7, 2), (3, 3, 2, 3), (1, 1), "SAME"),
    ((2, 2, 2, 4), (3, 3, 4, 3), (1, 1), ((1, 1), (1, 1))),  # window larger than the input
    ((1, 5, 4, 2), (2, 3, 2, 3), (1, 1), ((2, 0), (0, 3))),  # padding beyond the kernel
    ((2, 12, 12, 1), (5, 5, 1, 4), (1, 1), "VALID"),  # one channel (LeNet conv1): window sum
    ((2, 9, 8, 1), (3, 3, 1, 3), (2, 2), ((1, 0), (1, 1))),  # one channel, strided, padded
    ((1, 2, 2, 6), (1, 1, 6, 8), (1, 1), "VALID"),  # kernel outweighs the input: products
    ((1, 3, 3, 4), (3, 3, 4, 5), (1, 1), "SAME"),  # kernel outweighs kw × the input
    ((1, 4, 4, 6), (1, 1, 6, 20), (2, 2), "VALID"),  # strided, outweighing: value as products
]


def _lax_conv(x, k, strides, padding):
    return lax.conv_general_dilated(x, k, strides, padding, dimension_numbers=kernels.NHWC)


def _cpu_conv(x, k, strides, padding):
    return kernels.conv_general_dilated(x, k, strides, padding, dimension_numbers=kernels.NHWC)


@pytest.mark.parametrize("x_shape,k_shape,strides,padding", CASES)
def test_conv_value_gradient_and_second_order_match_lax(x_shape, k_shape, strides, padding):
    kx, kk, kc = jax.random.split(jax.random.key(0), 3)
    x = jax.random.normal(kx, x_shape, jnp.float64)
    k = jax.random.normal(kk, k_shape, jnp.float64)
    out_shape = _lax_conv(x, k, strides, padding).shape
    c = jax.random.normal(kc, out_shape, jnp.float64)

    def loss(conv):  # a non-linear loss, so second derivatives are not trivial
        return lambda x, k: jnp.sum(jnp.tanh(conv(x, k, strides, padding)) * c)

    ref, new = loss(_lax_conv), loss(_cpu_conv)

    def grad_norm(f):  # a gradient of a gradient, in both arguments
        return lambda x, k: sum(jnp.sum(g**2) for g in jax.grad(f, (0, 1))(x, k))

    # forward over reverse (Hessian-vector products) works through the custom_jvp
    hvp = lambda f: (
        lambda x, k: jax.jvp(lambda k: jax.grad(f, 1)(x, k), (k,), (jnp.ones_like(k),))[1]
    )

    # each derivative compiled as one program (as a train step uses it), both ways at once
    @jax.jit
    def both(x, k):
        return [
            (f(new)(x, k), f(ref)(x, k))
            for f in (
                lambda f: f,
                lambda f: jax.grad(f, (0, 1)),
                lambda f: jax.grad(grad_norm(f), (0, 1)),
                hvp,
            )
        ]

    (value, gradient, second, product) = both(x, k)
    np.testing.assert_allclose(*value, rtol=1e-12)
    for got, want in zip(*gradient, strict=True):
        np.testing.assert_allclose(got, want, rtol=1e-10, atol=1e-12)
    for got, want in zip(*second, strict=True):
        np.testing.assert_allclose(got, want, rtol=1e-9, atol=1e-10)
    np.testing.assert_allclose(*product, rtol=1e-9, atol=1e-10)


def _conv_layouts(hlo: str) -> set[str]:
    """The ``dim_labels`` of every convolution in a compiled module's text."""
    return set(re.findall(r" convolution\(.*?dim_labels=([\w>-]+)", hlo))


@pytest.mark.skipif(jax.default_backend() != "cpu", reason="XLA's CPU compiler")
def test_stride_1_gradients_are_plain_convolutions_also_inside_a_loop():
    # XLA's CPU compiler reorders JAX's transposed convolutions into NHWC/HWIO outside a loop
    # but not inside a while body (step C as a loop), where they ran many times slower
    x = jnp.ones((2, 8, 8, 3))
    weights = (jnp.ones((3, 3, 3, 4)), jnp.ones((3, 3, 4, 4)))  # the second has an input grad

    def step(conv):
        def loss(weights):
            y = x
            for k in weights:
                y = jnp.tanh(conv(y, k, (1, 1), "SAME"))
            return jnp.sum(y)

        def body(weights, _):
            return jax.tree.map(lambda k, g: k - g, weights, jax.grad(loss)(weights)), None

        return jax.jit(lambda ks: jax.lax.scan(body, ks, None, length=2, unroll=False)[0])

    plain = {"b01f_01io->b01f"}
    assert _conv_layouts(step(_cpu_conv).lower(weights).compile().as_text()) == plain
    assert _conv_layouts(step(_lax_conv).lower(weights).compile().as_text()) != plain  # the case


def test_strided_input_gradient_is_a_matrix_product_not_a_convolution():
    x = jnp.ones((2, 9, 9, 4))
    k = jnp.ones((3, 3, 4, 5))
    conv = lambda x: jnp.sum(_cpu_conv(x, k, (2, 2), ((1, 1), (1, 1))))
    jaxpr = str(jax.make_jaxpr(jax.grad(conv))(x))
    assert "dot_general" in jaxpr
    assert jaxpr.count("conv_general_dilated") == 1  # only the forward pass


def test_one_channel_convolution_is_a_window_sum_with_convolution_gradients():
    # LeNet's conv1: XLA's CPU convolution contracts over only the 25 taps (slower); its
    # kernel gradient stays a plain convolution
    x = jnp.ones((2, 12, 12, 1))
    k = jnp.ones((5, 5, 1, 4))
    conv = lambda k: jnp.sum(jnp.tanh(_cpu_conv(x, k, (1, 1), "VALID")))
    assert "conv_general_dilated" not in str(jax.make_jaxpr(conv)(k))
    assert str(jax.make_jaxpr(jax.grad(conv))(k)).count("conv_general_dilated") == 1


@pytest.mark.parametrize(
    "x_shape,k_shape",
    [
        # ResNet-50's last stage on 64×64 images: 3×3 over 2×2, which XLA's CPU compiler turns
        # into an operand-swapped convolution on its generic loop
        ((2, 2, 2, 4), (3, 3, 4, 5)),
        # kernels with more elements than kw × the input (ResNet-50's last two stages at 64×64)
        ((2, 3, 3, 16), (1, 1, 16, 20)),
        ((2, 3, 3, 8), (3, 3, 8, 8)),
    ],
)
def test_window_larger_than_or_kernel_outweighing_its_input_is_products_at_every_order(
    x_shape, k_shape
):
    x, k = jnp.ones(x_shape), jnp.ones(k_shape)
    padding = ((k_shape[0] // 2,) * 2,) * 2
    conv = lambda x, k: jnp.sum(jnp.tanh(_cpu_conv(x, k, (1, 1), padding)))
    for fn in (
        conv,
        jax.grad(conv, (0, 1)),
        jax.grad(lambda x, k: jnp.sum(jax.grad(conv)(x, k) ** 2)),
    ):
        jaxpr = str(jax.make_jaxpr(fn)(x, k))
        assert "dot_general" in jaxpr
        assert "conv_general_dilated" not in jaxpr


def test_a_kernel_as_large_as_its_input_stays_a_convolution():
    # the threshold: 16·18 kernel elements against 1 × 2·3·3·16 input elements
    x, k = jnp.ones((2, 3, 3, 16)), jnp.ones((1, 1, 16, 18))
    conv = lambda x, k: jnp.sum(jnp.tanh(_cpu_conv(x, k, (1, 1), "VALID")))
    assert "conv_general_dilated" in str(jax.make_jaxpr(conv)(x, k))
    assert "dot_general" not in str(jax.make_jaxpr(jax.grad(conv, (0, 1)))(x, k))


@pytest.mark.parametrize(
    "x_shape,k_shape,strides,padding,numbers",
    [
        ((2, 3, 9, 7), (4, 3, 3, 2), (1, 1), "SAME", ("NCHW", "OIHW", "NCHW")),  # other layout
        ((2, 9, 3), (3, 3, 4), (2,), "SAME", ("NWC", "WIO", "NWC")),  # 1-D
        ((2, 9, 7, 3), (3, 3, 3, 4), (1, 1), ((-1, 1), (1, 0)), kernels.NHWC),  # cropping
    ],
)
def test_other_convolutions_go_to_lax_with_the_callers_padding(
    x_shape, k_shape, strides, padding, numbers
):
    kx, kk = jax.random.split(jax.random.key(1))
    x = jax.random.normal(kx, x_shape, jnp.float64)
    k = jax.random.normal(kk, k_shape, jnp.float64)

    def loss(conv):
        return lambda x, k: jnp.sum(
            jnp.tanh(conv(x, k, strides, padding, dimension_numbers=numbers))
        )

    ref, new = loss(lax.conv_general_dilated), loss(kernels.conv_general_dilated)
    np.testing.assert_allclose(new(x, k), ref(x, k), rtol=1e-12)
    for got, want in zip(jax.grad(new, (0, 1))(x, k), jax.grad(ref, (0, 1))(x, k), strict=True):
        np.testing.assert_allclose(got, want, rtol=1e-10, atol=1e-12)


def _computations(hlo: str) -> dict[str, str]:
    """The compiled module's computations: name → body text."""
    return dict(re.findall(r"^(%[\w.-]+) .*?\{\n(.*?)^\}", hlo, re.M | re.S))


def _ynn_fused(hlo: str, op: str) -> int:
    """How many of the compiled module's YNNPACK fusions contain an ``op`` instruction."""
    bodies = _computations(hlo)
    called = re.findall(r"calls=(%[\w.-]+).*__ynn_fusion", hlo)
    return sum(f" {op}(" in bodies.get(name, "") for name in called)


@pytest.fixture
def cpu_options():
    if jax.default_backend() != "cpu" or not kernels._cpu_options_supported():
        pytest.skip("needs a jaxlib whose CPU compiler has the YNNPACK fusion option")
    return cpu.compiler_options(KERNELS_ON)


def test_cpu_compiler_options_keep_convolutions_off_ynnpack_and_dots_as_they_were(cpu_options):
    assert cpu_options == kernels.CPU_COMPILER_OPTIONS
    assert cpu.compiler_options(KERNELS_OFF) is None  # cpu_tuning: off keeps XLA's defaults
    kx, kk = jax.random.split(jax.random.key(0))
    x = jax.random.normal(kx, (8, 14, 14, 32), jnp.float32)
    k = jax.random.normal(kk, (5, 5, 32, 48), jnp.float32)
    conv = lambda x, k: _lax_conv(x, k, (1, 1), "VALID")
    compiled = jax.jit(conv, compiler_options=cpu_options).lower(x, k).compile()
    assert "convolution(" in compiled.as_text()
    assert _ynn_fused(compiled.as_text(), "convolution") == 0
    np.testing.assert_allclose(compiled(x, k), jax.jit(conv)(x, k), rtol=1e-4, atol=1e-4)
    a, b = x.reshape(-1, 32 * 14), k.reshape(-1, 48)[: 32 * 14]
    dot_hlo = lambda **kw: jax.jit(jnp.dot, **kw).lower(a, b).compile().as_text()
    assert _ynn_fused(dot_hlo(compiler_options=cpu_options), "dot") == _ynn_fused(dot_hlo(), "dot")


def test_cpu_jit_compiles_a_networks_gradient_and_forward_with_the_cpu_options(cpu_options):
    config = load_config(None, ["model.classifier_widths=[16,16]"]).model
    network = build_network(config, 10, 1, ops=cpu.layer_ops(KERNELS_ON))
    params, stats = network.init(jax.random.key(0), (32, 32, 1))
    images = jnp.zeros((4, 32, 32, 1), jnp.float32)

    def loss(params):
        features, _ = network.apply_generator(params["g"], stats["g"], images, train=True)
        logits, _ = network.apply_classifier(
            params["f"], stats["f"], features, train=True, rng=jax.random.key(1)
        )
        return jnp.sum(logits)

    forward = lambda params: network.apply_generator(params["g"], stats["g"], images, train=False)
    for name, fn in {"gradient": jax.grad(loss), "forward": forward}.items():
        hlo = cpu.jit(fn, KERNELS_ON).lower(params).compile().as_text()
        assert "convolution(" in hlo, name  # conv2 (conv1's value is a window sum)
        assert _ynn_fused(hlo, "convolution") == 0, name
    assert _ynn_fused(jax.jit(forward).lower(params).compile().as_text(), "convolution") > 0


def test_train_and_eval_steps_are_compiled_with_the_cpu_options(cpu_options):
    """The training loop's wiring: ``cpu_tuning: auto`` on CPU builds the network on the CPU
    kernels and compiles its train and eval steps with their options."""
    from uda_jax import experiment as exp

    built = exp.build_experiment(load_config(None, ["method.name=source_only"]))
    network = built.ctx.network
    assert network.generator.ops is kernels.OPS  # cpu_tuning: auto, on CPU
    state = exp.create_train_state(built)
    images = jnp.zeros((4, 32, 32, 1), jnp.float32)
    batch = {"source_image": images, "source_label": jnp.zeros(4, jnp.int32)}
    batch |= {"target_image": images, "target_index": jnp.zeros(4, jnp.int32)}
    compiled = {
        "train": exp.compile_train_step(built).lower(state, batch),
        "eval": exp.compile_predict(built).lower(state.params, state.batch_stats, images),
    }
    for name, lowered in compiled.items():
        hlo = lowered.compile().as_text()
        assert "convolution(" in hlo, name  # conv2 (conv1's value is a window sum)
        assert _ynn_fused(hlo, "convolution") == 0, name


def test_a_users_own_ynnpack_setting_wins(cpu_options, monkeypatch):
    monkeypatch.setenv("XLA_FLAGS", f"--{kernels.YNN_OPTION}=")
    assert cpu.compiler_options(KERNELS_ON) is None


def test_a_users_own_disabled_passes_win(cpu_options, monkeypatch):
    monkeypatch.setenv("XLA_FLAGS", f"--{kernels.PASSES_OPTION}=some-pass")
    options = cpu.compiler_options(KERNELS_ON)
    assert kernels.PASSES_OPTION not in options
    assert options[kernels.YNN_OPTION] == cpu_options[kernels.YNN_OPTION]


def _computations_with(hlo: str, op: str) -> int:
    """How many computations of a compiled module contain an ``op`` instruction."""
    return sum(f" {op}(" in body for body in _computations(hlo).values())


def test_a_convolutions_input_is_computed_once_in_its_gradient(cpu_options):
    """The input's elementwise producer (here a ReLU) is evaluated in one fusion, not again
    inside the kernel gradient's transposes, and the gradient is unchanged."""
    k0, k1, k2 = jax.random.split(jax.random.key(0), 3)
    a = jax.random.normal(k0, (4, 8, 8, 16), jnp.float32)
    kernel = jax.random.normal(k1, (3, 3, 16, 16), jnp.float32)
    scale = jax.random.normal(k2, (1, 1, 1, 16), jnp.float32)

    def gradient(conv):
        def loss(kernel, a, scale):
            x = jax.nn.relu(a * scale + 1.0)
            y = conv(x, kernel, (1, 1), ((1, 1), (1, 1)), dimension_numbers=kernels.NHWC)
            return jnp.sum(y**2)

        return jax.grad(loss)

    def compiled(options):
        jitted = jax.jit(gradient(kernels.conv_general_dilated), compiler_options=options)
        return jitted.lower(kernel, a, scale).compile()

    pinned = compiled(cpu_options)
    assert _computations_with(pinned.as_text(), "maximum") == 1
    without = {kernels.YNN_OPTION: cpu_options[kernels.YNN_OPTION]}  # barriers dropped
    assert _computations_with(compiled(without).as_text(), "maximum") == 2  # what it fixes
    want = gradient(lax.conv_general_dilated)(kernel, a, scale)
    np.testing.assert_allclose(pinned(kernel, a, scale), want, rtol=1e-4, atol=1e-3)


@pytest.mark.parametrize(
    "shape,window,strides,padding",
    [
        ((2, 8, 8, 3), (2, 2), (2, 2), ((0, 0), (0, 0))),  # LeNet
        ((2, 9, 9, 3), (3, 3), (2, 2), ((1, 1), (1, 1))),  # ResNet stem: overlapping, padded
    ],
)
def test_max_pool_matches_flax_in_value_and_gradient(shape, window, strides, padding):
    x = jax.random.normal(jax.random.key(1), shape, jnp.float64)
    c = jax.random.normal(jax.random.key(2), nn.max_pool(x, window, strides, padding).shape)

    def loss(pool):
        return lambda x: jnp.sum(jnp.sin(pool(x, window, strides, padding)) * c)

    flax_pool = lambda x, w, s, p: nn.max_pool(x, w, strides=s, padding=p)
    np.testing.assert_array_equal(
        kernels.max_pool(x, window, strides, padding), flax_pool(x, window, strides, padding)
    )
    np.testing.assert_allclose(
        jax.grad(loss(kernels.max_pool))(x), jax.grad(loss(flax_pool))(x), rtol=1e-12
    )


def test_max_pool_gives_a_tied_window_gradient_to_its_first_element_as_pytorch():
    x = jnp.zeros((1, 2, 2, 1))  # one window, four equal values (e.g. after a ReLU)
    grad = jax.grad(lambda x: jnp.sum(kernels.max_pool(x, (2, 2), (2, 2))))(x)
    np.testing.assert_array_equal(grad[0, :, :, 0], [[1.0, 0.0], [0.0, 0.0]])
    nan = x.at[0, 1, 0, 0].set(jnp.nan)  # NaN wins, as in PyTorch
    assert np.isnan(kernels.max_pool(nan, (2, 2), (2, 2))[0, 0, 0, 0])


def test_cpu_tuning_is_checked_and_auto_follows_the_platform_and_the_backbone():
    on_cpu = jax.default_backend() == "cpu"
    assert cpu.tuning("auto", "lenet") == cpu.CpuTuning(kernels=on_cpu, reuse_memory=False)
    assert cpu.tuning("auto", "resnet50", "cpu") == cpu.CpuTuning(True, True)
    assert cpu.tuning("auto", "resnet50", "gpu") == cpu.CpuTuning(False, True)
    assert cpu.tuning("on", "lenet", "gpu") == cpu.CpuTuning(True, True)  # as asked
    assert cpu.tuning("off", "resnet50", "cpu") == cpu.CpuTuning(False, False)
    with pytest.raises(ValueError, match="cpu_tuning"):
        cpu.tuning("fast", "lenet")
    assert cpu.layer_ops(KERNELS_ON) is kernels.OPS and cpu.layer_ops(KERNELS_OFF) is XLA_OPS
    assert load_config(None, ["cpu_tuning=off"]).cpu_tuning == "off"


def test_a_network_on_the_cpu_kernels_equals_one_on_xlas_in_value_and_gradient():
    config = load_config(None, ["model.classifier_widths=[16,16]"]).model
    ours, theirs = (
        build_network(config, 10, 2, ops=o) for o in (cpu.layer_ops(KERNELS_ON), XLA_OPS)
    )
    params, stats = theirs.init(jax.random.key(1), (32, 32, 3))  # float32, as in training
    params, stats = jax.tree.map(lambda a: a.astype(jnp.float64), (params, stats))
    x = jax.random.normal(jax.random.key(0), (4, 32, 32, 3), jnp.float64)

    def loss(network):
        def f(params):
            features, _ = network.apply_generator(params["g"], stats["g"], x, train=True)
            logits, _ = network.apply_classifier(
                params["f1"], stats["f1"], features, train=True, rng=jax.random.key(2)
            )
            return jnp.sum(jnp.tanh(logits))

        return f

    value = jax.jit(lambda p: (loss(ours)(p), loss(theirs)(p)))  # one program each, as trained
    np.testing.assert_allclose(*value(params), rtol=1e-12)
    for got, want in zip(
        jax.tree.leaves(jax.jit(jax.grad(loss(ours)))(params)),
        jax.tree.leaves(jax.jit(jax.grad(loss(theirs)))(params)),
        strict=True,
    ):
        np.testing.assert_allclose(got, want, rtol=1e-9, atol=1e-12)
    # the features leave the encoder as one pinned buffer that every head reads
    features = lambda x: ours.apply_generator(params["g"], stats["g"], x, train=False)[0]
    assert jax.make_jaxpr(features)(x).jaxpr.eqns[-1].primitive.name == "optimization_barrier"


def test_a_resnet_on_the_cpu_kernels_equals_one_on_xlas_in_value_and_gradient():
    from uda_jax.models.resnet import ResNet

    x = jax.random.normal(jax.random.key(0), (2, 32, 32, 3), jnp.float64)
    ours, theirs = ResNet(depth=18, ops=cpu.layer_ops(KERNELS_ON)), ResNet(depth=18)
    shapes = jax.eval_shape(
        lambda: theirs.init(jax.random.key(0), x.astype(jnp.float32), train=False)
    )
    rng = np.random.default_rng(0)  # fan-in-scaled weights without compiling the initialisers
    variables = jax.tree.map(
        lambda s: (
            rng.normal(size=s.shape) / np.sqrt(np.prod(s.shape[:-1]) if s.ndim > 1 else 1)
            + (s.ndim == 1)
        ),
        shapes,
    )
    params = variables["params"]

    def loss(model):
        def f(params):
            out, _ = model.apply(
                {**variables, "params": params}, x, train=True, mutable=["batch_stats"]
            )
            return jnp.sum(jnp.tanh(out))

        return f

    # every convolution (20, each a custom_jvp; the ReLUs are others) and the max-pool go
    # through the CPU kernels
    ours_jaxpr, theirs_jaxpr = (str(jax.make_jaxpr(loss(m))(params)) for m in (ours, theirs))
    assert ours_jaxpr.count("custom_jvp_call") - theirs_jaxpr.count("custom_jvp_call") == 20
    assert "reduce_window_max" in theirs_jaxpr and "reduce_window_max" not in ours_jaxpr
    value = jax.jit(lambda p: (loss(ours)(p), loss(theirs)(p)))
    np.testing.assert_allclose(*value(params), rtol=1e-12)
    for got, want in zip(
        jax.tree.leaves(jax.jit(jax.grad(loss(ours)))(params)),
        jax.tree.leaves(jax.jit(jax.grad(loss(theirs)))(params)),
        strict=True,
    ):
        # float64 round-off, amplified through 20 train-mode BatchNorms over a batch of 2
        np.testing.assert_allclose(got, want, rtol=1e-9, atol=1e-10 * np.max(np.abs(want)))
