"""Benchmarks: the train step against a reference step, the token shards, the compiled decode.

    python bench.py                          # train step tokens/s and MFU: laptop config, then a larger one
    python bench.py --peak-flops 989e12      # MFU against a given peak (an H100's dense bf16)
    python bench.py --shards                 # peak memory, pictures/s and data-loading cost at 20,000 and 200,000
    python bench.py --decode                 # sample.generate's T-step decode against T single forward passes

The reference step is the same encoder written the usual way: a dict of arrays, batched (B, L, D) matmuls,
layers in a Python loop, a Bernoulli mask, cross-entropy at masked positions, optax.adamw, one jax.jit donating
parameters and optimizer state.
Every comparison runs both sides in this process, alternating for ROUNDS rounds, and prints the median, so a
ratio does not depend on what else the machine does. Read first: train.py, shards.py, sample.py.
"""
import argparse
import dataclasses
import functools
import math
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

import sample
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


def bench_train(batch, steps, peak_flops):
    """Our train step against the reference step, on the laptop config and a larger one: ms/step, tokens/s, MFU."""
    accelerator = jax.default_backend() != "cpu"
    dtype = "bfloat16" if accelerator else "float32"
    peak = peak_flops or matmul_peak(jnp.dtype(dtype))
    print(f"{jax.device_count()} x {jax.devices()[0].device_kind}; peak {peak / 1e12:.3g} TFLOP/s per device "
          f"{'given' if peak_flops else f'measured ({dtype} matmul)'}")
    laptop = upgen.UPGenConfig(image_codes=512, text_vocab=320, compute_dtype=dtype)
    larger = upgen.VIT_L if accelerator else dataclasses.replace(laptop, width=512, depth=8, heads=8, mlp=2048)
    mesh = train.make_mesh()
    for name, mcfg in [("laptop", laptop), ("ViT-L" if accelerator else "larger", larger)]:
        n = batch
        tcfg = train.TrainConfig(batch=n, steps=1)
        optimizer = train.make_optimizer(tcfg)
        model_state = train.replicate(train.init_state(mcfg, optimizer, key=jax.random.key(0)), mesh)
        tokens = np.random.default_rng(0).integers(mcfg.image_codes, size=(n, mcfg.seq_len)).astype(np.int32)
        tokens, kinds = train.global_batch(mesh, tokens, np.zeros(n, np.int32))

        def ours(state, i):
            model, opt_state, *_ = train.train_step(*state, tokens, kinds, jnp.float32(tcfg.lr), jax.random.key(i),
                                                    optimizer, mesh)
            return model, opt_state

        *ref_state, ref = reference_step(mcfg, tcfg)
        theirs = lambda state, i: ref(*state, tokens, jax.random.key(i))[:2]  # noqa: E731
        (model_state, _), times = alternate([ours, theirs], [model_state, tuple(ref_state)], ROUNDS,
                                            max(1, steps // ROUNDS))
        step_time, ref_time = np.median(times, axis=1)
        n_params = upgen.count_params(model_state[0])
        tokens_per_s = n * mcfg.seq_len / step_time
        mfu = tokens_per_s * flops_per_token(mcfg, n_params) / (peak * jax.device_count())
        print(f"{name}: {n_params / 1e6:.1f}M params, batch {n} x {mcfg.seq_len} tokens, {mcfg.compute_dtype}: "
              f"{step_time * 1e3:.1f} ms/step, {tokens_per_s:,.0f} tokens/s, MFU {mfu:.1%}; reference step "
              f"{ref_time * 1e3:.1f} ms, ours {ratio(times):.2f}x its speed (median of {ROUNDS} rounds)")


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
    mcfg = upgen.model_config(upgen.UPGenConfig(image_codes=1, text_vocab=1), vqgan.load_vqgan(vq_path).cfg,
                               tokenizer)
    tcfg, mesh = train.TrainConfig(), train.make_mesh()
    optimizer, counts = train.make_optimizer(tcfg), shards.kind_counts(tcfg.batch, tcfg.mix)
    held = shards.local_batch(corpus, 0, counts, mcfg, seed=0)  # host arrays, built once
    seconds_loading = []

    def stepper(fresh):
        def step(state, i):
            start = time.perf_counter()
            batch = shards.local_batch(corpus, i, counts, mcfg, seed=0) if fresh else held
            seconds_loading.extend([time.perf_counter() - start] if fresh else [])
            tokens, kinds = train.global_batch(mesh, *batch)  # a new device copy each time: the step donates it
            return train.train_step(*state, tokens, kinds, jnp.float32(tcfg.lr), jax.random.key(i), optimizer,
                                    mesh)[:2]
        return step

    states = [train.replicate(train.init_state(mcfg, optimizer, key=jax.random.key(0)), mesh) for _ in "ab"]
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


def bench_decode(ckpt, n, steps):
    """sample.generate's compiled T-step decode of n text -> image samples against T single forward passes."""
    model, _ = upgen.load_upgen(Path(ckpt) / "upgen.eqx")
    cfg, seqs, key = sample.DecodeConfig(steps=steps), sample.inputs(model.cfg, n), jax.random.key(0)
    forward = eqx.filter_jit(sample.model_logits)
    decode = lambda state, i: sample.generate(model, seqs, cfg, key=jax.random.fold_in(key, i))  # noqa: E731
    passes = lambda state, i: [forward(model, seqs) for _ in range(cfg.steps)]  # noqa: E731
    _, times = alternate([decode, passes], [None, None], ROUNDS, 3)
    loop, single = np.median(times, axis=1)
    print(f"batch {n}, {cfg.steps} steps on {jax.devices()[0].platform}: compiled decode {loop * 1e3:.0f} ms, "
          f"{cfg.steps} single forward passes {single * 1e3:.0f} ms, ratio {1 / ratio(times):.2f} (median of "
          f"{ROUNDS} rounds)")


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--batch", type=int, default=train.TrainConfig.batch, help="train step: global batch size")
    p.add_argument("--steps", type=int, default=0, help="timed steps per side (default: 20 of the train step, 50 "
                                                        "with --shards)")
    p.add_argument("--peak-flops", type=float, default=0.0, help="peak FLOP/s of one device, for MFU (default: a "
                                                                 "measured matmul; e.g. 989e12 for an H100's bf16)")
    p.add_argument("--shards", action="store_true", help="time and measure memory at --sizes shapes pictures, each "
                                                         "in its own process")
    p.add_argument("--sizes", type=int, nargs="+", default=(20_000, 200_000), help="pictures per --shards run")
    p.add_argument("--shards-one", type=int, default=0, help="what --shards runs in a subprocess: one size, in --out")
    p.add_argument("--out", default="", help="--shards-one's folder")
    p.add_argument("--vqgan", default=str(vqgan_train.SHAPES_VQGAN), help="--shards: the image tokenizer")
    p.add_argument("--decode", action="store_true", help="time the compiled decode against single forward passes")
    p.add_argument("--ckpt", default="checkpoints/shapes", help="--decode: folder holding upgen.eqx")
    p.add_argument("--n", type=int, default=4, help="--decode: samples in the batch")
    p.add_argument("--decode-steps", type=int, default=sample.DecodeConfig.steps, help="--decode: decoding steps T")
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
        elif args.decode:
            bench_decode(args.ckpt, args.n, args.decode_steps)
        else:
            bench_train(args.batch, args.steps or 20, args.peak_flops)
    except (ValueError, OSError) as e:
        sys.exit(f"error: {e}")


if __name__ == "__main__":
    main()
