"""Benchmarks: the train step against a reference step, the token shards, a pod plan.

    python bench.py                          # train step tokens/s and MFU: laptop config, then a larger one
    python bench.py --peak-flops 989e12      # MFU against a given peak (an H100's dense bf16)
    python bench.py --shards                 # peak memory, pictures/s and data-loading cost at 20,000 and 200,000
    python bench.py --grid                   # the train step against the reference over depth, width, batch
    python bench.py --plan --peak-flops 61.5e12   # the paper's ViT-L run on 512 TPUv3 cores: memory, FLOPs, hours

The reference step is the same encoder written the usual way: a dict of arrays, batched (B, L, D) matmuls,
layers in a Python loop, a Bernoulli mask, cross-entropy at masked positions, optax.adamw, one jax.jit donating
parameters and optimizer state.
Every comparison runs both sides in this process, alternating for ROUNDS rounds, and prints the median, so a
ratio does not depend on what else the machine does. Read first: train.py, shards.py.
"""
import argparse
import dataclasses
import functools
import math
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax.sharding import NamedSharding, PartitionSpec as P

import cluster
import config
import shards
import train
import upgen
import vqgan
import vqgan_train

ROUNDS = 5  # alternating rounds of each side of a comparison; the median of them is printed


def matmul_peak(dtype, n=2048, repeats=5):
    """Measured FLOP/s of one large matmul on one device: a stand-in for the peak when none is given."""
    a = jnp.ones((n, n), dtype)
    mm = jax.jit(lambda a: a @ a)
    mm(a).block_until_ready()
    start = time.perf_counter()
    for _ in range(repeats):
        mm(a).block_until_ready()
    return 2 * n ** 3 * repeats / (time.perf_counter() - start)


def flops_per_token(cfg: upgen.UPGenConfig, n_params: int):
    """Training FLOPs per token: 6 per matmul parameter (forward + backward), plus attention's scores and
    weighted sum, 2 x 2 x L x width per block forward, x3 with backward (the nanoGPT / PaLM count)."""
    matmul_params = n_params - cfg.vocab_size * cfg.width  # the embedding is a lookup, not a matmul
    return 6 * matmul_params + 12 * cfg.depth * cfg.seq_len * cfg.width


# ---------------------------------------------------------------------------------------------------
# The reference step


def reference_params(cfg: upgen.UPGenConfig, key):
    """The same shapes as upgen.UPGen's arrays, in a plain dict (one entry per layer)."""
    D, M, V = cfg.width, cfg.mlp, cfg.vocab_size
    normal = lambda key, *shape: jax.random.normal(key, shape) / math.sqrt(shape[0])  # noqa: E731
    keys = iter(jax.random.split(key, 3 + 4 * cfg.depth))
    norm = lambda: (jnp.ones(D), jnp.zeros(D))  # noqa: E731
    layer = lambda: {"ln1": norm(), "qkv": (normal(next(keys), D, 3 * D), jnp.zeros(3 * D)),  # noqa: E731
                     "proj": (normal(next(keys), D, D), jnp.zeros(D)), "ln2": norm(),
                     "fc1": (normal(next(keys), D, M), jnp.zeros(M)), "fc2": (normal(next(keys), M, D), jnp.zeros(D))}
    return {"embed": normal(next(keys), V, D), "modality": normal(next(keys), 2, D),
            "layers": [layer() for _ in range(cfg.depth)], "ln": (jnp.ones(D), jnp.zeros(D)),
            "head": (normal(next(keys), D, V), jnp.zeros(V))}


def reference_loss(params, tokens, key, cfg: upgen.UPGenConfig):
    """tokens (B, L) -> masked cross-entropy, each example masked at a ratio drawn in (0, 1]."""
    B, L = tokens.shape
    H, dtype = cfg.heads, jnp.dtype(cfg.compute_dtype)
    def linear(x, wb):
        return jnp.dot(x.astype(dtype), wb[0].astype(dtype), preferred_element_type=jnp.float32) + wb[1]

    def norm(x, gb):
        return (x - x.mean(-1, keepdims=True)) * jax.lax.rsqrt(x.var(-1, keepdims=True) + 1e-5) * gb[0] + gb[1]

    ratio_key, mask_key = jax.random.split(key)
    ratio = 1 - jax.random.uniform(ratio_key, (B, 1))
    masked = jax.random.uniform(mask_key, (B, L)) < ratio                             # (B, L)
    inputs = jnp.where(masked, cfg.mask_id, tokens)
    slot_modality = (jnp.arange(L) >= cfg.image_tokens).astype(jnp.int32)
    x = params["embed"][inputs] + upgen.sinusoidal_positions(L, cfg.width) + params["modality"][slot_modality]
    real = (tokens != cfg.pad_id)[:, None, None, :]                                  # (B, 1, 1, L)
    for p in params["layers"]:
        q, k, v = jnp.split(linear(norm(x, p["ln1"]), p["qkv"]), 3, axis=-1)         # 3 x (B, L, D)
        q, k, v = (t.reshape(B, L, H, -1).transpose(0, 2, 1, 3) for t in (q, k, v))  # (B, H, L, D/H)
        scores = jnp.where(real, q @ k.transpose(0, 1, 3, 2) / math.sqrt(q.shape[-1]), -1e9)  # (B, H, L, L)
        out = (jax.nn.softmax(scores, axis=-1) @ v).transpose(0, 2, 1, 3).reshape(B, L, -1)
        x = x + linear(out, p["proj"])
        x = x + linear(jax.nn.gelu(linear(norm(x, p["ln2"]), p["fc1"])), p["fc2"])
    logits = linear(norm(x, params["ln"]), params["head"])                            # (B, L, V)
    ce = optax.softmax_cross_entropy_with_integer_labels(logits, tokens)              # (B, L)
    return (ce * masked).sum() / jnp.maximum(masked.sum(), 1)


def reference_step(cfg: upgen.UPGenConfig, tcfg: train.TrainConfig):
    """-> (params, optimizer state, jitted step(params, state, tokens, key) -> (params, state, loss))."""
    optimizer = optax.chain(optax.clip_by_global_norm(tcfg.clip),
                            optax.adamw(tcfg.lr, b1=0.9, b2=0.95, weight_decay=tcfg.weight_decay))
    params = reference_params(cfg, jax.random.key(0))

    @functools.partial(jax.jit, donate_argnums=(0, 1))
    def step(params, opt_state, tokens, key):
        loss, grads = jax.value_and_grad(reference_loss)(params, tokens, key, cfg)
        updates, opt_state = optimizer.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), opt_state, loss

    return params, optimizer.init(params), step


# ---------------------------------------------------------------------------------------------------
# Timing


def alternate(sides, state, rounds, repeats):
    """Runs each side's state = step(state, i) `repeats` times per round, the sides taking turns for `rounds` rounds
    -> (final states, each side's median step seconds per round (sides, rounds)). Each side's first two steps
    compile and warm up, uncounted."""
    state, times = list(state), np.zeros((len(sides), rounds))
    for r in range(rounds):
        for k, step in enumerate(sides):
            seconds = []
            for i in range(repeats + 2 * (r == 0)):
                start = time.perf_counter()
                state[k] = step(state[k], i)
                jax.block_until_ready(state[k])
                seconds += [time.perf_counter() - start] if r or i >= 2 else []
            times[k, r] = np.median(seconds)
    return state, times


def ratio(times, k=0, to=1):
    """The median over rounds of side `to`'s time over side k's: how many times faster k runs."""
    return float(np.median(times[to] / times[k]))


def time_steps(mcfg, n, rounds, repeats):
    """Our train step and the reference step at batch n, alternating -> (our model, seconds per step (2, rounds))."""
    tcfg = train.TrainConfig(batch=n, steps=1)
    trainer = train.make_trainer(tcfg)
    model_state = cluster.replicate(train.init_state(mcfg, trainer.optimizer, key=jax.random.key(0)), trainer.mesh)
    tokens = np.random.default_rng(0).integers(mcfg.image_codes, size=(n, mcfg.seq_len)).astype(np.int32)
    tokens, kinds = cluster.global_batch(trainer.mesh, tokens, np.zeros(n, np.int32))

    def ours(state, i):
        return train.train_step(state, (tokens, kinds), jnp.float32(tcfg.lr), jax.random.key(i), trainer)[0]

    *ref_state, ref = reference_step(mcfg, tcfg)
    theirs = lambda state, i: ref(*state, tokens, jax.random.key(i))[:2]  # noqa: E731
    (model_state, _), times = alternate([ours, theirs], [model_state, tuple(ref_state)], rounds, repeats)
    return model_state[0], times


def bench_train(batch, steps, peak_flops):
    """Our train step against the reference step, on the laptop config and a larger one: ms/step, tokens/s, MFU."""
    accelerator = jax.default_backend() != "cpu"
    dtype = "bfloat16" if accelerator else "float32"
    peak = peak_flops or matmul_peak(jnp.dtype(dtype))
    print(f"{jax.device_count()} x {jax.devices()[0].device_kind}; peak {peak / 1e12:.3g} TFLOP/s per device "
          f"{'given' if peak_flops else f'measured ({dtype} matmul)'}")
    laptop = upgen.UPGenConfig(image_codes=512, text_vocab=320, compute_dtype=dtype)
    larger = upgen.VIT_L if accelerator else dataclasses.replace(laptop, width=512, depth=8, heads=8, mlp=2048)
    for name, mcfg in [("laptop", laptop), ("ViT-L" if accelerator else "larger", larger)]:
        model, times = time_steps(mcfg, batch, ROUNDS, max(1, steps // ROUNDS))
        step_time, ref_time = np.median(times, axis=1)
        n_params = upgen.count_params(model)
        tokens_per_s = batch * mcfg.seq_len / step_time
        mfu = tokens_per_s * flops_per_token(mcfg, n_params) / (peak * jax.device_count())
        print(f"{name}: {n_params / 1e6:.1f}M params, batch {batch} x {mcfg.seq_len} tokens, {mcfg.compute_dtype}: "
              f"{step_time * 1e3:.1f} ms/step, {tokens_per_s:,.0f} tokens/s, MFU {mfu:.1%}; reference step "
              f"{ref_time * 1e3:.1f} ms, ours {ratio(times):.2f}x its speed (median of {ROUNDS} rounds)")


# (depth, width, heads, mlp, batch) of --grid, over 64 image and 8 text tokens: the laptop model up to the 26M one
GRID = [(2, 128, 4, 512, 32), (2, 128, 4, 512, 64), (4, 128, 4, 512, 64), (2, 256, 4, 1024, 32),
        (4, 256, 4, 1024, 32), (4, 256, 4, 1024, 64), (8, 256, 4, 1024, 32), (2, 512, 8, 2048, 32),
        (8, 512, 8, 2048, 32)]


def bench_grid(rounds, repeats, grid=GRID):
    """Our step's speed over the reference's at every shape of grid, and the worst -> {shape: ratio}."""
    ratios = {}
    for depth, width, heads, mlp, batch in grid:
        mcfg = upgen.UPGenConfig(image_codes=512, text_vocab=320, text_tokens=8, width=width, depth=depth,
                                 heads=heads, mlp=mlp)
        _, times = time_steps(mcfg, batch, rounds, repeats)
        ratios[depth, width, heads, mlp, batch] = ratio(times)
        print(f"depth {depth} width {width} heads {heads} mlp {mlp} batch {batch} x {mcfg.seq_len}: ours "
              f"{np.median(times[0]) * 1e3:.1f} ms, reference {np.median(times[1]) * 1e3:.1f} ms, "
              f"{ratio(times):.2f}x", flush=True)
    print(f"worst: {min(ratios.values()):.2f}x (median of {rounds} alternating rounds per shape)")
    return ratios


# ---------------------------------------------------------------------------------------------------
# The token shards: memory flat in dataset size, and what reading them costs a train step


def peak_rss_mb():
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux reports KiB


def bench_shards(n, folder, vq_path, steps=50):
    """Render n shapes pictures as .tar shards, tokenise them, then train steps on batches read from the shards,
    alternating with steps on a batch held in memory -> its figures (seconds, pictures/s, MB), also printed."""
    folder, cfg = Path(folder), shards.ShardsConfig()
    start = time.perf_counter()
    shards.render_shapes(folder / "tars", n, 0, cfg)
    rendered = time.perf_counter()
    tars = f"{folder}/tars/shapes-{{00000..{-(-n // cfg.shard_size) - 1:05d}}}.tar"
    shards.tokenise(tars, vq_path, folder / "shards", cfg)
    figures = {"render_s": rendered - start, "pictures_per_s": n / (time.perf_counter() - rendered),
               "tokenise_rss_mb": peak_rss_mb()}
    tokenizer, *corpus = shards.open_shards(folder / "shards", vq_path)
    mcfg = upgen.model_config(upgen.UPGenConfig(), vqgan.load_vqgan(vq_path).cfg, tokenizer)
    tcfg = train.TrainConfig()
    trainer, counts = train.make_trainer(tcfg), shards.kind_counts(tcfg.batch, shards.DataConfig().mix)
    held = shards.local_batch(corpus, 0, counts, mcfg, seed=0)  # host arrays, built once
    seconds_loading = []

    def stepper(fresh):
        def step(state, i):
            start = time.perf_counter()
            batch = shards.local_batch(corpus, i, counts, mcfg, seed=0) if fresh else held
            seconds_loading.extend([time.perf_counter() - start] if fresh else [])
            batch = cluster.global_batch(trainer.mesh, *batch)  # a new device copy each time: the step donates it
            return train.train_step(state, batch, jnp.float32(tcfg.lr), jax.random.key(i), trainer)[0]
        return step

    states = [cluster.replicate(train.init_state(mcfg, trainer.optimizer, key=jax.random.key(0)), trainer.mesh)
              for _ in "ab"]
    _, times = alternate([stepper(True), stepper(False)], states, ROUNDS, max(1, steps // ROUNDS))
    from_shards, in_memory = np.median(times, axis=1)
    figures.update(step_from_shards_s=from_shards, step_in_memory_s=in_memory,
                   batch_building_s=float(np.median(seconds_loading)), peak_rss_mb=peak_rss_mb())
    print(f"{n:,} pictures: rendered as .tar in {figures['render_s']:.0f} s, tokenised at "
          f"{figures['pictures_per_s']:.0f} pictures/s; train step {from_shards * 1e3:.1f} ms reading the shards "
          f"({figures['batch_building_s'] * 1e3:.2f} ms of it building the batch) vs {in_memory * 1e3:.1f} ms on a "
          f"batch in memory ({1 / ratio(times) - 1:+.1%}); peak RSS {figures['peak_rss_mb']:.0f} MB",
          flush=True)
    return figures


# ---------------------------------------------------------------------------------------------------
# The decode: T compiled steps against T separate forward passes


# ---------------------------------------------------------------------------------------------------
# The run costed ahead: train.train_step compiled from shapes alone, for the pod's rows per device

PLAN_BATCH, PLAN_STEPS, PLAN_DEVICES_PAPER = 4096, 500_000, 512  # the paper's recipe: batch, steps, TPUv3 cores
PLAN_DEVICES = 8  # fake CPU devices the plan compiles for, at the pod's rows per device: data parallel, the program
#                   of each device is then the pod's (only the gradient all-reduce's group is smaller)


def abstract_step(mcfg, tcfg):
    """-> (step(state, tokens, kinds, lr, key), its arguments as shapes with shardings): train.train_step for
    tcfg.batch rows over all devices, the parameters and optimizer state made by eqx.filter_eval_shape (no array)."""
    trainer = train.make_trainer(tcfg)
    mesh = trainer.mesh
    state = eqx.filter_eval_shape(train.init_state, mcfg, trainer.optimizer, key=jax.random.key(0))
    abstract, static = eqx.partition(state, lambda x: isinstance(x, jax.ShapeDtypeStruct))
    placed = lambda x, spec: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=NamedSharding(mesh, spec))  # noqa: E731
    abstract = jax.tree.map(lambda x: placed(x, P()), abstract)
    batch = jax.ShapeDtypeStruct((tcfg.batch, mcfg.seq_len), jnp.int32), jax.ShapeDtypeStruct((tcfg.batch,), jnp.int32)
    scalars = jax.ShapeDtypeStruct((), jnp.float32), jax.eval_shape(lambda: jax.random.key(0))

    def step(state, tokens, kinds, lr, key):  # the Python function under train_step's eqx.filter_jit
        return train.train_step.__wrapped__(eqx.combine(state, static), (tokens, kinds), lr, key, trainer)
    return step, (abstract, *(placed(x, P("data")) for x in batch), *scalars)


def matmul_flops(jaxpr):
    """FLOPs of the matmuls of a jaxpr, a scan's body counted once per iteration (XLA's cost analysis counts a loop
    body once, so it undercounts the scanned blocks)."""
    total = 0
    for eqn in jaxpr.eqns:
        if eqn.primitive.name == "dot_general":
            (contracted, _), _ = eqn.params["dimension_numbers"]
            lhs = eqn.invars[0].aval.shape
            total += 2 * math.prod(eqn.outvars[0].aval.shape) * math.prod(lhs[d] for d in contracted)
        times = eqn.params["length"] if eqn.primitive.name == "scan" else 1
        for value in eqn.params.values():
            for sub in value if isinstance(value, tuple) else (value,):
                if isinstance(sub, (jax.extend.core.ClosedJaxpr, jax.extend.core.Jaxpr)):
                    total += times * matmul_flops(getattr(sub, "jaxpr", sub))
    return total


def plan(mcfg, tcfg, devices):
    """train_step on `devices` devices, compiled on this process's fake CPU devices at the same rows per device
    -> per-device figures: bytes of parameters, optimizer state and temporaries, and FLOPs of one step."""
    rows = tcfg.batch // devices
    step, args = abstract_step(mcfg, dataclasses.replace(tcfg, batch=rows * jax.device_count()))
    compiled = jax.jit(step, donate_argnums=0).lower(*args).compile()  # donated, as train_step's
    memory = compiled.memory_analysis()
    size = lambda tree: sum(x.size * x.dtype.itemsize for x in jax.tree.leaves(tree))  # noqa: E731
    n_params = upgen.count_params(args[0][0])
    return {"rows": rows, "params": size(args[0][0]), "optimizer": size(args[0][1]), "temporaries":
            memory.temp_size_in_bytes, "total": memory.argument_size_in_bytes + memory.output_size_in_bytes
            - memory.alias_size_in_bytes + memory.temp_size_in_bytes,
            "flops": matmul_flops(jax.make_jaxpr(step)(*args).jaxpr) / jax.device_count(),
            "model_flops": flops_per_token(mcfg, n_params) * rows * mcfg.seq_len, "n_params": n_params}


def print_plan(mcfg, tcfg, devices, peak, mfu, steps):
    """Prints plan()'s figures, and with a peak FLOP/s per device the step time at that MFU and the run's hours."""
    start, f = time.perf_counter(), plan(mcfg, tcfg, devices)
    gib = lambda b: f"{b / 2 ** 30:.2f} GiB"  # noqa: E731
    print(f"{f['n_params'] / 1e6:.1f}M params, {mcfg.image_tokens} + {mcfg.text_tokens} tokens, batch {tcfg.batch} on "
          f"{devices} devices: {f['rows']} rows per device in {tcfg.accum} micro-batch(es){', remat' * tcfg.remat}; "
          f"compiled on {jax.device_count()} fake CPU devices at {f['rows']} rows each in "
          f"{time.perf_counter() - start:.0f} s")
    print(f"per device: parameters {gib(f['params'])}, optimizer state {gib(f['optimizer'])}, temporaries "
          f"{gib(f['temporaries'])}; in all {gib(f['total'])} (XLA's CPU memory analysis)")
    print(f"per device and step: {f['flops'] / 1e12:.2f} TFLOPs in the program's matmuls, "
          f"{f['model_flops'] / 1e12:.2f} TFLOPs by the model's count (6 per parameter per token + attention)")
    if peak:
        seconds = f["model_flops"] / (peak * mfu)
        print(f"at {mfu:.0%} MFU of {peak / 1e12:g} TFLOP/s per device: {seconds:.2f} s per step, "
              f"{seconds * steps / 3600:.1f} h for {steps:,} steps")
    return f


def run_plan(args, argv):
    """--plan: runs itself again with --plan-here in a process that fakes the devices (XLA reads its flags once)."""
    mcfg = dataclasses.replace(upgen.VIT_L, **config.fields_of(upgen.UPGenConfig, args))
    tcfg = train.TrainConfig(batch=args.batch or PLAN_BATCH, accum=args.accum, remat=args.remat)
    fake = min(args.devices, PLAN_DEVICES)
    if args.devices < 1 or tcfg.batch % args.devices or (tcfg.batch // args.devices) % tcfg.accum:
        raise ValueError(f"--batch {tcfg.batch} must split into --devices {args.devices} x --accum {tcfg.accum} "
                         f"equal micro-batches")
    if args.plan_here:
        if jax.device_count() != fake:
            raise ValueError(f"--plan-here runs on {fake} CPU devices, this process has {jax.device_count()}")
        return print_plan(mcfg, tcfg, args.devices, args.peak_flops, args.mfu, args.steps or PLAN_STEPS)
    flags = f"{os.environ.get('XLA_FLAGS', '')} --xla_force_host_platform_device_count={fake}"
    env = {**os.environ, "XLA_FLAGS": flags, "JAX_PLATFORMS": "cpu"}
    if subprocess.run([sys.executable, __file__, *argv, "--plan-here"], env=env).returncode:
        raise ValueError("the plan's compilation failed (its error is above)")


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--batch", type=int, help=f"train step: global batch size (default {train.TrainConfig.batch}; "
                                             f"--plan: {PLAN_BATCH}, the paper's)")
    p.add_argument("--steps", type=int, default=0, help="timed steps per side (default: 20 of the train step, 50 with "
                                                        f"--shards); --plan: the run's steps (default {PLAN_STEPS:,})")
    p.add_argument("--peak-flops", type=float, default=0.0, help="peak FLOP/s of one device, for MFU (default: a "
                                                                 "measured matmul; e.g. 989e12 for an H100's bf16)")
    g = p.add_argument_group("--plan: the train step compiled ahead for a pod, from shapes alone")
    g.add_argument("--plan", action="store_true", help="per-device memory and FLOPs of the step, and the run's hours")
    g.add_argument("--plan-here", action="store_true", help="what --plan runs in a subprocess with fake devices")
    for name in ("width", "depth", "heads", "mlp", "image_tokens", "text_tokens", "image_codes", "text_vocab",
                 "compute_dtype"):
        config.flag(g, upgen.VIT_L, name, f"model {name.replace('_', ' ')} (default: the paper's ViT-L)")
    config.flag(g, train.TrainConfig(), "accum", "micro-batches per step")
    config.flag(g, train.TrainConfig(), "remat", "recompute each block's activations in the backward pass")
    g.add_argument("--devices", type=int, default=PLAN_DEVICES_PAPER, help="data-parallel devices of the run "
                   "(a TPUv3-512 pod: 512 TensorCores, 2 per chip, 16 GiB each)")
    g.add_argument("--mfu", type=float, default=0.5, help="model FLOPs utilisation the step time assumes")
    p.add_argument("--shards", action="store_true", help="time and measure memory at --sizes shapes pictures, each "
                                                         "in its own process")
    p.add_argument("--sizes", type=int, nargs="+", default=(20_000, 200_000), help="pictures per --shards run")
    p.add_argument("--shards-one", type=int, default=0, help="what --shards runs in a subprocess: one size, in --out")
    p.add_argument("--out", default="", help="--shards-one's folder")
    p.add_argument("--vqgan", default=str(vqgan_train.SHAPES_VQGAN), help="--shards: the image tokenizer")
    p.add_argument("--grid", action="store_true", help="the train step against the reference over bench.GRID's shapes")
    args = p.parse_args(argv)
    try:
        if args.shards:
            for n in args.sizes:
                with tempfile.TemporaryDirectory() as tmp:
                    command = [sys.executable, __file__, "--shards-one", str(n), "--out", tmp, "--vqgan", args.vqgan,
                               "--steps", str(args.steps or 50)]
                    if subprocess.run(command).returncode:
                        raise ValueError(f"the {n:,}-picture benchmark failed")
        elif args.shards_one:
            bench_shards(args.shards_one, args.out, args.vqgan, args.steps or 50)
        elif args.grid:
            bench_grid(ROUNDS, max(1, (args.steps or 10) // ROUNDS))
        elif args.plan or args.plan_here:
            run_plan(args, argv if argv is not None else sys.argv[1:])
        else:
            bench_train(args.batch or train.TrainConfig.batch, args.steps or 20, args.peak_flops)
    except (ValueError, OSError) as e:
        sys.exit(f"error: {e}")


if __name__ == "__main__":
    main()
