"""Data-parallel training on one machine: one process per GPU (or per CPU worker under gloo), torch DDP.

Every process reads the same global batch of ``batch_size`` sentences from the seeded stream and encodes its
own contiguous slice; :func:`gather_rows` then concatenates the slices of all processes with an autograd-aware
all-gather, so the in-batch negatives span the whole global batch, exactly as in a one-process run. Each
process computes the full loss on the gathered rows; the all-gather's backward sums the world's gradients
into each slice and DDP averages the parameter gradients, which together give the one-process gradient.
Rank 0 alone evaluates, logs and writes models and checkpoints.

Outside ``torchrun`` (no ``WORLD_SIZE`` in the environment) every function here is a no-op, so the library
trains in-process exactly as before: Prefect, Optuna and the tests call the stages directly.
"""

from __future__ import annotations

import datetime
import logging
import os
import sys
from collections.abc import Sequence

import torch
import torch.distributed as dist

from jtcse.errors import UserError

log = logging.getLogger(__name__)


def world_size() -> int:
    return dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1


def rank() -> int:
    return dist.get_rank() if dist.is_available() and dist.is_initialized() else 0


def is_main() -> bool:
    return rank() == 0


def launched_by_torchrun() -> bool:
    return int(os.environ.get("WORLD_SIZE", "1")) > 1


def setup(device_setting: str) -> torch.device | None:
    """Join the process group torchrun describes in the environment and return this process's device.

    Returns None outside torchrun. NCCL on CUDA (one GPU per local rank), gloo on CPU.
    """
    if not launched_by_torchrun():
        return None
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    use_cuda = device_setting != "cpu" and torch.cuda.is_available()
    if device_setting == "cuda" and not torch.cuda.is_available():
        raise UserError("runtime.device is 'cuda' but torch sees no CUDA device; use 'auto' or 'cpu'")
    if use_cuda:
        if local_rank >= torch.cuda.device_count():
            raise UserError(
                f"runtime.nproc_per_node asks for rank {local_rank} but only "
                f"{torch.cuda.device_count()} CUDA devices are visible"
            )
        torch.cuda.set_device(local_rank)
    if not dist.is_initialized():
        dist.init_process_group("nccl" if use_cuda else "gloo", timeout=datetime.timedelta(minutes=30))
        log.info("rank %d/%d joined the %s process group", dist.get_rank(), dist.get_world_size(), dist.get_backend())
    return torch.device("cuda", local_rank) if use_cuda else torch.device("cpu")


def shard_rows(tensor: torch.Tensor) -> torch.Tensor:
    """This process's contiguous block of rows (all of them outside torchrun)."""
    world = world_size()
    if world == 1:
        return tensor
    rows = tensor.shape[0]
    if rows % world:
        raise ValueError(
            f"a batch of {rows} sentences does not split over {world} training processes: "
            "batch_size must be divisible by runtime.nproc_per_node"
        )
    size = rows // world
    return tensor[rank() * size : (rank() + 1) * size]


def gather_rows(tensor: torch.Tensor) -> torch.Tensor:
    """Concatenate every process's rows in rank order, keeping the gradient path to this process's rows."""
    if world_size() == 1:
        return tensor
    from torch.distributed.nn.functional import all_gather

    return torch.cat(all_gather(tensor.contiguous()), dim=0)


def broadcast_object(value):
    """Rank 0's value on every process (decisions such as 'resume from this checkpoint' must agree)."""
    if world_size() == 1:
        return value
    box = [value]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def all_gather_object(value) -> list:
    if world_size() == 1:
        return [value]
    out = [None] * world_size()
    dist.all_gather_object(out, value)
    return out


def barrier() -> None:
    if world_size() > 1:
        dist.barrier()


def wrap(module: torch.nn.Module, device: torch.device) -> torch.nn.Module:
    """DDP around the objective when there are several processes; the module itself otherwise."""
    if world_size() == 1:
        return module
    from torch.nn.parallel import DistributedDataParallel

    # A checkpoint's pooler is computed by the HF forward but unused by some objectives (SimCSE on 'cls').
    return DistributedDataParallel(
        module, device_ids=[device.index] if device.type == "cuda" else None, find_unused_parameters=True
    )


def shutdown() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def relaunch(nproc_per_node: int, argv: Sequence[str]) -> int:
    """Run ``python -m jtcse <argv>`` (the ``jtcse`` command) as ``nproc_per_node`` processes under torchrun and
    wait for them."""
    from torch.distributed.run import get_args_parser, run

    args = get_args_parser().parse_args(
        ["--standalone", f"--nproc-per-node={nproc_per_node}", "--module", "jtcse", *argv]
    )
    log.info("relaunching `jtcse %s` as %d processes under torchrun", " ".join(argv), nproc_per_node)
    try:
        run(args)
    except Exception as err:  # torchrun's ChildFailedError carries each rank's traceback and has printed it
        print(
            f"jtcse {argv[0]}: error: {nproc_per_node} training processes failed: {type(err).__name__}", file=sys.stderr
        )
        return 1
    return 0
