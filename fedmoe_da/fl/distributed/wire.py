"""The wire format: a payload as one uint8 buffer, and which payloads are control (docs/ARCHITECTURE.md §6)."""
from __future__ import annotations

import json
import math

import torch
from torch import Tensor

from ...models.names import BACKBONE, EXPERT, GATE, HEAD, parse_group
from ..transport import Payload

PARAMETER_KINDS = (BACKBONE, HEAD, GATE, EXPERT)


def is_control(group: str) -> bool:
    """True for a payload that is not a parameter group (FedMoE-DA's rows of A): its content is broadcast."""
    try:
        return parse_group(group).kind not in PARAMETER_KINDS
    except ValueError:
        return True


def pack(tensors: Payload, extra: dict | None = None, device: torch.device | str = "cpu") -> Tensor:
    """One uint8 buffer: 8 bytes of header length, a JSON header (names, dtypes, shapes, ``extra``), the bytes."""
    meta = json.dumps({"tensors": [[n, str(t.dtype).removeprefix("torch."), list(t.shape)] for n, t in tensors.items()],
                       **(extra or {})}).encode()
    parts = [torch.frombuffer(bytearray(len(meta).to_bytes(8, "little") + meta), dtype=torch.uint8).to(device)]
    parts += [t.detach().contiguous().reshape(-1).view(torch.uint8).to(device) for t in tensors.values()]
    return torch.cat(parts)


def unpack(buf: Tensor, device: torch.device | str) -> tuple[Payload, dict]:
    """``pack``'s inverse: the tensors (on ``device``) and the header's other fields."""
    n = int.from_bytes(bytes(buf[:8].cpu().tolist()), "little")
    meta = json.loads(bytes(buf[8:8 + n].cpu().numpy()))
    out, offset = {}, 8 + n
    for name, dtype, shape in meta.pop("tensors"):
        dt = getattr(torch, dtype)
        size = math.prod(shape) * torch.empty((), dtype=dt).element_size()
        out[name] = buf[offset:offset + size].clone().view(dt).reshape(shape).to(device)
        offset += size
    return out, meta


def clone(tensors: Payload) -> Payload:
    return {n: t.detach().clone() for n, t in tensors.items()}
