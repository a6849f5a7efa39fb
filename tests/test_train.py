"""train.py: its step differentiates upgen.loss_fn; data parallel training is exact (any device count, any host
count, across a resume); real image-caption files, WebDataset shards and text corpora feed it, broken files skipped.

Device counts are fixed when JAX starts, so the sharding checks run small workers (this file run as a
script) in subprocesses with XLA_FLAGS faking CPU devices.
"""
import os
import re
import signal
import socket
import subprocess
import sys
import tarfile
import time
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

STEPS, HOSTS = 3, 2  # the workers' data always comes from 2 data hosts, whoever computes their rows
TINY_MODEL = ["--width", "32", "--depth", "1", "--heads", "2", "--mlp", "64", "--text-tokens", "16"]


def worker(out, devices, processes, process, port, vq_path, tars, accum):
    """Trains a tiny UPGen 3 steps from token shards of 4 .tar files and saves its parameters and losses to out;
    each step's gradient averaged over accum micro-batches.

    The global batch is the same in every set-up: data host h of HOSTS tokenises its own .tar files (h, h + 2)
    into a folder of its own, reads only those shards and draws its rows with shards.local_batch; a process
    computes the rows of the data hosts it stands for."""
    # Optimisation level 0 halves XLA's compile time, which is most of a tiny worker's run.
    os.environ["XLA_FLAGS"] = f"--xla_force_host_platform_device_count={devices} --xla_backend_optimization_level=0"
    import jax
    if processes > 1:
        jax.distributed.initialize(f"localhost:{port}", processes, process)
    import equinox as eqx
    import jax.numpy as jnp
    import cluster
    import shards
    import train
    import upgen

    mine = range(process * HOSTS // processes, (process + 1) * HOSTS // processes)
    corpora = []
    for h in mine:
        folder = Path(out).with_suffix("") / f"host{h}"
        shards.tokenise(tars, vq_path, folder, shards.ShardsConfig(text_tokens=10), process=h, processes=HOSTS)
        tokenizer, *corpus = shards.open_shards(folder, vq_path, h, HOSTS)
        assert sorted(p.name for p in folder.glob("images-*.npy")) == [f"images-{i:05d}.npy" for i in (h, h + 2)]
        corpora.append(corpus)
    # 10 text tokens: every shapes caption fits, the 8-word ones end in PAD, which must not count
    cfg = upgen.UPGenConfig(image_codes=16, image_tokens=16, text_vocab=tokenizer.vocab_size, text_tokens=10,
                            width=16, depth=2, heads=2, mlp=32)
    tcfg = train.TrainConfig(batch=32, lr=1e-2, warmup=1, steps=10, accum=accum)
    counts = shards.kind_counts(tcfg.batch // HOSTS, shards.DataConfig().mix)

    trainer = train.make_trainer(tcfg)
    params = cluster.replicate(train.init_state(cfg, trainer.optimizer, key=jax.random.key(1)), trainer.mesh)
    losses = []
    for step in range(STEPS):
        rows = [shards.local_batch(corpus, step, counts, cfg, seed=0, process=h) for h, corpus in zip(mine, corpora)]
        batch = cluster.global_batch(trainer.mesh, *(np.concatenate(x) for x in zip(*rows)))
        params, loss, _ = train.train_step(params, batch, jnp.float32(1e-2), jax.random.key(step), trainer)
        losses.append(float(loss))
    model = params[0]
    # The key bias shifts every score of a query equally, which softmax ignores: its true gradient is 0,
    # so it holds only float noise, which Adam scales up to +-lr steps. Leave it out of the comparison.
    w = cfg.width
    model = eqx.tree_at(lambda m: m.blocks.qkv.bias, model, replace_fn=lambda b: b.at[:, w:2 * w].set(0))
    leaves = jax.tree.leaves(cluster.local_copy(eqx.filter(model, eqx.is_inexact_array)))
    if process == 0:
        np.savez(out, losses=np.array(losses), *leaves)


def start_workers(tmp_path, devices, processes, vq_path, tars, accum=1):
    """Starts the workers of one set-up (they run alongside other set-ups); returns what finish needs."""
    with socket.socket() as s:
        s.bind(("localhost", 0))
        port = s.getsockname()[1]
    out = tmp_path / f"{devices}x{processes}x{accum}.npz"
    env = {**os.environ, "JAX_PLATFORMS": "cpu"}
    source = ",".join(map(str, tars))
    procs = [subprocess.Popen([sys.executable, __file__, str(out), str(devices), str(processes), str(i), str(port),
                               vq_path, source, str(accum)], env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
             for i in range(processes)]
    return out, procs


def finish(workers):
    """Waits for one set-up's workers; returns (losses, parameter leaves) of its process 0."""
    out, procs = workers
    for p in procs:
        log = p.communicate(timeout=300)[0].decode()
        assert p.returncode == 0, log[-3000:]
    with np.load(out) as f:
        return f["losses"], [f[k] for k in f.files if k != "losses"]


def assert_same_training(a, b):
    (losses_a, params_a), (losses_b, params_b) = a, b
    np.testing.assert_allclose(losses_a, losses_b, rtol=1e-5)
    for x, y in zip(params_a, params_b, strict=True):
        np.testing.assert_allclose(x, y, rtol=1e-4, atol=1e-5)


def test_eight_devices_train_exactly_like_one(tmp_path, tiny_vqgan_16, shapes_tars):
    one = start_workers(tmp_path, 1, 1, tiny_vqgan_16, shapes_tars)
    eight = start_workers(tmp_path, 8, 1, tiny_vqgan_16, shapes_tars)
    one, eight = finish(one), finish(eight)
    assert_same_training(one, eight)
    assert one[0][-1] < one[0][0]  # it did learn something: the comparison is not of untouched weights


def test_four_micro_batches_train_exactly_alike_on_one_or_eight_devices(tmp_path, tiny_vqgan_16, shapes_tars):
    one = start_workers(tmp_path, 1, 1, tiny_vqgan_16, shapes_tars, accum=4)
    eight = start_workers(tmp_path, 8, 1, tiny_vqgan_16, shapes_tars, accum=4)
    assert_same_training(finish(one), finish(eight))


def test_the_step_differentiates_the_objective_that_the_masking_and_weighting_tests_check():
    import equinox as eqx
    import jax
    import jax.numpy as jnp
    import train
    import upgen
    cfg = upgen.UPGenConfig(image_codes=16, image_tokens=4, text_vocab=300, text_tokens=4, width=16, depth=1, heads=2,
                            mlp=32)
    tokens = jax.random.randint(jax.random.key(0), (8, cfg.seq_len), 0, cfg.image_codes)
    tokens = tokens.at[:, cfg.image_tokens:].add(cfg.image_codes + 10)  # captions of real words
    kinds, key, accum = jnp.zeros(8, jnp.int32), jax.random.key(3), 2  # accum 1 is the same scan with one trip
    trainer = train.make_trainer(train.TrainConfig(batch=8, accum=accum))
    model, opt_state = train.init_state(cfg, trainer.optimizer, key=jax.random.key(1))
    # Micro-batch i is rows i, i + accum, ... masked with fold_in(key, i).
    objective = eqx.filter_jit(eqx.filter_value_and_grad(lambda m, i: upgen.loss_fn(
        m, tokens[i::accum], kinds[i::accum], key=jax.random.fold_in(key, i)), has_aux=True))
    micro, grads = zip(*[objective(model, i) for i in range(accum)])
    _, loss, metrics = train.train_step((model, opt_state), (tokens, kinds), jnp.float32(0.0), key, trainer)
    np.testing.assert_allclose(loss, np.mean([value[0] for value in micro]), rtol=1e-6)
    np.testing.assert_allclose(metrics["image_acc"], np.mean([value[1]["image_acc"] for value in micro]), rtol=1e-6)
    mean_grads = jax.tree.map(lambda *g: sum(g) / accum, *grads)
    norm = jnp.sqrt(sum(jnp.sum(g ** 2) for g in jax.tree.leaves(mean_grads)))
    np.testing.assert_allclose(metrics["grad_norm"], norm, rtol=1e-5)


def test_two_hosts_reading_only_their_own_shards_train_exactly_like_one_host(tmp_path, tiny_vqgan_16, shapes_tars):
    one_host = start_workers(tmp_path, 4, 1, tiny_vqgan_16, shapes_tars)
    two_hosts = start_workers(tmp_path, 2, 2, tiny_vqgan_16, shapes_tars)
    assert_same_training(finish(one_host), finish(two_hosts))


# ---------------------------------------------------------------------------------------------------
# The real command line, in process, on tiny data


def start_train(out, vq, *flags, output=subprocess.PIPE):
    """`python train.py` on a tiny model in a subprocess (compiled at XLA's quickest optimisation level); a run that
    is not waited for writes its output to a file (output), lest a full pipe block it."""
    env = {**os.environ, "JAX_PLATFORMS": "cpu", "XLA_FLAGS": "--xla_backend_optimization_level=0"}
    command = [sys.executable, str(ROOT / "train.py"), "--out", str(out), *(["--vqgan", vq] if vq else []),
               "--batch", "8", "--log-every", "5", "--samples", "0", *TINY_MODEL, *flags]
    return subprocess.Popen(command, cwd=ROOT, env=env, stdout=output, stderr=subprocess.STDOUT)


def finish_train(*procs):
    for p in procs:
        log = p.communicate(timeout=300)[0].decode()
        assert p.returncode == 0, log[-3000:]


def test_resume_continues_exactly(tmp_path, tiny_vqgan):
    import jax
    import logbook
    import resume
    import train
    straight = start_train(tmp_path / "straight", tiny_vqgan, "--shapes", "32", "--steps", "20", "--save-every", "10")
    split = start_train(tmp_path / "split", tiny_vqgan, "--shapes", "32", "--steps", "20", "--stop-after", "10")
    finish_train(straight, split)
    assert [p.name for p in resume.state_files(tmp_path / "split")] == ["state_10.eqx"]
    with pytest.raises(SystemExit):  # a fresh run there would prune the old run's states
        train.main(["--out", str(tmp_path / "split")])
    with pytest.raises(SystemExit, match=r"--heads 4 \(saved: 2\), --width 48 \(saved: 32\)"):
        train.main(["--out", str(tmp_path / "split"), "--resume", "--width", "48", "--heads", "4", "--depth", "1"])
    assert [p.name for p in resume.state_files(tmp_path / "split")] == ["state_10.eqx"]
    finish_train(start_train(tmp_path / "split", tiny_vqgan, "--resume", "--log-every", "3"))
    assert len(list((tmp_path / "split" / "shards").glob("images-*.npy"))) == 1  # the resumed run read its shards
    logged = [point["step"] for point in logbook.read(tmp_path / "split" / "metrics.jsonl")]
    assert logged == [5, 10, 12, 15, 18, 20]  # --log-every 3 applied from the resumed step on
    straight = train.load_state(tmp_path / "straight" / "state_20.eqx")[1]
    split = train.load_state(tmp_path / "split" / "state_20.eqx")[1]
    assert straight.step == split.step == 20
    for x, y in zip(jax.tree.leaves(straight[:2]), jax.tree.leaves(split[:2]), strict=True):
        np.testing.assert_array_equal(x, y)
    assert (tmp_path / "split" / "upgen.eqx").exists()


def test_resume_falls_back_past_a_broken_newest_state_and_clears_a_killed_save(tmp_path, tiny_vqgan):
    import resume
    finish_train(start_train(tmp_path / "run", tiny_vqgan, "--shapes", "32", "--steps", "10", "--save-every", "5"))
    newest = tmp_path / "run" / "state_10.eqx"
    newest.write_bytes(newest.read_bytes()[:-100])  # a save cut short by a full disk or a dead node
    stale = tmp_path / "run" / "state_15.eqx.node7-4242.tmp"  # a save killed mid-write
    stale.write_bytes(b"half a state")
    finish_train(start_train(tmp_path / "run", tiny_vqgan, "--resume", "--steps", "12"))
    log = (tmp_path / "run" / "train.log").read_text()
    assert "--resume skips state_10.eqx" in log and "resuming state_5.eqx" in log
    assert not stale.exists() and [p.name for p in resume.state_files(tmp_path / "run")] == ["state_10.eqx",
                                                                                                "state_12.eqx"]


def wait_for(path, text, proc):
    """Polls a run's log until it holds text (the run is in its loop) while the run lives."""
    while proc.poll() is None and text not in (path.read_text() if path.exists() else ""):
        time.sleep(0.05)
    assert proc.poll() is None, path.read_text()[-3000:] if path.exists() else "no log"


def test_a_preempted_run_saves_its_step_refuses_a_second_run_and_resumes_to_the_same_model(tmp_path, tiny_vqgan):
    import logbook
    import resume
    flags = ("--shapes", "32", "--steps", "100000", "--log-every", "1")  # longer than the test: only a signal ends it
    run = start_train(tmp_path / "run", tiny_vqgan, *flags, output=open(tmp_path / "run.out", "wb"))
    wait_for(tmp_path / "run" / "train.log", "step 2 lr", run)
    second = start_train(tmp_path / "run", tiny_vqgan, *flags)
    assert second.wait(timeout=120) == 1
    assert f"(pid {run.pid} on " in second.communicate()[0].decode()  # the line names the run that holds the folder
    run.send_signal(signal.SIGTERM)
    assert run.wait(timeout=60) == 128 + signal.SIGTERM
    step = resume.state_files(tmp_path / "run")[-1].stem.split("_")[1]
    assert int(step) == logbook.read(tmp_path / "run" / "metrics.jsonl")[-1]["step"]  # saved at the step reached
    # Nothing lost: 20 more steps after the resume give the model of a run that was never stopped.
    finish_train(start_train(tmp_path / "straight", tiny_vqgan, *flags, "--stop-after", str(int(step) + 20)),
                 start_train(tmp_path / "run", tiny_vqgan, "--resume", "--stop-after", "20"))
    assert (tmp_path / "run" / "upgen.eqx").read_bytes() == (tmp_path / "straight" / "upgen.eqx").read_bytes()


def test_a_killed_run_leaves_its_folder_free(tmp_path):
    import cluster
    hold = "import sys, time, pathlib, cluster; lock = cluster.run_lock(pathlib.Path(sys.argv[1])); lock.__enter__()"
    hold += "; print('held', flush=True); time.sleep(600)"
    holder = subprocess.Popen([sys.executable, "-c", hold, str(tmp_path)], cwd=ROOT, stdout=subprocess.PIPE,
                              env={**os.environ, "JAX_PLATFORMS": "cpu"})
    assert holder.stdout.readline() == b"held\n"
    with pytest.raises(ValueError, match=f"is in use by another run \\(pid {holder.pid} on "):
        with cluster.run_lock(tmp_path):
            pass
    holder.kill()
    holder.wait()
    with cluster.run_lock(tmp_path):  # the OS released the lock with the process: no stale lock to clear by hand
        pass


def test_a_diverged_run_stops_with_one_line_and_saves_nothing_from_its_weights(tmp_path, tiny_vqgan):
    import jax
    import resume
    import train
    run = start_train(tmp_path / "run", tiny_vqgan, "--shapes", "32", "--steps", "200", "--lr", "1e3", "--warmup", "1",
                      "--save-every", "1", "--log-every", "1")
    lines = run.communicate(timeout=300)[0].decode().strip().splitlines()
    assert run.returncode == 1
    match = re.fullmatch(r"error: training diverged by step (\d+) \(loss nan, gradient norm nan\); nothing saved "
                         r"from these weights\. Newest good state: state_(\d+)\.eqx; --resume --lr SMALLER continues "
                         r"from it", lines[-1])
    assert match and int(match[2]) == int(match[1]) - 1, lines[-1]
    assert not (tmp_path / "run" / "upgen.eqx").exists()
    for path in resume.state_files(tmp_path / "run"):
        assert all(np.isfinite(x).all() for x in jax.tree.leaves(train.load_state(path)[1].model))


def test_two_processes_joined_by_the_command_line_train_like_one(tmp_path, tiny_vqgan_16, shapes_tars):
    import jax
    import jax.numpy as jnp
    import cluster
    import shards
    import train
    import upgen
    import vqgan
    with socket.socket() as s:
        s.bind(("localhost", 0))
        port = s.getsockname()[1]
    source = ",".join(map(str, shapes_tars))
    flags = ("--images", source, "--steps", "3", "--text-tokens", "10", "--distributed", "--coordinator",
             f"localhost:{port}", "--processes", "2")
    finish_train(*(start_train(tmp_path / "run", tiny_vqgan_16, *flags, "--process-id", str(i)) for i in (0, 1)))
    assert "1 devices" not in (tmp_path / "run" / "train.log").read_text()
    # One process computing the same steps from the same global batches: host 0's rows, then host 1's.
    header, saved = train.load_state(tmp_path / "run" / "state_3.eqx")
    tcfg, mcfg = train.TrainConfig(**header["train"]), saved.model.cfg
    trainer = train.make_trainer(tcfg)
    corpora = [shards.open_shards(tmp_path / "run" / "shards", tiny_vqgan_16, p, 2)[1:] for p in (0, 1)]
    counts = shards.kind_counts(tcfg.batch // 2, header["data"]["mix"])
    params = train.init_state(mcfg, trainer.optimizer, key=jax.random.split(jax.random.key(tcfg.seed))[0],
                              codebook=vqgan.load_vqgan(tiny_vqgan_16).quantizer.codebook)
    for step in range(3):
        rows = [shards.local_batch(c, step, counts, mcfg, seed=tcfg.seed, process=p) for p, c in enumerate(corpora)]
        batch = cluster.global_batch(trainer.mesh, *(np.concatenate(x) for x in zip(*rows)))
        lr = jnp.float32(train.learning_rate(step, tcfg))
        key = jax.random.fold_in(jax.random.split(jax.random.key(tcfg.seed))[1], step)
        params, *_ = train.train_step(params, batch, lr, key, trainer)
    two, _ = upgen.load_upgen(tmp_path / "run" / "upgen.eqx")
    for x, y in zip(jax.tree.leaves(eqx_arrays(two)), jax.tree.leaves(eqx_arrays(params[0])), strict=True):
        np.testing.assert_allclose(x, y, rtol=1e-4, atol=1e-5)


@pytest.mark.slow
def test_a_dead_peer_stops_the_other_process_with_one_line(tmp_path, tiny_vqgan_16, shapes_tars):
    with socket.socket() as s:
        s.bind(("localhost", 0))
        port = s.getsockname()[1]
    flags = ("--images", ",".join(map(str, shapes_tars)), "--steps", "100000", "--text-tokens", "10",
             "--log-every", "1", "--distributed", "--coordinator", f"localhost:{port}", "--processes", "2",
             "--peer-timeout", "10")
    outputs = [tmp_path / f"process{i}.out" for i in (0, 1)]
    procs = [start_train(tmp_path / "run", tiny_vqgan_16, *flags, "--process-id", str(i), output=open(outputs[i], "wb"))
             for i in (0, 1)]
    wait_for(tmp_path / "run" / "train.log", "step 2 lr", procs[0])
    procs[1].kill()  # an OOM kill or a node failure: no Python runs in it
    killed = time.monotonic()
    assert procs[0].wait(timeout=120) == 1 and time.monotonic() - killed < 60  # no hang, long before JAX's 20 s x 6
    said = [line.strip() for line in outputs[0].read_text().splitlines()]
    said = [line for line in said if line and not line.startswith("train:")]  # the progress bar's redraws aside
    assert said[-1].startswith("error: process 1 of 2 stopped answering") and "--resume" in said[-1]
    assert not any(line.startswith("Traceback") for line in said)
    procs[1].wait()


def eqx_arrays(model):
    import equinox as eqx
    return eqx.filter(model, eqx.is_inexact_array)


def test_the_same_fixed_step_command_gives_the_same_checkpoint_bit_for_bit(tmp_path, tiny_vqgan):
    flags = ("--shapes", "32", "--steps", "20", "--keep", "0")
    finish_train(*(start_train(tmp_path / run, tiny_vqgan, *flags) for run in "ab"))
    assert (tmp_path / "a" / "upgen.eqx").read_bytes() == (tmp_path / "b" / "upgen.eqx").read_bytes()


def write_pairs(folder, n):
    """n shapes pictures as folder/i.png + folder/i.txt; returns their captions."""
    import shapes
    from PIL import Image
    images, captions, _ = shapes.examples(n, seed=3)
    folder.mkdir()
    for i, (image, caption) in enumerate(zip(images, captions)):
        Image.fromarray(image).save(folder / f"{i}.png")
        (folder / f"{i}.txt").write_text(caption)
    return captions


def test_folder_shard_and_text_corpus_train_and_skip_a_broken_image(tmp_path, tiny_vqgan):
    folder = tmp_path / "pairs"
    captions = write_pairs(folder, 5)
    (folder / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n not really a picture")
    (folder / "broken.txt").write_text("a small red circle in the center")
    corpus = tmp_path / "corpus.txt"
    corpus.write_text("the quick brown fox\n\njumps over the lazy dog\nand sleeps\n")
    shard = tmp_path / "shard-000.tar"
    with tarfile.open(shard, "w") as tar:
        for name in sorted(os.listdir(folder)):
            if not name.startswith("broken"):
                tar.add(folder / name, arcname=name)
    finish_train(start_train(tmp_path / "folder", tiny_vqgan, "--images", str(folder), "--text", str(corpus),
                             "--mix", "0.7", "0.15", "0.15",
                             "--steps", "2"),
                 start_train(tmp_path / "tar", tiny_vqgan, "--images", str(shard), "--steps", "2", "--samples", "2"))
    import shards
    import upgen
    import vocab
    log = (tmp_path / "folder" / "train.log").read_text()
    assert "skipped 1 " in log and "broken.png: cannot read image" in log
    _, images, texts = shards.open_shards(tmp_path / "folder" / "shards", tmp_path / "folder" / "vqgan.eqx")
    assert sum(map(len, images)) == 5 and sum(map(len, texts)) == 3  # the corpus's 3 non-empty lines
    _, tokenizer = upgen.load_upgen(tmp_path / "folder" / "upgen.eqx")  # the captions' lengths, not the corpus's
    lengths = np.bincount([(tokenizer.encode(c) != vocab.PAD).sum() for c in captions], minlength=tokenizer.length + 1)
    assert tokenizer.caption_lengths == tuple(lengths[1:].tolist())
    assert "skipped 0 " in (tmp_path / "tar" / "train.log").read_text()
    _, images, texts = shards.open_shards(tmp_path / "tar" / "shards", tmp_path / "tar" / "vqgan.eqx")
    assert sum(map(len, images)) == sum(map(len, texts)) == 5  # no corpus: the captions are the text
    assert (tmp_path / "tar" / "upgen.eqx").exists() and (tmp_path / "tar" / "samples.png").exists()


def test_a_folder_run_reports_its_held_out_pairs_which_no_step_trained_on(tmp_path, tiny_vqgan):
    import data
    import evaluate
    import shards
    captions = write_pairs(tmp_path / "pairs", 70)  # pictures 62 and 66 are in the held-out slice
    held = [i for i in range(70) if data.is_held_out(f"{tmp_path}/pairs/{i}.png")]
    assert held == [62, 66]
    finish_train(start_train(tmp_path / "run", tiny_vqgan, "--images", str(tmp_path / "pairs"), "--steps", "6",
                             "--samples", "2"))
    _, images, _ = shards.open_shards(tmp_path / "run" / "shards", tmp_path / "run" / "vqgan.eqx")
    assert sum(map(len, images)) == 68 and len(shards.held_out_rows(tmp_path / "run" / "shards", 100)) == 2
    import logbook
    points = logbook.read(tmp_path / "run" / "metrics.jsonl")
    assert [p["step"] for p in points] == [5, 6] and all(p["val_image_loss"] > 0 < p["val_text_loss"] for p in points)
    log = (tmp_path / "run" / "train.log").read_text()
    assert f"samples.png shows, left to right: {captions[62]}; {captions[66]}" in log  # drawn from held-out captions
    figures = evaluate.main(["--ckpt", str(tmp_path / "run"), "--steps", "2"])["held out"]
    assert figures["pairs"] == 2 and all(0 <= figures[k] <= 1 for k in (
        "image->text exact", "image->text words", "text->image captioned back", "text->image read by nearest pictures",
        "nearest pictures: held-out pictures", "nearest pictures: random pictures", "zero-shot"))
    import probe
    figures = probe.main(["--ckpt", str(tmp_path / "run"), "--held-out", "--epochs", "1"])  # its captions: classes
    assert figures["pairs"] == 2 and figures["candidates"] == len(set(captions)) and 0 <= figures["linear probe"] <= 1


def test_a_folder_of_user_pictures_never_gets_the_shapes_tokenizer(tmp_path, tiny_vqgan, monkeypatch):
    import shutil
    import vqgan
    import vqgan_train
    write_pairs(tmp_path / "pairs", 12)
    trained_on = []

    def train_vqgan(path, cfg, tcfg, images):  # stands in for minutes of training: a tiny tokenizer of the right kind
        assert cfg.codebook_size == 24 and tcfg.steps == 7
        trained_on.append(images)
        shutil.copyfile(tiny_vqgan, path)
        return vqgan.load_vqgan(path)

    monkeypatch.setattr(vqgan_train, "train_vqgan", train_vqgan)
    logs = {}
    for run, given, images in (("yours", "", "pairs"), ("given", tiny_vqgan, "pairs"), ("shapes", "", "")):
        (tmp_path / run).mkdir()
        logs[run] = []
        source = str(tmp_path / images) if images else ""
        vqgan_train.image_tokenizer(tmp_path / run, given, source, vqgan.VQGANConfig(codebook_size=24),
                                    vqgan_train.VQGANTrainConfig(steps=7, train_pictures=10), logs[run].append)
        shapes_tokenizer = (tmp_path / run / "vqgan.eqx").read_bytes() == vqgan_train.SHAPES_VQGAN.read_bytes()
        assert shapes_tokenizer == (run == "shapes"), logs[run]
    assert len(trained_on) == 1 and trained_on[0].shape == (9, 64, 64, 3)  # 10 of the 12 pictures read, 1 held out
    assert "training one on 9 of your pictures" in logs["yours"][0] and "PSNR" in logs["yours"][1]
    assert logs["given"] == [f"image tokenizer: copying {tiny_vqgan} to {tmp_path / 'given' / 'vqgan.eqx'}"]


@pytest.mark.slow
def test_user_pictures_train_a_tokenizer_of_their_own_and_report_its_psnr(tmp_path):
    import vqgan
    write_pairs(tmp_path / "pairs", 40)
    finish_train(start_train(tmp_path / "run", "", "--images", str(tmp_path / "pairs"), "--steps", "2",
                             "--vqgan-steps", "200", "--vqgan-codes", "16", "--vqgan-pictures", "30"))
    log = (tmp_path / "run" / "train.log").read_text()
    assert "training one on 27 of your pictures" in log and "3 held-out pictures of yours at PSNR" in log
    vq_cfg = vqgan.load_vqgan(tmp_path / "run" / "vqgan.eqx").cfg
    assert (vq_cfg.codebook_size, vq_cfg.image_size, vq_cfg.tokens_per_side) == (16, 32, 4)  # the folder's 4x4 grid
    assert (tmp_path / "run" / "upgen.eqx").exists()


def test_tpu_flag_without_tpus_exits_with_one_line():
    result = subprocess.run([sys.executable, str(ROOT / "train.py"), "--tpu"], cwd=ROOT, capture_output=True,
                            text=True, env={**os.environ, "JAX_PLATFORMS": "cpu"}, timeout=120)
    assert result.returncode == 1
    assert result.stderr.strip().startswith("error: --tpu") and len(result.stderr.strip().splitlines()) == 1


@pytest.mark.parametrize("flag, value", [("--batch", "0"), ("--steps", "0"), ("--lr", "0"), ("--accum", "3"),
                                         ("--log-every", "0"), ("--save-every", "0"), ("--stop-after", "-1"),
                                         ("--vqgan-codes", "0"), ("--vqgan-steps", "0"), ("--vqgan-pictures", "0"),
                                         ("--vqgan-size", "30"), ("--coordinator", "localhost:1234"),
                                         ("--width", "102"), ("--heads", "3")])
def test_settings_that_cannot_train_exit_with_one_line(tmp_path, flag, value, capsys):
    import train
    with pytest.raises(SystemExit) as exit:
        train.main(["--out", str(tmp_path), flag, value])
    assert str(exit.value).startswith("error: --") and f"{flag} {value}" in str(exit.value)
    assert "\n" not in str(exit.value) and not (tmp_path / "train.log").exists()  # refused before anything ran


def test_a_folder_of_unreadable_pictures_exits_with_one_line(tmp_path):
    import train
    (tmp_path / "pairs").mkdir()
    for name in ("a", "b"):
        (tmp_path / "pairs" / f"{name}.jpg").write_bytes(b"not a picture")
        (tmp_path / "pairs" / f"{name}.txt").write_text("a red circle")
    with pytest.raises(SystemExit) as exit:
        train.main(["--out", str(tmp_path / "run"), "--images", str(tmp_path / "pairs")])
    assert str(exit.value).startswith(f"error: no readable image-caption pairs in {tmp_path / 'pairs'}: 2 pictures "
                                      f"could not be read (first: {tmp_path / 'pairs' / 'a.jpg'}: cannot read image")
    assert "\n" not in str(exit.value)


def test_a_folder_of_pictures_without_captions_exits_with_one_line(tmp_path):
    import train
    write_pairs(tmp_path / "pairs", 2)
    for caption in (tmp_path / "pairs").glob("*.txt"):
        caption.unlink()
    with pytest.raises(SystemExit, match=r"^error: no picture in .* has a caption: pictures need a caption file a.txt "
                                         r"beside a.jpg$"):
        train.main(["--out", str(tmp_path / "run"), "--images", str(tmp_path / "pairs")])


def test_the_validation_loss_is_the_objective_on_held_out_pairs_with_the_same_tokens_hidden_at_every_call():
    import jax
    import train
    import upgen
    cfg = upgen.UPGenConfig(image_codes=16, image_tokens=16, text_vocab=20, text_tokens=6, width=32, depth=1,
                            heads=2, mlp=64)
    model = upgen.UPGen(cfg, key=jax.random.key(0))
    rng = np.random.default_rng(0)
    rows = np.concatenate([rng.integers(0, 16, (40, 16)), rng.integers(2, 20, (40, 6))], axis=1).astype(np.uint16)
    rows[::3, -2:] = 0  # some captions end in PAD, which is never hidden
    figures = train.validation_loss(model, rows)
    assert figures == train.validation_loss(model, rows)
    tokens = np.asarray(upgen.make_sequence(rows[:, :16], rows[:, 16:], cfg))
    inputs, masked = upgen.mask_tokens(tokens, np.zeros(40, np.int32), cfg, key=jax.random.key(train.VALIDATION_SEED))
    log_p = np.asarray(jax.nn.log_softmax(jax.vmap(model)(inputs), axis=-1))
    ce = {"image": [], "text": []}  # token by token, straight from the model's logits
    for t, m, lp in zip(tokens, np.asarray(masked), log_p):
        for i in np.flatnonzero(m):
            ce["image" if i < 16 else "text"].append(-lp[i, t[i]])
    assert float(figures["val_image_loss"]) == pytest.approx(np.mean(ce["image"]), rel=1e-5)
    assert float(figures["val_text_loss"]) == pytest.approx(np.mean(ce["text"]), rel=1e-5)


def test_the_learning_rate_warms_up_in_steps_then_decays_to_a_tenth_at_the_last_step():
    import train
    tcfg = train.TrainConfig(lr=1.0, warmup=10, steps=110)
    rates = [train.learning_rate(step, tcfg) for step in range(111)]
    assert np.isclose(rates[0], 0.1, rtol=1e-3) and np.all(np.diff(rates[:10]) > 0) and np.all(np.diff(rates[9:]) < 0)
    assert np.isclose(rates[110], 0.1)


def test_a_folder_run_defaults_to_the_folder_length_and_any_run_takes_the_steps_it_is_given():
    import train
    steps = lambda *flags: train.parse(list(flags))[0]["steps"]  # noqa: E731
    assert steps() == train.TrainConfig().steps == 5000 and steps("--images", "DIR") == train.FOLDER_STEPS
    assert steps("--images", "DIR", "--steps", "7") == 7 == steps("--steps", "7")


if __name__ == "__main__":
    out, devices, processes, process, port, vq_path, tars, accum = sys.argv[1:]
    worker(out, int(devices), int(processes), int(process), int(port), vq_path, tars, int(accum))
