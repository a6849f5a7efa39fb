"""Train-step benchmark: tokens/s and model FLOPs utilisation of train.train_step, beside a reference step.

    python train.py --bench                          # laptop config against the reference, then a larger one
    python train.py --bench --peak-flops 989e12      # MFU against a given peak (an H100's dense bf16)

The reference is the same encoder written the usual way: a dict of arrays, batched (B, L, D) matmuls,
layers in a Python loop, a Bernoulli mask, cross-entropy at masked positions, optax.adamw, one jax.jit.
Both steps run in this process, alternating, so the ratio does not depend on what else the machine does.
"""
import dataclasses
import math
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax

import train
import upgen


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
    """-> (params, optimiser state, jitted step(params, state, tokens, key) -> (params, state, loss))."""
    optimizer = optax.chain(optax.clip_by_global_norm(tcfg.clip),
                            optax.adamw(tcfg.lr, b1=0.9, b2=0.95, weight_decay=tcfg.weight_decay))
    params = reference_params(cfg, jax.random.key(0))

    @jax.jit
    def step(params, opt_state, tokens, key):
        loss, grads = jax.value_and_grad(reference_loss)(params, tokens, key, cfg)
        updates, opt_state = optimizer.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), opt_state, loss

    return params, optimizer.init(params), step


# ---------------------------------------------------------------------------------------------------
# Timing


def time_steps(step, state, repeats):
    """Runs state = step(state, i) repeats times -> (final state, the step times in seconds)."""
    times = []
    for i in range(repeats):
        start = time.perf_counter()
        state = step(state, i)
        jax.block_until_ready(state)
        times.append(time.perf_counter() - start)
    return state, times


def run(args):
    accelerator = jax.default_backend() != "cpu"
    dtype = "bfloat16" if accelerator else "float32"
    peak = args.peak_flops or matmul_peak(jnp.dtype(dtype))
    print(f"{jax.device_count()} x {jax.devices()[0].device_kind}; peak {peak / 1e12:.3g} TFLOP/s per device "
          f"{'given' if args.peak_flops else f'measured ({dtype} matmul)'}")
    laptop = upgen.UPGenConfig(image_codes=512, text_vocab=320, compute_dtype=dtype)
    larger = upgen.VIT_L if accelerator else dataclasses.replace(laptop, width=512, depth=8, heads=8, mlp=2048)
    mesh = train.make_mesh()
    for name, mcfg, batch in [("laptop", laptop, args.batch), ("ViT-L" if accelerator else "larger", larger,
                                                                 max(args.batch // 4, jax.device_count()))]:
        tcfg = train.TrainConfig(batch=batch, steps=1)
        optimizer = train.make_optimizer(tcfg)
        model_state = train.replicate(train.init_state(mcfg, optimizer, key=jax.random.key(0)), mesh)
        tokens = np.random.default_rng(0).integers(mcfg.image_codes, size=(batch, mcfg.seq_len)).astype(np.int32)
        tokens, kinds = train.global_batch(mesh, tokens, np.zeros(batch, np.int32))

        def ours(state, i):
            model, opt_state = state
            model, opt_state, loss, _ = train.train_step(model, opt_state, tokens, kinds, jnp.float32(tcfg.lr),
                                                         jax.random.key(i), optimizer, mesh)
            return model, opt_state

        ref_params, ref_opt_state, ref = reference_step(mcfg, tcfg)
        ref_state = (ref_params, ref_opt_state)
        ref_fn = lambda state, i: ref(*state, tokens, jax.random.key(i))[:2]  # noqa: E731
        ours_times, ref_times = [], []
        rounds = 1 if name != "laptop" else 5  # alternate, so both see the same machine
        for _ in range(rounds):
            model_state, t = time_steps(ours, model_state, 2 + max(1, args.bench_steps // rounds))
            ours_times += t[2:]  # each round's first two steps compile (once) and warm up
            ref_state, t = time_steps(ref_fn, ref_state, 2 + max(1, args.bench_steps // rounds))
            ref_times += t[2:]
        step_time, ref_time = float(np.median(ours_times)), float(np.median(ref_times))
        n_params = upgen.count_params(model_state[0])
        tokens_per_s = batch * mcfg.seq_len / step_time
        mfu = tokens_per_s * flops_per_token(mcfg, n_params) / (peak * jax.device_count())
        print(f"{name}: {n_params / 1e6:.1f}M params, batch {batch} x {mcfg.seq_len} tokens, {mcfg.compute_dtype}: "
              f"{step_time * 1e3:.1f} ms/step, {tokens_per_s:,.0f} tokens/s, MFU {mfu:.1%}; reference step "
              f"{ref_time * 1e3:.1f} ms, ours {ref_time / step_time:.2f}x its speed")
