"""Keeping every process's mosaic identical under ``torch.distributed``.

Every rank projects with the same seeded generator from the same (DDP-synchronized) weights,
so the ranks already agree; broadcasting rank 0's projected parameters afterwards makes that
a guarantee rather than an assumption (it costs one broadcast of the parameters per projection).
"""

from __future__ import annotations

import torch
import torch.distributed as dist


def is_distributed() -> bool:
    return dist.is_available() and dist.is_initialized()


def rank() -> int:
    return dist.get_rank() if is_distributed() else 0


def world_size() -> int:
    return dist.get_world_size() if is_distributed() else 1


def collective_device() -> torch.device:
    """Where the tensors of a collective must live: this process's GPU under nccl, else the CPU."""
    if dist.get_backend() == "nccl":
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


def barrier() -> None:
    """Wait for every rank (no-op when not distributed)."""
    if is_distributed():
        dist.barrier()


def sum_over_ranks(values: list[float]) -> list[float]:
    """Every rank's ``values`` summed element-wise over the ranks (unchanged when not distributed)."""
    if not is_distributed():
        return list(values)
    total = torch.tensor(values, dtype=torch.float64, device=collective_device())
    dist.all_reduce(total)
    return total.tolist()


def broadcast_parameters_(parameters: list[torch.Tensor], src: int = 0) -> None:
    """Overwrite every rank's ``parameters`` with rank ``src``'s values (no-op when not distributed)."""
    if not is_distributed():
        return
    with torch.no_grad():
        for param in parameters:
            dist.broadcast(param.data, src=src)


def parameters_checksum(parameters: list[torch.Tensor]) -> torch.Tensor:
    """A float64 fingerprint of the parameters' values: ``(2,)`` = (sum, sum of |x|·position weights)."""
    flat = torch.cat([p.detach().reshape(-1).double().cpu() for p in parameters])
    position = torch.arange(1, len(flat) + 1, dtype=torch.float64)
    return torch.stack([flat.sum(), (flat.abs() * position).sum()])


def checksums_of_ranks(parameters: list[torch.Tensor]) -> list[list[float]]:
    """Every rank's :func:`parameters_checksum`, in rank order (one entry when not distributed)."""
    mine = parameters_checksum(parameters)
    if not is_distributed():
        return [mine.tolist()]
    mine = mine.to(collective_device())
    gathered = [torch.empty_like(mine) for _ in range(dist.get_world_size())]
    dist.all_gather(gathered, mine)
    return [checksum.tolist() for checksum in gathered]


def same_on_all_ranks(parameters: list[torch.Tensor]) -> bool:
    """True when every rank holds bit-identical fingerprints of ``parameters``."""
    checksums = checksums_of_ranks(parameters)
    return all(checksum == checksums[0] for checksum in checksums)
