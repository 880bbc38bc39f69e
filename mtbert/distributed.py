"""Data-parallel training across processes started by torchrun: who this process is, its share of
each batch, and the few collectives the training loop needs.

Every rank builds the same seeded schedule and batches (`mtbert.train.fit` derives them from
(seed, epoch)) and takes its contiguous slice of each global batch's rows (`Dist.shard`). It
weights the loss on its rows by (local rows / global rows), so the SUM over ranks of the local
gradients is the gradient of the global batch mean, the one a single process computes; a rank
whose slice is empty still joins every collective, with a zero gradient. The model stays
unwrapped (no DistributedDataParallel and its hooks): `mtbert.train.data_parallel_step`
all-reduces one flat buffer per optimizer step. `train.batch_size` stays the global batch: W ranks
take the optimizer steps of one process, each on about batch_size / W rows.

Communication per optimizer step: one all-reduce of P x 4 bytes (P trainable parameters, fp32),
or K x P x 4 bytes with PCGrad (K tasks in the step: the projection needs every task's global
gradient), plus one float per parameter tensor (which ones got a gradient) and one per logged
loss. MiniLM (22.7M parameters): 91 MB per step, 272 MB with PCGrad over the three tasks; a ring
all-reduce sends and receives about 2 (W - 1) / W times that per rank. Besides: an all-reduce of
one float per step (the ranks agree whether to stop on SIGTERM/SIGINT), a barrier at each
checkpoint, and at the start a few small all-reduces (same settings and rows, same checkpoint)
and one broadcast of rank 0's weights.

What is exact: with dropout off (`model.encoder_dropout=0.0 model.head_dropout=0.0`) W ranks reach
the parameters of one process on the same global batches, up to float summation order (PCGrad
included: every rank projects the same all-reduced per-task gradients with the same seeded
order; the largest differences are in the attention key biases, whose gradient is zero up to
rounding, which Adam normalises into steps of either sign). With dropout on, each rank draws its own masks for its rows, not the ones a single
process would draw for them: an equally valid run, not the same numbers. SMART's adversarial
term (`train.smart.enabled`) is not exact either: its starting noise is random like dropout, and
its ascent step follows the gradient of the *local* batch mean, which is 1/B_local rather than
1/B_global times the per-row gradient, so the mix of noise and gradient before the per-token
normalisation differs (the final divergence is a per-row mean, so its weighting is exact). The
Bregman term is exact without dropout: its EMA teacher is updated after the same optimizer step
on every rank and stays identical.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import re
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass

import torch
import torch.distributed as tdist
from torch import Tensor

BACKENDS = {"cpu": "gloo", "cuda": "nccl"}
_SOURCE_PREFIX = re.compile(r"^\[[^\]]*\.(?:cc|cpp|h)(?::\d+)?\]\s*")  # gloo's "[.../pair.cc:537] "


class RankLost(RuntimeError):
    """A collective failed: another rank died, or its node went away (torchrun ends the job)."""


@dataclass(frozen=True)
class Dist:
    """This process's place among the ranks of a data-parallel job (a no-op for one process).

    Attributes:
        rank: 0..world_size - 1; rank 0 writes the files and logs.
        world_size: number of processes training the one model.
        local_rank: index among the ranks of this node (its GPU).
        device: where the collectives' small tensors live (the training device).
    """

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    device: str = "cpu"

    @classmethod
    def from_env(cls, env: Mapping[str, str]) -> Dist:
        """The ranks torchrun describes in `env` (RANK, WORLD_SIZE, LOCAL_RANK); one process if
        they are absent. The caller passes `os.environ`: the core reads no environment itself."""
        world = int(env.get("WORLD_SIZE", "1"))
        rank, local = int(env.get("RANK", "0")), int(env.get("LOCAL_RANK", "0"))
        if world < 1 or not 0 <= rank < world or local < 0:
            raise ValueError(f"bad torchrun environment: RANK={rank} WORLD_SIZE={world} "
                             f"LOCAL_RANK={local}")
        return cls(rank, world, local)

    def on(self, device: torch.device | str) -> Dist:
        return dataclasses.replace(self, device=str(device))

    @property
    def enabled(self) -> bool:
        """Whether there are other ranks (world size > 1)."""
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def shard(self, rows: Sequence[int]) -> list[int]:
        """This rank's contiguous slice of a global batch's rows; the first len(rows) % world_size
        ranks get one row more, and a rank beyond len(rows) gets none."""
        base, extra = divmod(len(rows), self.world_size)
        start = self.rank * base + min(self.rank, extra)
        return list(rows[start:start + base + (self.rank < extra)])

    def all_reduce_(self, tensor: Tensor, op: str = "sum") -> Tensor:
        """Reduce `tensor` in place over the ranks (op: sum, max, min); returns it."""
        if self.enabled:
            ops = {"sum": tdist.ReduceOp.SUM, "max": tdist.ReduceOp.MAX, "min": tdist.ReduceOp.MIN}
            with _collective("all_reduce"):
                tdist.all_reduce(tensor, op=ops[op])
        return tensor

    def all_reduce_flat(self, tensors: Sequence[Tensor]) -> list[Tensor]:
        """Sum `tensors` (one dtype and device) over the ranks in ONE all-reduce of a flat buffer
        (one collective's latency instead of one per tensor); returns them reduced, as views of
        that buffer in their shapes. One process: `tensors` as they are."""
        if not self.enabled:
            return list(tensors)
        buffer = self.all_reduce_(torch.cat([t.reshape(-1) for t in tensors]))
        out, offset = [], 0
        for tensor in tensors:
            out.append(buffer[offset:offset + tensor.numel()].view_as(tensor))
            offset += tensor.numel()
        return out

    def barrier(self) -> None:
        if self.enabled:
            with _collective("barrier"):
                tdist.barrier()

    def broadcast_(self, tensors: Iterable[Tensor], src: int = 0) -> None:
        """Overwrite `tensors` with rank `src`'s values, in place."""
        if self.enabled:
            with _collective("broadcast"), torch.no_grad():
                for tensor in tensors:
                    tdist.broadcast(tensor, src)

    def any(self, flag: bool) -> bool:
        """Whether `flag` is true on some rank (every rank gets the same answer)."""
        return bool(self.all_reduce_(torch.tensor([float(flag)], device=self.device), "max").item())

    def spread(self, value: int) -> tuple[int, int]:
        """The smallest and largest of `value` over the ranks."""
        pair = torch.tensor([-value, value], dtype=torch.int64, device=self.device)
        self.all_reduce_(pair, "max")
        return -int(pair[0]), int(pair[1])

    def same_everywhere(self, text: str) -> bool:
        """Whether every rank passed the same `text` (compared by its sha256)."""
        digest = hashlib.sha256(text.encode()).digest()
        words = torch.frombuffer(bytearray(digest), dtype=torch.int64).to(self.device)
        low, high = words.clone(), words.clone()
        self.all_reduce_(low, "min")
        self.all_reduce_(high, "max")
        return torch.equal(low, high)


SINGLE = Dist()


@contextlib.contextmanager
def _collective(name: str) -> Iterator[None]:
    try:
        yield
    except RuntimeError as err:  # gloo and NCCL raise RuntimeError (DistBackendError) on a lost peer
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        first = _SOURCE_PREFIX.sub("", first).split(". ")[0]  # gloo adds advice and an emoji
        raise RankLost(f"{name} failed: {first}") from err


@contextlib.contextmanager
def process_group(dist: Dist) -> Iterator[None]:
    """Join the job's process group (gloo on CPU, NCCL on CUDA; torchrun's MASTER_ADDR and
    MASTER_PORT) for the duration; nothing for one process."""
    if not dist.enabled:
        yield
        return
    device = torch.device(dist.device)
    if device.type == "cuda":
        torch.cuda.set_device(device)
    if device.type not in BACKENDS:
        raise ValueError(f"data-parallel training runs on {' or '.join(BACKENDS)}, not {device.type}")
    tdist.init_process_group(BACKENDS[device.type], rank=dist.rank, world_size=dist.world_size)
    try:
        yield
    finally:
        with contextlib.suppress(RuntimeError):  # after a lost rank there may be nothing to close
            tdist.destroy_process_group()
