"""Tokenise once: image-caption pairs (and unpaired text) -> token shards on disk that train.py memory-maps.

    python shards.py --images DIR --vqgan V --out DIR2              # a folder of a.jpg + a.txt (img2dataset's files)
    python shards.py --images 'dump/{00000..00099}.tar' --vqgan V --out DIR2 --text corpus.txt   # WebDataset shards
    python shards.py --bench          # peak memory, pictures/s and data-loading cost at 20,000 and 200,000 pictures

Input file i (a .tar, or a group of shard_size pictures of a folder) becomes images-<i>.npy, written by
process i mod P, which opens no other process's pictures; lines of --text go shard_size at a time into
text-<i>.npy. Pictures stream through the frozen VQGAN in fixed-size chunks, decoded by a thread pool while
the previous chunk encodes, so memory is bounded by a chunk and a shard, never the dataset. A shard is
written under a temporary name, renamed when complete and then listed in the process's manifest (JSON:
source, the VQGAN file's sha256, the vocabulary, each shard's examples, caption lengths and skipped files):
a killed run restarts at the first shard not listed and writes the same bytes. Read next: train.py.
"""
import argparse
import errno
import glob
import hashlib
import io
import itertools
import json
import os
import re
import resource
import subprocess
import sys
import tarfile
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image
from tqdm import tqdm

import data
import shapes
import vqgan


@dataclass(frozen=True)
class ShardsConfig:
    shard_size: int = 1000  # pictures per shard of a folder (a .tar keeps its own) and per shapes .tar; text lines
    chunk: int = 256  # pictures per VQGAN call: memory is bounded by this and a shard, never the dataset
    workers: int = 4  # picture-decoding threads (pillow releases the GIL while it decodes)
    vocab_lines: int = 100_000  # captions, then as many text lines, counted for the word vocabulary
    max_words: int = 8192  # words in the vocabulary (others are spelled in bytes)
    text_tokens: int = 16  # text ids per example


# ----------------------------------------------------------------------------------------------
# Input files


def expand(pattern):
    """Brace ranges as WebDataset writes them: 'a/{000..002}.tar' -> ['a/000.tar', 'a/001.tar', 'a/002.tar']."""
    m = re.search(r"\{(\d+)\.\.(\d+)\}", pattern)
    if not m:
        return [pattern]
    head, tail, first = pattern[:m.start()], pattern[m.end():], m.group(1)
    return [p for i in range(int(first), int(m.group(2)) + 1) for p in expand(f"{head}{i:0{len(first)}d}{tail}")]


def input_files(source, shard_size):
    """source: a folder, a .tar, or comma-separated .tar globs / brace patterns -> its input files, in order:
    ("tar", path) per .tar, or ("folder", paths) per shard_size pictures of a folder."""
    paths = []
    for pattern in (p for part in source.split(",") if part for p in expand(part)):
        found = sorted(glob.glob(pattern)) if glob.has_magic(pattern) else [pattern] * os.path.exists(pattern)
        if not found:
            raise FileNotFoundError(f"no data at {pattern}: give a folder of pictures with .txt captions, .tar "
                                    "shards, or a pattern such as 'dump/{00000..00099}.tar'")
        paths += [Path(p) for p in found]
    if len(paths) == 1 and paths[0].is_dir():
        tars, pictures = sorted(paths[0].rglob("*.tar")), data.picture_files(paths[0])
        if tars:
            return [("tar", t) for t in tars]
        if not pictures:
            raise ValueError(f"no pictures or .tar shards in {paths[0]}")
        return [("folder", pictures[i:i + shard_size]) for i in range(0, len(pictures), shard_size)]
    return [("tar", p) for p in paths]


def pairs(file, pictures=True):
    kind, path = file
    return data.tar_pairs(path, pictures) if kind == "tar" else data.folder_pairs(path, pictures)


def describe(file):
    kind, path = file
    return str(path) if kind == "tar" else f"{path[0]} .. {path[-1]} ({len(path)} pictures)"


def vocabulary(files, text, cfg: ShardsConfig):
    """The word vocabulary of the first vocab_lines captions and text lines, read in input order (captions only, no
    pictures): every process counts the same words, so all agree without talking."""
    captions = (caption for f in files for _, _, caption, why in pairs(f, pictures=False) if not why)
    lines = data.text_lines(text) if text else ()
    texts = itertools.chain(itertools.islice(captions, cfg.vocab_lines), itertools.islice(lines, cfg.vocab_lines))
    return data.build_tokenizer(texts, cfg.text_tokens, cfg.max_words)


def render_shapes(folder, n, seed, cfg: ShardsConfig, *, process=0, processes=1):
    """The shapes world's n examples as .tar shards of shard_size (PNG + caption per example) in folder -> their
    paths. Shard i follows from (seed, i) alone; a process writes the missing ones it tokenises, and those whose
    captions the vocabulary counts."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    paths = [folder / f"shapes-{i:05d}.tar" for i in range(-(-n // cfg.shard_size))]
    for i, path in enumerate(paths):
        if path.exists() or (i % processes != process and i * cfg.shard_size >= cfg.vocab_lines):
            continue
        images, captions, _ = shapes.examples(min(cfg.shard_size, n - i * cfg.shard_size), seed=[seed, i])
        tmp = path.with_name(f"{path.name}.{process}.tmp")  # hosts may share the folder
        with tarfile.open(tmp, "w") as tar:
            for j, (image, caption) in enumerate(zip(images, captions)):
                png = io.BytesIO()
                Image.fromarray(image).save(png, format="PNG", compress_level=1)  # 64x64: 4x faster than level 6
                for suffix, payload in ((".png", png.getvalue()), (".txt", caption.encode())):
                    info = tarfile.TarInfo(f"{i * cfg.shard_size + j:09d}{suffix}")
                    info.size = len(payload)
                    tar.addfile(info, io.BytesIO(payload))
        os.replace(tmp, path)
    return paths


# ----------------------------------------------------------------------------------------------
# Tokenising


def file_hash(path):
    with open(path, "rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()


def decode_pair(name, picture, caption, why, size):
    """One pair -> (picture uint8 (size, size, 3), caption, "") or (None, None, "name: why") to skip it."""
    if why:
        return None, None, f"{name}: {why}"
    try:
        return data.load_image(picture, size), caption, ""
    except ValueError as e:
        return None, None, f"{name}: {e}"


def decoded_chunks(pairs, size, chunk, pool):
    """Lists of chunk decoded pairs; the next chunk decodes in the pool's threads while the caller encodes this one."""
    def submit():  # reads the chunk's bytes here, decodes them in the pool
        return [pool.submit(decode_pair, *pair, size) for pair in itertools.islice(pairs, chunk)]
    pending = submit()
    while pending:
        following = submit()
        yield [job.result() for job in pending]
        pending = following


def encode_file(vq, tokenizer, file, cfg: ShardsConfig, pool, bar):
    """One input file -> (uint16 (n, image_tokens + text_tokens): VQGAN codes, then caption ids; caption-length
    counts (length,) of 1..length tokens; skipped "name: why" strings)."""
    rows, skipped = [], []
    for chunk in decoded_chunks(pairs(file), vq.cfg.image_size, cfg.chunk, pool):
        skipped += [why for _, _, why in chunk if why]
        good = [(picture, caption) for picture, caption, why in chunk if not why]
        if not good:
            continue
        pictures = np.stack([picture for picture, _ in good])  # (n, S, S, 3)
        padded = np.concatenate([pictures, np.repeat(pictures[-1:], cfg.chunk - len(good), 0)])  # one compile
        codes = vqgan.encode_images(vq, padded, batch=cfg.chunk)[:len(good)]  # (n, image_tokens)
        ids = np.stack([tokenizer.encode(caption) for _, caption in good])  # (n, text_tokens)
        rows.append(np.concatenate([codes, ids], axis=1).astype(np.uint16))
        bar.update(len(good))
    if not rows and not skipped:
        skipped.append(f"{describe(file)}: no image-caption pairs")
    rows = np.concatenate(rows) if rows else np.zeros((0, vq.cfg.tokens_per_side ** 2 + cfg.text_tokens), np.uint16)
    lengths = np.bincount((rows[:, -cfg.text_tokens:] != data.PAD).sum(1), minlength=cfg.text_tokens + 1)[1:]
    return rows, lengths.tolist(), skipped


def write_file(path, write):
    """write(file object) into path atomically: a temporary name, renamed when complete. A full disk is one line."""
    tmp = path.with_name(path.name + ".tmp")
    try:
        with open(tmp, "wb") as f:
            write(f)
        os.replace(tmp, path)
    except OSError as e:
        tmp.unlink(missing_ok=True)
        hint = ": the disk is full; free space and rerun to continue" if e.errno == errno.ENOSPC else ""
        raise OSError(e.errno, f"writing {path} failed ({e.strerror or e}){hint}") from None


def manifest_path(folder, process, processes):
    return Path(folder) / f"manifest-{process}of{processes}.json"


def save_manifest(path, manifest):
    write_file(path, lambda f: f.write(json.dumps(manifest, indent=1).encode()))


def tokenise(source, vq_path, folder, cfg=ShardsConfig(), *, text="", process=0, processes=1, log=print):
    """Writes this process's token shards of source (and text) into folder, keeping those a previous run of the same
    source and VQGAN finished -> the process's manifest."""
    folder, vq_hash = Path(folder), file_hash(vq_path)
    path = manifest_path(folder, process, processes)
    manifest = json.loads(path.read_text()) if path.exists() else None
    if manifest and (manifest["source"], manifest["text"]) != (source, text):
        raise ValueError(f"{folder} holds the shards of {manifest['source']!r} (text {manifest['text']!r}), not "
                         f"{source!r} (text {text!r}): give another folder or delete it")
    if manifest and manifest["vqgan_sha256"] != vq_hash:
        raise ValueError(f"{folder} was tokenised with another VQGAN than {vq_path}: give another folder or delete it")
    if manifest and manifest["text_tokens"] != cfg.text_tokens:
        raise ValueError(f"{folder} holds {manifest['text_tokens']} text tokens per example, not {cfg.text_tokens}")
    if manifest and manifest["complete"]:
        log(f"token shards: {folder}, complete")
        return manifest
    files = input_files(source, cfg.shard_size)
    if len(files) < processes:
        raise ValueError(f"{len(files)} input file(s) for {processes} processes: each process needs one of its own; "
                         "split the data into more .tar shards (or pictures into more folders of shard_size)")
    vq = vqgan.load_vqgan(vq_path)
    if manifest is None:
        tokenizer = vocabulary(files, text, cfg)
        if max(vq.cfg.codebook_size, tokenizer.vocab_size) > 2 ** 16:
            raise ValueError("shards hold uint16 ids: the codebook and the text vocabulary must have at most 65536")
        manifest = {"source": source, "text": text, "process": process, "processes": processes,
                    "vqgan_sha256": vq_hash, "image_tokens": vq.cfg.tokens_per_side ** 2,
                    "text_tokens": cfg.text_tokens, "words": list(tokenizer.words), "shards": [], "text_shards": [],
                    "complete": False}
    tokenizer = data.Tokenizer(tuple(manifest["words"]), cfg.text_tokens)
    folder.mkdir(parents=True, exist_ok=True)
    save_manifest(path, manifest)
    done = {s["file"] for s in manifest["shards"] + manifest["text_shards"]}
    mine = [i for i in range(process, len(files), processes) if f"images-{i:05d}.npy" not in done]
    log(f"tokenising {len(mine)} of {len(files)} input files into {folder} (process {process} of {processes})")
    with ThreadPoolExecutor(cfg.workers) as pool, tqdm(unit=" pictures", desc="tokenise", disable=not mine) as bar:
        for i in mine:
            rows, lengths, skipped = encode_file(vq, tokenizer, files[i], cfg, pool, bar)
            write_file(folder / f"images-{i:05d}.npy", lambda f: np.save(f, rows))
            manifest["shards"].append({"file": f"images-{i:05d}.npy", "input": describe(files[i]),
                                       "examples": len(rows), "caption_lengths": lengths, "skipped": skipped})
            save_manifest(path, manifest)
    lines = data.text_lines(text) if text else iter(())
    for i in itertools.count():  # every process reads all the lines, and tokenises its own shard_size at a time
        group = list(itertools.islice(lines, cfg.shard_size))
        if not group:
            break
        if i % processes == process and f"text-{i:05d}.npy" not in done:
            ids = np.stack([tokenizer.encode(line) for line in group]).astype(np.uint16)  # (n, text_tokens)
            write_file(folder / f"text-{i:05d}.npy", lambda f: np.save(f, ids))
            manifest["text_shards"].append({"file": f"text-{i:05d}.npy", "examples": len(ids)})
            save_manifest(path, manifest)
    manifest["complete"] = True
    save_manifest(path, manifest)
    skipped = [s for shard in manifest["shards"] for s in shard["skipped"]]
    log(f"{sum(s['examples'] for s in manifest['shards'])} pictures in {len(manifest['shards'])} shard(s); "
        f"skipped {len(skipped)} (listed in {path})" + "".join(f"; {s}" for s in skipped[:3]))
    return manifest


def open_shards(folder, vq_path, process=0, processes=1):
    """This process's finished shards, memory-mapped -> (the text tokenizer, with the caption-length counts of its
    shards; image shards uint16 (n_s, image_tokens + text_tokens); text shards uint16 (n_s, text_tokens), or the
    captions of the image shards when there is no text corpus)."""
    path = manifest_path(folder, process, processes)
    if not path.exists():
        raise FileNotFoundError(f"no {path}: tokenise first (python shards.py --out {folder} ...)")
    manifest = json.loads(path.read_text())
    if not manifest["complete"]:
        raise ValueError(f"the tokenisation into {folder} did not finish: run it again to continue")
    if manifest["vqgan_sha256"] != file_hash(vq_path):
        raise ValueError(f"{folder} was tokenised with another VQGAN than {vq_path} (sha256 differs): refusing to mix "
                         "their codes; tokenise again into another folder")
    images = [np.load(Path(folder) / s["file"], mmap_mode="r") for s in manifest["shards"] if s["examples"]]
    if not images:
        raise ValueError(f"the shards of process {process} in {folder} hold no pictures (the skipped ones: {path})")
    texts = [np.load(Path(folder) / s["file"], mmap_mode="r") for s in manifest["text_shards"]]
    if manifest["text"] and not texts:
        raise ValueError(f"process {process} has no lines of {manifest['text']}: give more text or fewer processes")
    texts = texts or [s[:, -manifest["text_tokens"]:] for s in images]  # no corpus: the captions are the text
    lengths = np.sum([s["caption_lengths"] for s in manifest["shards"]], axis=0).tolist()
    return data.Tokenizer(tuple(manifest["words"]), manifest["text_tokens"], tuple(lengths)), images, texts


# ----------------------------------------------------------------------------------------------
# Benchmark: memory flat in dataset size, and what reading the shards costs a train step


def peak_rss_mb():
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux reports KiB


def bench_one(n, folder, vq_path, steps=50):
    """Render n shapes pictures as .tar shards, tokenise them, train `steps` steps from the shards, each beside a step
    on a batch already in memory: print the times and the peak RSS of this process."""
    import jax
    import train
    import upgen
    folder, cfg = Path(folder), ShardsConfig()
    start = time.perf_counter()
    render_shapes(folder / "tars", n, 0, cfg)
    rendered = time.perf_counter()
    tokenise(f"{folder}/tars/shapes-{{00000..{-(-n // cfg.shard_size) - 1:05d}}}.tar", vq_path, folder / "shards", cfg)
    tokenised = time.perf_counter()
    print(f"{n:,} pictures: rendered as .tar in {rendered - start:.0f} s, tokenised at "
          f"{n / (tokenised - rendered):.0f} pictures/s; peak RSS {peak_rss_mb():.0f} MB", flush=True)
    tokenizer, *corpus = open_shards(folder / "shards", vq_path)
    vq_cfg = vqgan.load_vqgan(vq_path).cfg
    mcfg = upgen.UPGenConfig(image_codes=vq_cfg.codebook_size, image_tokens=vq_cfg.tokens_per_side ** 2,
                             text_vocab=tokenizer.vocab_size, text_tokens=tokenizer.length)
    tcfg, mesh = train.TrainConfig(), train.make_mesh()
    optimizer = train.make_optimizer(tcfg)
    model, opt_state = train.replicate(train.init_state(mcfg, optimizer, key=jax.random.key(0)), mesh)
    counts = train.kind_counts(tcfg.batch, tcfg.mix)
    held = train.local_batch(corpus, 0, counts, mcfg, seed=0)  # host arrays, built once
    times = []  # per step: seconds reading a batch from the shards, stepping on it, stepping on the held batch
    for step in range(steps + 2):  # the first two compile and warm up; the two kinds of step alternate
        start = time.perf_counter()
        fresh = train.local_batch(corpus, step, counts, mcfg, seed=0)
        times.append([time.perf_counter() - start])
        for batch in (fresh, held):
            start = time.perf_counter()
            tokens, kinds = train.global_batch(mesh, *batch)  # a new device copy each time: the step donates it
            model, opt_state, loss, _ = train.train_step(model, opt_state, tokens, kinds, jax.numpy.float32(tcfg.lr),
                                                         jax.random.key(step), optimizer, mesh)
            loss.block_until_ready()
            times[-1].append(time.perf_counter() - start)
    loading, from_shards, in_memory = np.median(times[2:], axis=0)
    loaded = loading + from_shards
    print(f"{n:,} pictures: train step {loaded * 1e3:.1f} ms with reading the shards ({loading * 1e3:.2f} ms of it "
          f"building the batch) vs {in_memory * 1e3:.1f} ms on a batch in memory ({loaded / in_memory - 1:+.1%}); "
          f"peak RSS {peak_rss_mb():.0f} MB", flush=True)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    d = ShardsConfig()
    p.add_argument("--images", default="", help="a folder of a.jpg + a.txt, a .tar, or comma-separated .tar globs or "
                                                "brace patterns ('dump/{00000..00099}.tar')")
    p.add_argument("--text", default="", help="unpaired text: a .txt file or folder, one document per line")
    p.add_argument("--vqgan", default="checkpoints/shapes/vqgan.eqx", help="the frozen image tokenizer (.eqx)")
    p.add_argument("--out", default="", help="folder of the token shards and manifests (train.py --shards)")
    p.add_argument("--process", type=int, default=0, help="this process's index: it tokenises input files i with "
                                                          "i mod --processes == --process")
    p.add_argument("--processes", type=int, default=1, help="processes (hosts) that will train on the shards")
    p.add_argument("--shard-size", type=int, default=d.shard_size, help="pictures per shard of a folder; text lines")
    p.add_argument("--chunk", type=int, default=d.chunk, help="pictures per VQGAN call")
    p.add_argument("--workers", type=int, default=d.workers, help="picture-decoding threads")
    p.add_argument("--vocab-lines", type=int, default=d.vocab_lines, help="captions (and text lines) counted for "
                                                                          "the word vocabulary")
    p.add_argument("--max-words", type=int, default=d.max_words, help="words in the vocabulary")
    p.add_argument("--text-tokens", type=int, default=d.text_tokens, help="text ids per example (train.py's too)")
    p.add_argument("--bench", action="store_true", help="time and measure memory at --bench-sizes shapes pictures, "
                                                        "each in its own process")
    p.add_argument("--bench-sizes", type=int, nargs="+", default=(20_000, 200_000), help="pictures per --bench run")
    p.add_argument("--bench-one", type=int, default=0, help="what --bench runs in a subprocess: one size, in --out")
    args = p.parse_args(argv)
    try:
        if args.bench:
            for n in args.bench_sizes:
                with tempfile.TemporaryDirectory() as tmp:
                    command = [sys.executable, __file__, "--bench-one", str(n), "--out", tmp, "--vqgan", args.vqgan]
                    if subprocess.run(command).returncode:
                        raise ValueError(f"the {n:,}-picture benchmark failed")
        elif args.bench_one:
            bench_one(args.bench_one, args.out, args.vqgan)
        else:
            if not args.images or not args.out:
                raise ValueError("give --images and --out (or --bench)")
            cfg = ShardsConfig(args.shard_size, args.chunk, args.workers, args.vocab_lines, args.max_words,
                               args.text_tokens)
            tokenise(args.images, args.vqgan, args.out, cfg, text=args.text, process=args.process,
                     processes=args.processes)
    except (ValueError, OSError) as e:
        sys.exit(f"error: {e}")


if __name__ == "__main__":
    main()
