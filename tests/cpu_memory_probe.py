"""Run by test_cpu_memory.py in a fresh interpreter: how many bytes a jitted CPU call whose
64 MiB output is freed before the next call page-faults per call, under one ``mode``:
``reuse`` (``cpu.prepare_process("on", ...)`` first), ``release`` (JAX's defaults) or ``late``
(``prepare_process`` after JAX's backend started). Prints ``applied async_dispatch
faulted_bytes``."""

import resource
import sys

import jax
import jax.numpy as jnp

from uda_jax import cpu

mode = sys.argv[1]
applied = cpu.prepare_process("on", "lenet") if mode == "reuse" else None
x = jnp.ones((4096, 4096))  # starts the backend
if mode == "late":
    applied = cpu.prepare_process("on", "lenet")
double = jax.jit(lambda a: a * 2.0 + 1.0)
for _ in range(4):  # the heap grows to its working size
    double(x).block_until_ready()
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
calls = 10
for _ in range(calls):
    double(x).block_until_ready()
faulted = (resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before) * resource.getpagesize()
print(applied, jax.config.values["jax_cpu_enable_async_dispatch"], faulted // calls)
