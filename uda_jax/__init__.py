"""uda_jax: unsupervised domain adaptation (CGDM, MetaAlign and baselines) in JAX."""

__version__ = "0.1.0"
