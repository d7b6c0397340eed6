"""The checkpoints of a training run: written atomically with the SHA256 of their files, pruned to the newest few,
found again for an exact resume (same settings and inputs, an unfinished run, files that read back), restored
into the model, the optimiser, the scheduler and the RNGs, and the best weights kept beside them.

A checkpoint holds everything a resume needs to continue *exactly*: weights (safetensors), optimiser and
scheduler state, RNG states and the step, which is also the data position (see ``SentenceStream``), plus the
CSV logs up to that step. ``checkpoint.json`` (written last) records the SHA256 of its other files; a checkpoint
whose files do not match it (garbled on disk, size unchanged) counts as unreadable, like one whose files do not
parse. :class:`jtcse.training.trainer.Trainer` drives them.
"""

from __future__ import annotations

import json
import logging
import random
import shutil
from pathlib import Path

import torch
from safetensors.torch import load_file, load_model, save_model

from jtcse.errors import UserError
from jtcse.formats import sha256_file
from jtcse.io import atomic_directory, atomic_write_json, naming_a_full_disk
from jtcse.training import distributed

log = logging.getLogger(__name__)

CHECKPOINT_PREFIX = "step-"
RUN_FILE = "run.json"  # fingerprint of the settings and inputs the checkpoints belong to
BEST_DIR = "best"  # the best weights so far, the source of the output folder on resume
#: The SHA256 of every other file of a checkpoint, written last; checked before a resume reads anything.
CHECKPOINT_MANIFEST = "checkpoint.json"


def checkpoint_path(checkpoint_dir: Path, step: int) -> Path:
    return checkpoint_dir / f"{CHECKPOINT_PREFIX}{step:08d}"


def latest_checkpoint(checkpoint_dir: Path) -> Path | None:
    if not checkpoint_dir.is_dir():
        return None
    found = sorted(
        p
        for p in checkpoint_dir.glob(f"{CHECKPOINT_PREFIX}*")
        if (p / "trainer_state.pt").is_file() and (p / "model.safetensors").is_file()
    )
    return found[-1] if found else None


class CheckpointDamaged(Exception):
    """A checkpoint file does not match the digest recorded when the checkpoint was written (or is missing)."""


def record_checkpoint_digests(folder: Path) -> None:
    """Write ``checkpoint.json``: the SHA256 of every file of the (complete, not yet published) checkpoint."""
    files = {p.name: sha256_file(p) for p in sorted(folder.iterdir()) if p.is_file() and p.name != CHECKPOINT_MANIFEST}
    atomic_write_json(folder / CHECKPOINT_MANIFEST, {"format": 1, "files": files})


def verify_checkpoint_digests(checkpoint: Path) -> None:
    """Raise :class:`CheckpointDamaged` naming the first file whose content differs from its recorded SHA256."""
    manifest = checkpoint / CHECKPOINT_MANIFEST
    try:
        recorded = json.loads(manifest.read_text(encoding="utf-8"))["files"]
        if not isinstance(recorded, dict) or not {"model.safetensors", "trainer_state.pt"} <= recorded.keys():
            raise ValueError("the weights or the trainer state are not listed")
    except FileNotFoundError:
        raise CheckpointDamaged(f"{manifest} is missing (the digests of the checkpoint's files)") from None
    except (OSError, ValueError, KeyError, TypeError) as err:
        raise CheckpointDamaged(f"{manifest}: not a checkpoint manifest ({type(err).__name__}: {err})") from None
    for name, digest in sorted(recorded.items()):
        path = checkpoint / name
        if not path.is_file():
            raise CheckpointDamaged(f"{path} is missing")
        if sha256_file(path) != digest:
            raise CheckpointDamaged(f"{path}: content differs from the SHA256 recorded in {CHECKPOINT_MANIFEST}")


def read_checkpoint_files(checkpoint: Path) -> None:
    """Check a checkpoint's files against their recorded digests, then read its weights and trainer state
    whole; raises whatever a damaged file raises."""
    verify_checkpoint_digests(checkpoint)
    load_file(str(checkpoint / "model.safetensors"))
    torch.load(checkpoint / "trainer_state.pt", weights_only=True)


def save_checkpoint(
    checkpoint_dir: Path,
    step: int,
    model: torch.nn.Module,
    optimizer,
    scheduler,
    *,
    best: tuple[float, int],
    initial: float,
    logs: list[Path],
    keep: int,
) -> None:
    """Write the checkpoint of ``step`` (weights, trainer state, RNGs, copies of the CSV ``logs``, digests last)
    atomically, then keep only the newest ``keep``. Under torchrun every rank calls it; rank 0 writes."""
    # Each GPU's dropout generator differs under DDP: every rank's state is kept, rank 0 writes them.
    rank_cuda_rng = (
        distributed.all_gather_object(torch.cuda.get_rng_state())
        if distributed.world_size() > 1 and torch.cuda.is_available()
        else []
    )
    if not distributed.is_main():
        distributed.barrier()
        return
    target = checkpoint_path(checkpoint_dir, step)
    with naming_a_full_disk(target), atomic_directory(target) as tmp:  # a full disk: one line, nothing torn
        save_model(model, str(tmp / "model.safetensors"))
        for csv_log in logs:
            if csv_log.is_file():
                shutil.copy2(csv_log, tmp / csv_log.name)
        with (tmp / "trainer_state.pt").open("wb") as state_file:  # a file object: write errors keep errno
            torch.save(
                {
                    "step": step,
                    "best_metric": best[0],
                    "best_step": best[1],
                    "initial_metric": initial,
                    "optimizer": optimizer.state_dict(),
                    "scheduler": scheduler.state_dict(),
                    "torch_rng": torch.get_rng_state(),
                    "python_rng": random.getstate(),
                    "cuda_rng": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
                    "world_size": distributed.world_size(),
                    "rank_cuda_rng": rank_cuda_rng,
                },
                state_file,
            )
        record_checkpoint_digests(tmp)
    for path in sorted(checkpoint_dir.glob(f"{CHECKPOINT_PREFIX}*"))[:-keep]:
        shutil.rmtree(path, ignore_errors=True)
    log.info("checkpoint step %d -> %s", step, checkpoint_dir)
    distributed.barrier()


def restore_checkpoint(
    checkpoint: Path, model: torch.nn.Module, optimizer, scheduler, device: torch.device
) -> tuple[int, tuple[float, int], float]:
    """Load ``checkpoint`` into the model, optimiser, scheduler and RNGs; returns (step, (best metric, its step),
    initial metric)."""
    load_model(model, str(checkpoint / "model.safetensors"), device=str(device))
    state = torch.load(checkpoint / "trainer_state.pt", weights_only=True)
    optimizer.load_state_dict(state["optimizer"])
    scheduler.load_state_dict(state["scheduler"])
    torch.set_rng_state(state["torch_rng"])
    random.setstate(state["python_rng"])
    if state["cuda_rng"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda_rng"])
    if state.get("rank_cuda_rng") and state.get("world_size") == distributed.world_size():
        torch.cuda.set_rng_state(state["rank_cuda_rng"][distributed.rank()])
    return state["step"], (state["best_metric"], state["best_step"]), state["initial_metric"]


def resumable_checkpoint(checkpoint_dir: Path, fingerprint: dict, steps: int, desc: str) -> Path | None:
    """The latest readable checkpoint of an unfinished run (of ``steps``) with the same settings and inputs."""
    stored = checkpoint_dir / RUN_FILE
    latest = latest_checkpoint(checkpoint_dir)
    if latest is None or not stored.is_file():
        return None
    if json.loads(stored.read_text(encoding="utf-8")) != json.loads(json.dumps(fingerprint)):
        log.warning("%s: checkpoints in %s belong to other settings or inputs; starting afresh", desc, checkpoint_dir)
        return None
    if int(latest.name.removeprefix(CHECKPOINT_PREFIX)) >= steps:
        log.info("%s: the run in %s had finished; training afresh", desc, checkpoint_dir)
        return None
    return readable_checkpoint(checkpoint_dir, desc)


def readable_checkpoint(checkpoint_dir: Path, desc: str) -> Path:
    """The newest checkpoint whose files read back; unreadable newer ones are removed with a warning."""
    candidates = sorted((p for p in checkpoint_dir.glob(f"{CHECKPOINT_PREFIX}*") if p.is_dir()), reverse=True)
    unreadable: list[tuple[Path, str]] = []
    for candidate in candidates:
        try:
            read_checkpoint_files(candidate)
        except Exception as err:  # a damaged file raises anything from EOFError to SafetensorError
            reason = f"{type(err).__name__}: {str(err).splitlines()[0] if str(err) else 'unreadable'}"
            unreadable.append((candidate, reason))
            log.warning("%s: checkpoint %s is unreadable (%s); trying the previous one", desc, candidate, reason)
            continue
        for bad, _ in unreadable:  # or a later save would prune the good ones and keep these
            shutil.rmtree(bad, ignore_errors=True)
        if unreadable:
            log.warning("%s: resuming from the previous checkpoint %s", desc, candidate.name)
        return candidate
    latest, reason = unreadable[0]
    raise UserError(
        f"{checkpoint_dir}: no readable checkpoint to resume from ({latest.name}: {reason}); "
        f"start afresh with --no-resume, or delete {checkpoint_dir}"
    )


def start_afresh(checkpoint_dir: Path, fingerprint: dict) -> None:
    """Remove the checkpoints of an earlier run and record the settings and inputs of this one."""
    shutil.rmtree(checkpoint_dir, ignore_errors=True)
    atomic_write_json(checkpoint_dir / RUN_FILE, fingerprint)


def publish_best(checkpoint_dir: Path, output_dir: Path) -> None:
    """The output folder becomes a copy of the best weights so far (atomically)."""
    with naming_a_full_disk(output_dir), atomic_directory(output_dir) as tmp:
        shutil.copytree(checkpoint_dir / BEST_DIR, tmp, dirs_exist_ok=True)
