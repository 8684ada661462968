# ---
# jupyter:
#   colab:
#     provenance: []
#     toc_visible: true
#   jupytext:
#     formats: ipynb,py:percent
#     notebook_metadata_filter: colab,kernelspec,language_info,-jupytext.text_representation.jupytext_version
#     text_representation:
#       extension: .py
#       format_name: percent
#       format_version: '1.3'
#   kernelspec:
#     display_name: Python 3
#     language: python
#     name: python3
#   language_info:
#     name: python
# ---

# %% [markdown]
# # Scaling plans for AlexaTM 20B
#
# Will the 20B model train on a given mesh, and how much memory does each device need? `alexatm-jax plan`
# compiles the real train step (scanned layers, rematerialisation, bf16 compute, f32 master weights and AdamW
# state) ahead of time on abstract shapes over **virtual CPU devices**: nothing is allocated, so a laptop or
# a free Colab runtime can plan for 64 accelerators. This notebook plans several meshes and shows:
#
# * a table of per-device memory (parameters, optimizer state, XLA temporaries, total) and FLOPs per step;
# * a bar chart of per-device memory per mesh against the device memory.
#
# Parameter and optimizer bytes are exact shard sizes. Temporaries are the CPU compiler's buffer assignment,
# a stand-in for the accelerator compiler's (expect differences of tens of percent). Each 20B plan is one
# XLA compile (about a minute on 2 CPU cores).

# %%
# Install alexatm_jax unless it is already importable (a local `pip install -e .`, or a second run).
# Set ALEXATM_JAX_SOURCE to where your copy of the project lives, in any form pip accepts, e.g.
#   "git+https://github.com/<your-account>/alexatm_jax"          (your fork or mirror)
#   "alexatm_jax[cuda] @ git+https://github.com/<your-account>/alexatm_jax"   (GPU runtime: CUDA build of JAX)
# If pip replaces packages Colab had already imported (jax, numpy), restart the runtime once afterwards.
ALEXATM_JAX_SOURCE = ""

import importlib.util

from IPython import get_ipython

if importlib.util.find_spec("alexatm_jax") is None:
    if not ALEXATM_JAX_SOURCE:
        raise RuntimeError("alexatm_jax is not installed: set ALEXATM_JAX_SOURCE in this cell to a pip "
                           "requirement for the project (see the comments above) and run the cell again.")
    # `%pip install -q ...` written as plain Python: pip of the kernel's own interpreter.
    get_ipython().run_line_magic("pip", f'install -q "{ALEXATM_JAX_SOURCE}"')

# %% [markdown]
# ## Parameters
#
# Mesh axes are `data` (replicas), `fsdp` (parameters, gradients and optimizer state sharded) and `tensor`
# (heads, MLP and vocabulary split). The global batch of each plan is `SEQUENCES_PER_SHARD` x data x fsdp.

# %% tags=["parameters"]
MODEL = "20b"                       # preset: tiny small base large xl 20b
MESHES = ["fsdp=8", "fsdp=4,tensor=2", "data=2,fsdp=4", "fsdp=16,tensor=4"]
SEQUENCES_PER_SHARD = 1             # sequences per data x fsdp shard
INPUTS_LENGTH = 512
TARGETS_LENGTH = 512
DEVICE_MEMORY_GIB = 80              # e.g. 80 (A100/H100 80 GB), 32 (TPU v4), 95 (TPU v5p)
OPTIMIZER = "adamw"                 # or "adafactor"
PLAN_TIMEOUT_S = 1800

# %% [markdown]
# ## 1. Plan each mesh
#
# JAX fixes its device count when it starts, and this kernel may already have started it, so each plan runs
# `alexatm-jax plan` in a fresh Python process, which sets up as many virtual CPU devices as the mesh needs.
# Its last output line is the plan as JSON.

# %%
import json
import os
import subprocess
import sys
import time

from IPython.display import JSON, Markdown, display


def mesh_sizes(spec: str) -> dict:
    """'fsdp=4,tensor=2' -> {"data": 1, "fsdp": 4, "tensor": 2} (sizes must be given: no -1 in a plan)."""
    sizes = {"data": 1, "fsdp": 1, "tensor": 1}
    for part in filter(None, (p.strip() for p in spec.split(","))):
        axis, _, size = part.partition("=")
        if axis not in sizes or not size.isdigit():
            raise ValueError(f"bad mesh {spec!r}: write AXIS=SIZE pairs over data, fsdp, tensor, e.g. 'fsdp=8'")
        sizes[axis] = int(size)
    return sizes


def run_plan(mesh: str) -> dict:
    """The plan of ``mesh`` from `alexatm-jax plan` (its last output line, JSON), with the command added."""
    sizes = mesh_sizes(mesh)
    batch = SEQUENCES_PER_SHARD * sizes["data"] * sizes["fsdp"]
    command = [sys.executable, "-m", "alexatm_jax.cli", "plan", "--model", MODEL, "--mesh", mesh,
               "--batch", str(batch), "--inputs", str(INPUTS_LENGTH), "--targets", str(TARGETS_LENGTH),
               "--device-memory", str(DEVICE_MEMORY_GIB), "--optimizer", OPTIMIZER]
    # Plans compile on virtual CPU devices whatever accelerator this runtime has; the command adds the
    # device-count flag itself, so an inherited one must not override it.
    env = dict(os.environ, JAX_PLATFORMS="cpu", TF_CPP_MIN_LOG_LEVEL="3")
    env.pop("XLA_FLAGS", None)
    start = time.time()
    proc = subprocess.run(command, env=env, capture_output=True, text=True, timeout=PLAN_TIMEOUT_S)
    if proc.returncode:
        raise RuntimeError(f"plan for {mesh} failed (exit {proc.returncode}):\n{proc.stderr[-3000:]}")
    plan = json.loads(proc.stdout.strip().splitlines()[-1])
    plan["mesh_spec"] = mesh
    plan["command"] = "alexatm-jax " + " ".join(command[3:])
    plan["plan_seconds"] = round(time.time() - start, 1)
    return plan


plans = []
for mesh in MESHES:
    plans.append(run_plan(mesh))
    gib = plans[-1]["per_device_gib"]
    print(f"{mesh:>20s}: total {gib['total']:.2f} GiB/device ({plans[-1]['plan_seconds']} s)")

# %% [markdown]
# ## 2. The table

# %%
first = plans[0]
count = first["model_params"]
size = f"{count / 1e9:.2f}B" if count >= 1e9 else f"{count / 1e6:.1f}M"
lines = [f"**{MODEL}** ({size} parameters, scan={first['scan_layers']}, "
         f"remat={first['remat_policy']}, compute {first['dtype']}, {OPTIMIZER}), lengths "
         f"{INPUTS_LENGTH}+{TARGETS_LENGTH}, device memory {DEVICE_MEMORY_GIB} GiB", "",
         "| mesh | devices | batch | params GiB/dev | optimizer GiB/dev | temporaries GiB/dev | total GiB/dev "
         "| fits | model TFLOP/step |",
         "|---|---:|---:|---:|---:|---:|---:|---|---:|"]
for plan in plans:
    gib = plan["per_device_gib"]
    lines.append(f"| `{plan['mesh_spec']}` | {plan['devices']} | {plan['batch']} | {gib['params']:.3g} | "
                 f"{gib['optimizer_state']:.3g} | {gib['temporaries']:.3g} | {gib['total']:.3g} | "
                 f"{'yes' if plan['fits'] else '**no**'} | {plan['model_flops_per_step'] / 1e12:,.3g} |")
display(Markdown("\n".join(lines)))

# %% [markdown]
# ## 3. The chart
#
# Stacked per-device bytes: parameters, optimizer state and temporaries; the dashed line is the device memory.
# (The total also counts the batch and any output buffers not aliased to the state, so it can exceed the
# stack slightly.)

# %%
import matplotlib.pyplot as plt
import numpy as np

labels = [plan["mesh_spec"] for plan in plans]
parts = [("params", "parameters"), ("optimizer_state", "optimizer state"), ("temporaries", "temporaries")]
x = np.arange(len(plans))
fig, ax = plt.subplots(figsize=(3 + 1.8 * len(plans), 4.5))
bottom = np.zeros(len(plans))
for key, label in parts:
    values = np.array([plan["per_device_gib"][key] for plan in plans])
    ax.bar(x, values, bottom=bottom, label=label)
    bottom += values
ax.scatter(x, [plan["per_device_gib"]["total"] for plan in plans], color="black", marker="_", s=600,
           label="total", zorder=3)
ax.axhline(DEVICE_MEMORY_GIB, color="red", linestyle="--", label=f"device memory ({DEVICE_MEMORY_GIB} GiB)")
# One mesh axis per line keeps long specs such as "data=2,fsdp=4,tensor=2" from running into each other.
ax.set_xticks(x, [label.replace(",", "\n") + f"\n{plan['devices']} devices\nbatch {plan['batch']}"
                  for label, plan in zip(labels, plans)])
ax.set_ylabel("GiB per device")
ax.set_title(f"{MODEL}: per-device memory of one train step")
ax.set_ylim(0, 1.12 * max(DEVICE_MEMORY_GIB, max(plan["per_device_gib"]["total"] for plan in plans)))
ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), fontsize="small")
ax.grid(axis="y", alpha=0.3)
plt.tight_layout()
plt.show()
display(JSON({"model": MODEL, "device_memory_gib": DEVICE_MEMORY_GIB, "plans": plans}))
