"""--resume: the state a run continues from, the flags a resumed run may change, and what a stopped run says.

A run's states are out/state_<step>.eqx (train.save_state). --resume loads the newest one that reads back whole,
naming any newer one it skips and why; a temporary file left by a killed save is removed, as no other process
writes states into a folder that the run has locked (cluster.run_lock).
Read next: logbook.py.
"""
from pathlib import Path

# A resumed run takes these flags of its own command line, given or not (how this invocation runs), and these when
# given, applied and logged (how long the run is, what it logs and keeps, the optimizer's knobs: a diverged run
# resumes from its last good state with a smaller --lr). Any other flag given (the model, the objective, the data,
# the batch, the seed) must equal the saved run's.
INVOCATION = {"out", "resume", "stop_after", "verify_shards", "tpu", "distributed", "coordinator", "processes",
              "process_id", "peer_timeout"}
MAY_CHANGE = {"steps", "keep", "save_every", "log_every", "samples", "lr", "warmup", "weight_decay", "clip", "accum",
              "remat"}


def state_files(out: Path):
    return sorted(Path(out).glob("state_*.eqx"), key=lambda p: int(p.stem.split("_")[1]))


def start(out: Path, resume: bool, load, log):
    """-> the newest readable state of out as load(path) gives it, with resume; None for a fresh run. Raises a
    one-line error for a fresh run into a folder of states, or --resume with no state that reads back."""
    for stale in out.glob("state_*.eqx.*.tmp"):  # a save killed mid-write; the lock says no live process owns it
        stale.unlink(missing_ok=True)  # every host of a run looks; one removes it
        log(f"removed {stale.name}, left by a save that was killed")
    files = state_files(out)
    if not resume:
        if files:
            raise ValueError(f"{out} holds {files[-1].name} of an earlier run: --resume continues it, or give another "
                             "--out")
        return None
    for path in reversed(files):
        try:
            saved = load(path)
        except (ValueError, OSError, KeyError, TypeError) as e:
            log(f"--resume skips {path.name}: {str(e).splitlines()[0][:200]}")
            continue
        log(f"resuming {path.name}")
        return saved
    why = "none reads back whole" if files else "there is none"
    raise ValueError(f"--resume: no state_<step>.eqx in {out} to continue ({why}); run without --resume to start")


def resumed(values: dict, given: set, header: dict, log) -> dict:
    """The flags' values for --resume: the saved run's (its state file's header), with this command line's INVOCATION
    flags and the MAY_CHANGE flags it gives. A one-line error names every other given flag that differs."""
    saved = {**header["upgen"], **header["train"], **header["run"], **header["data"]}
    text = lambda v: " ".join(map(str, v)) if isinstance(v, (list, tuple)) else str(v)  # noqa: E731
    clash = [f"--{k.replace('_', '-')} {text(values[k])} (saved: {text(saved[k])})" for k in sorted(given)
             if k in saved and k not in INVOCATION | MAY_CHANGE and text(values[k]) != text(saved[k])]
    if clash:
        raise ValueError(f"--resume continues the saved run's model, objective and data, but {', '.join(clash)}: "
                         "drop these flags, or start a new run with another --out")
    changed = [f"--{k.replace('_', '-')} {saved[k]} -> {values[k]}" for k in sorted(given & MAY_CHANGE)
               if text(values[k]) != text(saved[k])]
    log(f"resuming at step {header['step']}" + (f"; changed: {', '.join(changed)}" if changed else ""))
    return {**values, **saved, **{k: values[k] for k in INVOCATION | (given & MAY_CHANGE)}}


def diverged(out: Path, step: int, loss: float, grad_norm: float) -> str:
    """The one line that stops a run whose loss or gradient is not finite, naming its newest good state."""
    newest = state_files(out)[-1].name if state_files(out) else None
    return (f"training diverged by step {step} (loss {loss:.4g}, gradient norm {grad_norm:.4g}); nothing saved from "
            "these weights. " + (f"Newest good state: {newest}; --resume --lr SMALLER continues from it" if newest
                                 else "No state was saved before it: start again with a smaller --lr"))
