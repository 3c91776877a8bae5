"""The mean of tensors across ranks, started now and collected later, with the ranks' verdict.

One algorithm serves every exchange of DistributedLookahead (the syncs, exact or compressed, and
``reset_slow``). `start_mean` launches it without waiting (``async_op=True``) and returns an
`Exchange`; `Exchange.wait` returns the `Verdict` and, if the ranks committed, the means.
Nothing the caller owns is written, so a collective that raises (a rank died, the process
group's timeout ran out) leaves the caller's tensors as they were.

What travels: exact (``compression=None``), the tensors themselves in their own dtype; compressed
(``"bfloat16"`` or ``"int8"``), the pseudo-gradient ``delta = reference - tensor`` (reference:
the slow weights) rounded to float32 and then encoded. Per (device, wire format) bucket the values
are laid out flat (int8: each tensor starts a new block of `INT8_BLOCK` values, so a scale never
spans two tensors), zero-padded so that they cut into W equal chunks, and the mean is formed in
two phases, the sum accumulated in float32 (float64 for float64 tensors) whatever the wire dtype:

1. chunk j of every rank is sent to rank j (one ``all_to_all_single``), which decodes the W
   copies, sums them in rank order and divides by W;
2. each rank encodes its mean chunk again (exact: rounds it to the tensors' dtype) and every
   rank gathers all of them (``all_gather_single``, ``all_gather_into_tensor`` before torch
   2.13) and decodes them.

The first phase is launched by `start_mean`, the second by `Exchange.advance` (or by `wait`),
both without waiting, so that a caller that advances an exchange before waiting for it overlaps
both phases with its own work. Every rank decodes the same bytes, so the results are
bit-identical everywhere. Each phase sends
(W-1)/W of the encoded payload per rank, the same as a ring all-reduce of it. Exact float32 is
exact; a bfloat16 model's weights travel in bfloat16 (2 bytes a value) but are summed in float32,
so the only error is the final rounding of the mean to bfloat16, whatever W. ``"bfloat16"`` rounds
to nearest even; ``"int8"`` scales each block by its largest magnitude / 127 (the scale sent as
float32) and rounds to nearest, so an entry's error is at most half its block's scale per encoding.

**The verdict travels with the data.** Launched with the first phase, one small int64 all-reduce
sums, over the ranks: whether the rank could prepare its payload (a rank that failed sends zeros
and says so), a presence flag per tensor (whether it has slow weights on that rank) and, per
synced group, the number of syncs the rank has committed and the `fingerprint` of its slow
weights (two integers below 2**20), each with its square. After the first phase, every rank holds
the same sums, so every rank takes the same decision: commit only if every rank prepared its
payload, every tensor is present on all ranks or on none, and all ranks count the same syncs
(``W * sum(c^2) == sum(c)^2`` exactly when all counts are equal); the groups whose fingerprints
fail the same test hold different slow weights on some ranks (`Verdict.unsettled`). Otherwise no
rank runs the second phase. No round trip precedes the exchange.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import torch
import torch.distributed as dist
from torch import Tensor

__all__ = [
    "COMPRESSIONS",
    "INT8_BLOCK",
    "Compression",
    "Exchange",
    "Verdict",
    "decode",
    "encode",
    "fingerprint",
    "mean_of_pieces",
    "start_mean",
]

Compression = Literal["bfloat16", "int8"]
COMPRESSIONS: tuple[Compression, ...] = ("bfloat16", "int8")
INT8_BLOCK = 1024
"""Values that share one float32 scale in the int8 encoding (never across two tensors)."""

Wire = Compression | torch.dtype
"""How values travel: encoded (``"bfloat16"``, ``"int8"``) or as they are, in a dtype."""


def encode(values: Tensor, wire: Wire) -> Tensor:
    """Encode 1-D ``values`` as bytes (int8: a whole number of blocks of float32 values)."""
    if isinstance(wire, torch.dtype):
        return values.to(wire).contiguous().view(torch.uint8)
    if wire == "bfloat16":
        return values.to(torch.bfloat16).view(torch.uint8)
    blocks = values.view(-1, INT8_BLOCK)
    scales = blocks.abs().amax(dim=1) / 127.0
    scales = torch.where(scales > 0, scales, torch.ones_like(scales))
    quantized = torch.round(blocks / scales[:, None]).clamp_(-127, 127).to(torch.int8)
    return torch.cat([quantized.view(-1).view(torch.uint8), scales.view(torch.uint8)])


def decode(encoded: Tensor, n: int, wire: Wire) -> Tensor:
    """The values of ``encoded`` (the output of `encode` for ``n`` values): float32 for the
    compressions, the wire dtype otherwise."""
    if isinstance(wire, torch.dtype):
        return encoded.view(wire)
    if wire == "bfloat16":
        return encoded.view(torch.bfloat16).float()
    quantized = encoded[:n].view(torch.int8).view(-1, INT8_BLOCK)
    scales = encoded[n:].view(torch.float32)
    return (quantized.float() * scales[:, None]).view(-1)


FINGERPRINT_CHUNK = 1 << 20
"""Words that `fingerprint` reads at a time (its temporary: one float64 tensor this long)."""
_PRIME = 2**32 + 15
_ROW = 1024
_BASE = 1_000_003
_WORDS = {1: torch.int8, 2: torch.int16, 4: torch.int32, 8: torch.int32, 16: torch.int32}


def fingerprint(tensors: Sequence[Tensor], device: torch.device) -> Tensor:
    """Two int64 below 2**20 on ``device`` (not waited for), equal on two ranks whose
    ``tensors`` are bit for bit the same (same shapes and dtypes, same order).

    The bytes of each tensor are read as signed words ``b`` (its itemsize, 32 bits for wider
    dtypes) in chunks of ``FINGERPRINT_CHUNK`` words; chunk ``c`` (counted over all the tensors)
    gives ``s_c = sum_i (i + 1) b_i mod P``, ``P = 2**32 + 15`` (a prime), and
    ``h = sum_c s_c B^(C - 1 - c) mod P`` (``B = 1,000,003``, Horner's rule, ``C`` chunks). Every
    word's weight is non-zero mod ``P`` and a word changes by less than ``P``, so one changed
    word always changes ``h``, and so do two words swapped within a chunk; other changes collide
    with chance about ``1 / P``. Returned as ``h``'s low 20 bits and its high 13, so that a sum
    of squares over ``W`` ranks fits int64 for ``W < 2**23``.

    One read pass: each row of 1,024 words gives ``sum_j b_j`` and ``sum_j (j + 1) b_j`` by a
    float64 matrix product, exact since every partial sum is an integer below ``2**53``; the
    rows are combined in int64, reduced mod ``P`` before any sum could overflow.
    """
    total = torch.zeros((), dtype=torch.int64, device=device)
    weights: dict[torch.device, Tensor] = {}  # per device: columns 1 and j + 1, made once
    for tensor in tensors:
        flat = tensor.detach().reshape(-1)
        words = flat.view(_WORDS[flat.element_size()]) if flat.numel() else flat
        for start in range(0, words.numel(), FINGERPRINT_CHUNK):
            chunk = words[start : start + FINGERPRINT_CHUNK]
            n, rows = chunk.numel(), -(-chunk.numel() // _ROW)
            values = torch.empty(rows * _ROW, dtype=torch.float64, device=chunk.device)
            values[:n].copy_(chunk)
            values[n:].zero_()
            if chunk.device not in weights:
                column = torch.ones(_ROW, 2, dtype=torch.float64, device=chunk.device)
                column[:, 1] = torch.arange(1, _ROW + 1, device=chunk.device)
                weights[chunk.device] = column
            sums = (values.view(rows, _ROW) @ weights[chunk.device]).to(torch.int64)  # < 2**51
            plain, weighted = sums.unbind(dim=1)
            row_start = torch.arange(rows, device=chunk.device).mul_(_ROW)  # below 2**20
            terms = plain.remainder_(_PRIME).mul_(row_start).add_(weighted).remainder_(_PRIME)
            chunk_sum = terms.sum().remainder_(_PRIME).to(device)  # rows * P: below 2**43
            total = total.mul_(_BASE).add_(chunk_sum).remainder_(_PRIME)
    return torch.stack([total & (2**20 - 1), total >> 20])


def _accumulation_dtype(wire: Wire) -> torch.dtype:
    if isinstance(wire, torch.dtype):
        return torch.promote_types(wire, torch.float32)
    return torch.float32


def mean_of_pieces(pieces: Sequence[Tensor], n: int, wire: Wire) -> Tensor:
    """The mean of the encoded ``pieces`` (``n`` values each): decoded, summed in rank order in
    float32 (float64 for float64 values), divided by their number. Not rounded to the wire."""
    total = torch.zeros(n, dtype=_accumulation_dtype(wire), device=pieces[0].device)
    for piece in pieces:
        total += decode(piece, n, wire)
    return total / len(pieces)


@dataclass
class Verdict:
    """What every rank decided about an exchange, from the same sums."""

    world_size: int
    prepared: int
    """Ranks that prepared their payload."""
    partial: list[int] = field(default_factory=list)
    """Positions of tensors present on some ranks only."""
    history_agrees: bool = True
    """Whether all ranks count the same committed syncs in every exchanged group."""
    unsettled: list[int] = field(default_factory=list)
    """Positions of the exchanged groups whose slow weights differ on some ranks (their
    fingerprints differ)."""

    @property
    def committed(self) -> bool:
        return self.prepared == self.world_size and not self.partial and self.history_agrees


class _Bucket:
    """The tensors of one (device, wire format), laid out flat and cut into W chunks."""

    def __init__(self, positions: list[int], shapes: list[torch.Size], wire: Wire, world: int):
        self.positions, self.shapes, self.wire = positions, shapes, wire
        self.offsets: list[int] = []
        offset = 0
        for shape in shapes:
            self.offsets.append(offset)
            size = shape.numel()
            offset += -(-size // INT8_BLOCK) * INT8_BLOCK if wire == "int8" else size
        unit = world * (INT8_BLOCK if wire == "int8" else 1)
        self.length = max(unit, -(-offset // unit) * unit)
        self.chunk = self.length // world


class Exchange:
    """A mean across ranks in flight: `wait` for the verdict and the means."""

    payload_bytes: int
    """Bytes this rank contributes: the encoded payload of the first phase (a ring all-reduce of
    it sends as much per rank as the two phases) and the verdict's int64 sums."""

    def __init__(
        self,
        tensors: Sequence[Tensor],
        references: Sequence[Tensor | None],
        present: Sequence[bool],
        history: Sequence[int],
        group: dist.ProcessGroup,
        compression: Compression | None,
        fingerprinted: Sequence[Sequence[Tensor]] = (),
    ) -> None:
        self._group = group
        self._world = dist.get_world_size(group)
        self._count = len(tensors)
        self._history = len(history)
        self._fingerprinted = len(fingerprinted)
        self._buckets = _layout(tensors, compression, self._world)
        device = tensors[0].device if tensors else _group_device(group)
        self.error: Exception | None = None
        try:
            sent = [_payload(b, tensors, references, present, compression) for b in self._buckets]
            prints = [fingerprint(slows, device) for slows in fingerprinted]
        except Exception as error:  # this rank takes part with zeros and says it failed
            self.error = error
            sent = [
                torch.zeros(_encoded_length(b), dtype=torch.uint8, device=_device(tensors, b))
                for b in self._buckets
            ]
            prints = [torch.zeros(2, dtype=torch.int64, device=device) for _ in fingerprinted]
        flags = [0 if self.error is not None else 1, *map(int, present)]
        counts = list(history)
        control = torch.tensor(
            flags + counts + [c * c for c in counts], dtype=torch.int64, device=device
        )
        if prints:  # on the device, without waiting for it
            stacked = torch.cat(prints)
            control = torch.cat([control, stacked, stacked * stacked])
        self._control = control
        self._sent = sent
        self._received = [torch.empty_like(s) for s in sent]
        self._works = [dist.all_reduce(control, op=dist.ReduceOp.SUM, group=group, async_op=True)]
        self._works += [
            dist.all_to_all_single(received, buffer, group=group, async_op=True)
            for received, buffer in zip(self._received, sent, strict=True)
        ]
        self.payload_bytes = sum(s.numel() for s in sent) + control.numel() * 8
        self._outcome: Verdict | Exception | None = None  # set by advance()
        self._gathered: list[tuple[Tensor, Any]] = []  # the second phase in flight

    def verdict(self) -> Verdict:
        """Wait for the first phase and read the sums (raises if a collective failed)."""
        for work in self._works:
            work.wait()
        self._works = []
        sums = self._control.tolist()
        n, g, f = self._count, self._history, 2 * self._fingerprinted
        presence = sums[1 : 1 + n]
        counts, squares = sums[1 + n : 1 + n + g], sums[1 + n + g : 1 + n + 2 * g]
        prints, print_squares = sums[1 + n + 2 * g : 1 + n + 2 * g + f], sums[1 + n + 2 * g + f :]
        agree = [self._world * q == c * c for c, q in zip(prints, print_squares, strict=True)]
        return Verdict(
            world_size=self._world,
            prepared=sums[0],
            partial=[i for i, c in enumerate(presence) if 0 < c < self._world],
            history_agrees=all(
                self._world * q == c * c for c, q in zip(counts, squares, strict=True)
            ),
            unsettled=[i for i in range(self._fingerprinted) if not all(agree[2 * i : 2 * i + 2])],
        )

    def advance(self) -> None:
        """Wait for the first phase and launch the second without waiting for it, so that the
        second phase too can overlap computation (`wait` does it if it has not been done). An
        exception of the first phase is raised by `wait`. Collective: every rank advances an
        exchange at the same point of its sequence of collectives."""
        if self._outcome is not None:
            return
        try:
            verdict = self.verdict()
            if verdict.committed:
                self._gathered = [
                    self._start_second_phase(bucket, received, sent)
                    for bucket, received, sent in zip(
                        self._buckets, self._received, self._sent, strict=True
                    )
                ]
        except Exception as error:
            self._outcome = error
            return
        self._outcome = verdict

    def wait(self) -> tuple[Verdict, list[Tensor | None]]:
        """The verdict and, if committed, the mean of every tensor present on all ranks, in order
        (None for the others): exact, in the tensors' dtypes; compressed, the mean pseudo-gradient
        in float32. Raises if a collective failed."""
        self.advance()
        verdict = self._outcome
        if isinstance(verdict, Exception):
            raise verdict
        assert verdict is not None
        out: list[Tensor | None] = [None] * self._count
        if not verdict.committed:
            return verdict, out
        for bucket, (gathered, work) in zip(self._buckets, self._gathered, strict=True):
            work.wait()
            wire, chunk = bucket.wire, bucket.chunk
            pieces = gathered.view(self._world, gathered.numel() // self._world)
            flat = torch.cat([decode(piece, chunk, wire) for piece in pieces])
            for position, shape, offset in zip(
                bucket.positions, bucket.shapes, bucket.offsets, strict=True
            ):
                out[position] = flat[offset : offset + shape.numel()].view(shape)
        present = self._control.tolist()[1 : 1 + self._count]
        return verdict, [t if c else None for t, c in zip(out, present, strict=True)]

    def _start_second_phase(
        self, bucket: _Bucket, received: Tensor, sent: Tensor
    ) -> tuple[Tensor, Any]:
        """Reduce this rank's chunk of ``bucket`` and launch the gather of every rank's."""
        encoded_chunk = received.numel() // self._world
        pieces = list(received.view(self._world, encoded_chunk))
        mine = encode(mean_of_pieces(pieces, bucket.chunk, bucket.wire), bucket.wire)
        gathered = torch.empty_like(sent)
        return gathered, _all_gather(gathered, mine, self._group)


def _layout(
    tensors: Sequence[Tensor], compression: Compression | None, world: int
) -> list[_Bucket]:
    """Buckets by (device, wire format), in order of first appearance (the same on every rank)."""
    positions: dict[tuple[torch.device, Wire], list[int]] = {}
    for index, t in enumerate(tensors):
        wire: Wire = t.dtype if compression is None else compression
        positions.setdefault((t.device, wire), []).append(index)
    return [
        _Bucket(kept, [tensors[i].shape for i in kept], wire, world)
        for (_, wire), kept in positions.items()
    ]


def _all_gather(output: Tensor, mine: Tensor, group: dist.ProcessGroup) -> Any:
    """Launch the gather of every rank's ``mine`` into ``output``, in rank order; its work:
    ``all_gather_single`` where torch has it (2.13 deprecates ``all_gather_into_tensor``), else
    ``all_gather_into_tensor``."""
    gather = getattr(dist, "all_gather_single", None)
    if gather is None:
        gather = dist.all_gather_into_tensor
    return gather(output, mine, group=group, async_op=True)


def _group_device(group: dist.ProcessGroup) -> torch.device:
    """Where a collective of ``group`` without tensors of its own runs (NCCL: this rank's GPU)."""
    if dist.get_backend(group) == "nccl":
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


def _encoded_length(bucket: _Bucket) -> int:
    if isinstance(bucket.wire, torch.dtype):
        return bucket.length * bucket.wire.itemsize
    if bucket.wire == "bfloat16":
        return 2 * bucket.length
    return bucket.length + 4 * (bucket.length // INT8_BLOCK)


def _device(tensors: Sequence[Tensor], bucket: _Bucket) -> torch.device:
    return tensors[bucket.positions[0]].device


def _payload(
    bucket: _Bucket,
    tensors: Sequence[Tensor],
    references: Sequence[Tensor | None],
    present: Sequence[bool],
    compression: Compression | None,
) -> Tensor:
    """This rank's encoded first-phase buffer for ``bucket`` (absent tensors send zeros)."""
    device = _device(tensors, bucket)
    dtype = bucket.wire if isinstance(bucket.wire, torch.dtype) else torch.float32
    flat = torch.zeros(bucket.length, dtype=dtype, device=device)
    for position, offset in zip(bucket.positions, bucket.offsets, strict=True):
        if not present[position]:
            continue
        t = tensors[position].detach()
        target = flat[offset : offset + t.numel()]
        if compression is None:
            target.copy_(t.reshape(-1))
        else:
            reference = references[position]
            assert reference is not None
            difference = reference.detach().to(t.device) - t.to(reference.dtype)
            target.copy_(difference.reshape(-1))
    chunks = flat.view(-1, bucket.chunk)
    return torch.cat([encode(chunk, bucket.wire) for chunk in chunks])


def start_mean(
    tensors: Sequence[Tensor],
    group: dist.ProcessGroup,
    *,
    compression: Compression | None = None,
    references: Sequence[Tensor | None] | None = None,
    present: Sequence[bool] | None = None,
    history: Sequence[int] = (),
    fingerprinted: Sequence[Sequence[Tensor]] = (),
) -> Exchange:
    """Launch the mean of ``tensors`` over ``group`` (collective; see the module docstring).

    ``references`` (same shapes; the slow weights) are needed with compression: the ranks then
    exchange ``references - tensors``, and must hold identical references. ``present`` (default:
    all) flags the tensors this rank contributes; ``history`` is the committed-sync count of each
    exchanged group, which the ranks must agree on. ``fingerprinted`` (default: none) holds the
    slow weights of each exchanged group: the verdict lists the groups whose slow weights differ
    on some ranks (``Verdict.unsettled``).
    """
    if present is None:
        present = [True] * len(tensors)
    if references is None:
        if compression is not None:
            raise ValueError("compressed exchanges need the references (slow weights)")
        references = [None] * len(tensors)
    if not (len(tensors) == len(references) == len(present)):
        raise ValueError("tensors, references and present must have the same length")
    return Exchange(tensors, references, present, history, group, compression, fingerprinted)
