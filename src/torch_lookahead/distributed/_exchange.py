"""The mean of tensors across ranks, started now and collected later, exact or compressed.

`start_mean` launches the collectives without waiting (``async_op=True``) and returns an
`Exchange`; `Exchange.wait` returns the means. Nothing the caller owns is written
before ``wait`` returns, so a collective that raises (a rank died, the process group's timeout
ran out) leaves the caller's tensors as they were.

Exact (``compression=None``): one all-reduce (sum) per (device, dtype) bucket of the tensors
themselves, divided by the world size, as ``average_`` does.

Compressed (``"bfloat16"`` or ``"int8"``): the ranks exchange the pseudo-gradient
``delta = reference - tensor`` (reference: the slow weights) instead of the weights, rounded to
float32 and then encoded. The mean is formed in two phases, so that the sum is accumulated in
float32 and every rank ends with the same bits:

1. the flat delta is cut into W chunks; chunk j of every rank is sent to rank j (one
   ``all_to_all_single``), which decodes the W copies, sums them in float32 in rank order and
   divides by W;
2. each rank encodes its mean chunk again and every rank gathers all of them
   (``all_gather_into_tensor``) and decodes them.

The mean weights are then ``reference - mean(delta)``. Each phase sends (W-1)/W of the encoded
payload per rank, the same as a ring all-reduce of it. ``"bfloat16"`` rounds to nearest even;
``"int8"`` scales each block of `INT8_BLOCK` values by its largest magnitude / 127 (the
scale sent as float32) and rounds to nearest, so an entry's error is at most half its block's
scale per encoding.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

import torch
import torch.distributed as dist
from torch import Tensor

from torch_lookahead.distributed._replicas import buckets

__all__ = ["COMPRESSIONS", "INT8_BLOCK", "Compression", "Exchange", "encoded_bytes", "start_mean"]

Compression = Literal["bfloat16", "int8"]
COMPRESSIONS: tuple[Compression, ...] = ("bfloat16", "int8")
INT8_BLOCK = 1024
"""Values that share one float32 scale in the int8 encoding."""


def _padded_length(n: int, world_size: int, compression: Compression) -> int:
    unit = world_size * (INT8_BLOCK if compression == "int8" else 1)
    return -(-n // unit) * unit


def encoded_bytes(n: int, compression: Compression) -> int:
    """Bytes of the encoding of ``n`` float32 values (``n`` a multiple of the block for int8)."""
    if compression == "bfloat16":
        return 2 * n
    return n + 4 * (n // INT8_BLOCK)


def encode(values: Tensor, compression: Compression) -> Tensor:
    """Encode float32 ``values`` (1-D; for int8 a whole number of blocks) as bytes."""
    if compression == "bfloat16":
        return values.to(torch.bfloat16).view(torch.uint8)
    blocks = values.view(-1, INT8_BLOCK)
    scales = blocks.abs().amax(dim=1) / 127.0
    scales = torch.where(scales > 0, scales, torch.ones_like(scales))
    quantized = torch.round(blocks / scales[:, None]).clamp_(-127, 127).to(torch.int8)
    return torch.cat([quantized.view(-1).view(torch.uint8), scales.view(torch.uint8)])


def decode(encoded: Tensor, n: int, compression: Compression) -> Tensor:
    """The float32 values of ``encoded`` (the output of `encode` for ``n`` values)."""
    if compression == "bfloat16":
        return encoded.view(torch.bfloat16).float()
    quantized = encoded[:n].view(torch.int8).view(-1, INT8_BLOCK)
    scales = encoded[n:].view(torch.float32)
    return (quantized.float() * scales[:, None]).view(-1)


class Exchange:
    """A mean across ranks in flight: `wait` for the result."""

    payload_bytes: int
    """Bytes of the payload this rank contributes: the flat buffers all-reduced, or the encoded
    deltas (a ring all-reduce of that payload sends as much per rank as the two phases)."""

    def __init__(
        self,
        tensors: Sequence[Tensor],
        references: Sequence[Tensor] | None,
        group: dist.ProcessGroup,
        compression: Compression | None,
    ) -> None:
        self._tensors = list(tensors)
        self._group = group
        self._compression = compression
        self._world_size = dist.get_world_size(group)
        if compression is None:
            self._buckets = [b for (b,) in buckets(self._tensors)]
            self._flats = [torch.cat([t.detach().reshape(-1) for t in b]) for b in self._buckets]
            self._works = [
                dist.all_reduce(flat, op=dist.ReduceOp.SUM, group=group, async_op=True)
                for flat in self._flats
            ]
            self.payload_bytes = sum(f.numel() * f.element_size() for f in self._flats)
            return
        assert references is not None
        self._references = list(references)
        self._n = sum(t.numel() for t in self._tensors)
        padded = _padded_length(self._n, self._world_size, compression)
        delta = torch.zeros(padded, dtype=torch.float32, device=self._tensors[0].device)
        offset = 0
        for t, reference in zip(self._tensors, self._references, strict=True):
            size = t.numel()
            difference = reference.detach().to(t.device) - t.detach().to(reference.dtype)
            delta[offset : offset + size].copy_(difference.reshape(-1))
            offset += size
        self._chunk = padded // self._world_size
        chunks = delta.view(self._world_size, self._chunk)
        self._sent = torch.cat([encode(chunk, compression) for chunk in chunks])
        self._received = torch.empty_like(self._sent)
        self._works = [
            dist.all_to_all_single(self._received, self._sent, group=group, async_op=True)
        ]
        self.payload_bytes = self._sent.numel()

    def wait(self) -> list[Tensor]:
        """The mean of every tensor across the ranks, in order (raises if a collective failed).

        Exact: in the tensors' dtypes. Compressed: in the references' dtypes.
        """
        for work in self._works:
            work.wait()
        if self._compression is None:
            means: dict[int, Tensor] = {}
            for bucket, flat in zip(self._buckets, self._flats, strict=True):
                flat.div_(self._world_size)
                pieces = torch.split(flat, [t.numel() for t in bucket])
                for t, piece in zip(bucket, pieces, strict=True):
                    means[id(t)] = piece.view(t.shape)
            return [means[id(t)] for t in self._tensors]
        compression = self._compression
        encoded_chunk = self._received.numel() // self._world_size
        total = torch.zeros(self._chunk, dtype=torch.float32, device=self._received.device)
        for piece in self._received.view(self._world_size, encoded_chunk):
            total += decode(piece, self._chunk, compression)
        mine = encode(total / self._world_size, compression)
        gathered = torch.empty_like(self._sent)
        dist.all_gather_into_tensor(gathered, mine, group=self._group)
        mean_delta = torch.cat(
            [
                decode(piece, self._chunk, compression)
                for piece in gathered.view(self._world_size, encoded_chunk)
            ]
        )
        out: list[Tensor] = []
        offset = 0
        for t, reference in zip(self._tensors, self._references, strict=True):
            size = t.numel()
            piece = mean_delta[offset : offset + size].view(t.shape)
            out.append(reference.detach() - piece.to(reference.device, reference.dtype))
            offset += size
        return out


def start_mean(
    tensors: Sequence[Tensor],
    group: dist.ProcessGroup,
    *,
    compression: Compression | None = None,
    references: Sequence[Tensor] | None = None,
) -> Exchange:
    """Launch the mean of ``tensors`` over ``group`` (collective; see the module docstring).

    ``references`` (same shapes; the slow weights) are needed with compression: the ranks then
    exchange ``references - tensors``, and must hold identical references.
    """
    if compression is not None and references is None:
        raise ValueError("compressed exchanges need the references (slow weights)")
    return Exchange(tensors, references, group, compression)
