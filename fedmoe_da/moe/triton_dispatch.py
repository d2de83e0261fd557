"""Triton backend of the MoE dispatch: the four ops of ``reference.py`` as a handful of short kernels.

    topk_softmax   logits (T, E)            -> weights (T, k) fp32, indices (T, k) int64   one read of the logits
    routing_index  indices (T, k)           -> RoutingIndex                                histograms + ranks, no sort
    permute        x (T, d)                 -> x_perm (T*k, d)     backward: gather-sum over the k copies
    combine        y_perm (T*k, d), w (T, k) -> y (T, d)            backward: dy_perm (scatter) and dw (dot)

Each op has the signature and results of its torch reference (``topk_softmax_reference``
in router.py, ``routing_index_reference`` / ``permute_reference`` / ``combine_reference``
in reference.py) and is tested against it. Every kernel loads in the input dtype
(fp16, bf16, fp32) and computes in fp32. No kernel uses atomics: ``pos_of`` is a
permutation, so every backward is a gather or a scatter to distinct rows, and
results do not depend on the thread schedule. Other dtypes (fp64) and empty
inputs fall back to the torch reference.

This module imports only the references; which device may run it is decided
above it, in ``backend.py``. On CUDA the tile sizes come from the constants
below; under ``TRITON_INTERPRET=1`` (CPU tensors, Triton's interpreter) one
small fixed tile is used, so that the interpreter stays quick.
"""
from __future__ import annotations

import os

import torch
import torch.nn.functional as F
import triton
import triton.language as tl
from torch import Tensor
from torch.autograd.function import once_differentiable

from .reference import DispatchOps, RoutingIndex, combine_reference, permute_reference, routing_index_reference
from .router import topk_softmax_reference

KERNEL_DTYPES = (torch.float16, torch.bfloat16, torch.float32)   # others (fp64) use the torch reference

# Tiles on a GPU: about this many elements per program, rows split into slices of at most MAX_BLOCK_D.
TILE_ELEMENTS = 4096           # permute / combine: BLOCK_R * BLOCK_D
MAX_BLOCK_D = 1024             # widest slice of a row one program step moves
TOPK_TILE_ELEMENTS = 2048      # top-k softmax: BLOCK_T * E_PAD
HIST_TILE_ELEMENTS = 16384     # routing index: BLOCK_A * E_PAD, clamped to [MIN_BLOCK_A, MAX_BLOCK_A]
MIN_BLOCK_A, MAX_BLOCK_A = 16, 1024
NUM_WARPS = 4
# Tiles in Triton's CPU interpreter: small and fixed (the interpreter runs a tile as numpy arrays).
INTERPRET_BLOCK_T = 16         # rows (tokens or permuted rows) per program
INTERPRET_BLOCK_D = 32         # columns per program
INTERPRET_BLOCK_A = 64         # assignments per program


def _interpreting() -> bool:
    return os.environ.get("TRITON_INTERPRET") == "1"


def _use_kernels(*tensors: Tensor) -> bool:
    """True when the kernels apply; False means: use the torch reference (fp64, empty input)."""
    if any(t.numel() == 0 for t in tensors):
        return False
    return all(t.dtype in KERNEL_DTYPES for t in tensors if t.is_floating_point())


def _row_tiles(d: int) -> tuple[int, int, int]:
    """(BLOCK_R, BLOCK_D, num_warps) for the kernels that move rows of width d."""
    if _interpreting():
        return INTERPRET_BLOCK_T, INTERPRET_BLOCK_D, 1
    block_d = min(triton.next_power_of_2(d), MAX_BLOCK_D)
    return max(1, TILE_ELEMENTS // block_d), block_d, NUM_WARPS


def _pad(n: int) -> int:
    """Power-of-two width for tl.arange over n experts / choices (at least 2)."""
    return triton.next_power_of_2(max(n, 2))


# --------------------------------------------------------------------------- top-k softmax

@triton.jit
def _topk_softmax_fwd_kernel(z_ptr, w_ptr, idx_ptr, T, E, K: tl.constexpr, RENORM: tl.constexpr,
                             E_PAD: tl.constexpr, K_PAD: tl.constexpr, BLOCK_T: tl.constexpr):
    """Read BLOCK_T rows of logits once, write their k weights and expert ids.

    fp32 softmax, then k rounds of argmax where equal maxima go to the lowest
    expert index (the reference's stable sort), knocking each winner out.
    """
    rows = tl.program_id(0) * BLOCK_T + tl.arange(0, BLOCK_T)                 # (BT,)
    cols = tl.arange(0, E_PAD)                                                # (EP,)
    kcols = tl.arange(0, K_PAD)                                               # (KP,)
    rmask, emask = rows < T, cols < E
    z = tl.load(z_ptr + rows[:, None].to(tl.int64) * E + cols[None, :],
                mask=rmask[:, None] & emask[None, :], other=0.0).to(tl.float32)
    z = tl.where(emask[None, :], z, float("-inf"))                            # (BT, EP)
    p = tl.exp(z - tl.max(z, axis=1)[:, None])
    p = p / tl.sum(p, axis=1)[:, None]                                        # (BT, EP) softmax
    avail = tl.where(emask[None, :], p, -1.0)
    w = tl.zeros((BLOCK_T, K_PAD), tl.float32)
    ids = tl.zeros((BLOCK_T, K_PAD), tl.int32)
    for j in range(K):
        best = tl.max(avail, axis=1)                                          # (BT,)
        arg = tl.min(tl.where(avail == best[:, None], cols[None, :], E_PAD), axis=1)  # lowest index among ties
        avail = tl.where(cols[None, :] == arg[:, None], -1.0, avail)
        w = tl.where(kcols[None, :] == j, best[:, None], w)                   # (BT, KP)
        ids = tl.where(kcols[None, :] == j, arg[:, None], ids)
    if RENORM:
        w = w / tl.sum(w, axis=1)[:, None]
    out = rows[:, None].to(tl.int64) * K + kcols[None, :]
    omask = rmask[:, None] & (kcols[None, :] < K)
    tl.store(w_ptr + out, w, mask=omask)
    tl.store(idx_ptr + out, ids.to(tl.int64), mask=omask)


@triton.jit
def _topk_softmax_bwd_kernel(z_ptr, w_ptr, idx_ptr, gw_ptr, gz_ptr, T, E, K: tl.constexpr, RENORM: tl.constexpr,
                             E_PAD: tl.constexpr, BLOCK_T: tl.constexpr):
    """dL/dlogits from dL/dweights, recomputing the softmax p from the logits:

        g_p[i_j] = (g_j - sum_l g_l w_l) / S     S = sum_j p[i_j]   (plain g_j without renormalisation)
        dz       = p * (g_p - sum_e g_p[e] p[e])                     (softmax backward; g_p = 0 off the top-k)
    """
    rows = tl.program_id(0) * BLOCK_T + tl.arange(0, BLOCK_T)                 # (BT,)
    cols = tl.arange(0, E_PAD)                                                # (EP,)
    rmask, emask = rows < T, cols < E
    zoff = rows[:, None].to(tl.int64) * E + cols[None, :]
    zmask = rmask[:, None] & emask[None, :]
    z = tl.where(emask[None, :], tl.load(z_ptr + zoff, mask=zmask, other=0.0).to(tl.float32), float("-inf"))
    p = tl.exp(z - tl.max(z, axis=1)[:, None])
    p = p / tl.sum(p, axis=1)[:, None]                                        # (BT, EP)
    gp = tl.zeros((BLOCK_T, E_PAD), tl.float32)
    sel = tl.zeros((BLOCK_T, E_PAD), tl.int32)                                # 1 on the top-k experts
    gdotw = tl.zeros((BLOCK_T,), tl.float32)                                  # sum_l g_l w_l
    for j in range(K):
        a = rows.to(tl.int64) * K + j
        e = tl.load(idx_ptr + a, mask=rmask, other=-1)                        # (BT,)
        g = tl.load(gw_ptr + a, mask=rmask, other=0.0).to(tl.float32)
        hit = cols[None, :] == e[:, None]
        gp = tl.where(hit, g[:, None], gp)
        sel = tl.where(hit, 1, sel)
        gdotw += g * tl.load(w_ptr + a, mask=rmask, other=0.0).to(tl.float32)
    if RENORM:
        s = tl.sum(tl.where(sel != 0, p, 0.0), axis=1)                        # (BT,) S
        s = tl.where(rmask, s, 1.0)                                           # rows past T: no 0/0
        gp = tl.where(sel != 0, (gp - gdotw[:, None]) / s[:, None], 0.0)
    gz = p * (gp - tl.sum(gp * p, axis=1)[:, None])
    tl.store(gz_ptr + zoff, gz.to(gz_ptr.dtype.element_ty), mask=zmask)


def _topk_tiles(e_pad: int) -> tuple[int, int]:
    """(BLOCK_T, num_warps) for the top-k softmax kernels over e_pad (padded) experts."""
    if _interpreting():
        return INTERPRET_BLOCK_T, 1
    return max(1, TOPK_TILE_ELEMENTS // e_pad), NUM_WARPS


class _TopkSoftmax(torch.autograd.Function):
    @staticmethod
    def forward(ctx, logits: Tensor, k: int, renormalize: bool) -> tuple[Tensor, Tensor]:
        logits = logits.contiguous()
        T, E = logits.shape
        weights = torch.empty(T, k, device=logits.device, dtype=torch.float32)    # (T, k)
        indices = torch.empty(T, k, device=logits.device, dtype=torch.int64)      # (T, k)
        block_t, warps = _topk_tiles(_pad(E))
        _topk_softmax_fwd_kernel[(triton.cdiv(T, block_t),)](
            logits, weights, indices, T, E, K=k, RENORM=renormalize, E_PAD=_pad(E), K_PAD=_pad(k),
            BLOCK_T=block_t, num_warps=warps)
        ctx.save_for_backward(logits, weights, indices)
        ctx.renormalize = renormalize
        ctx.mark_non_differentiable(indices)
        return weights, indices

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_w: Tensor, _grad_idx: Tensor):
        logits, weights, indices = ctx.saved_tensors
        T, E = logits.shape
        grad_z = torch.empty_like(logits)                                         # (T, E)
        block_t, warps = _topk_tiles(_pad(E))
        _topk_softmax_bwd_kernel[(triton.cdiv(T, block_t),)](
            logits, weights, indices, grad_w.contiguous(), grad_z, T, E, K=indices.shape[1],
            RENORM=ctx.renormalize, E_PAD=_pad(E), BLOCK_T=block_t, num_warps=warps)
        return grad_z, None, None


def topk_softmax(logits: Tensor, k: int, renormalize: bool = True) -> tuple[Tensor, Tensor]:
    """Fused softmax + top-k (+ renormalisation); reference: ``router.topk_softmax_reference``."""
    if not 1 <= k <= logits.shape[-1]:
        raise ValueError(f"k={k} is invalid: must be between 1 and the number of experts ({logits.shape[-1]})")
    if not _use_kernels(logits):
        return topk_softmax_reference(logits, k, renormalize)
    return _TopkSoftmax.apply(logits, k, renormalize)


# --------------------------------------------------------------------------- routing index

@triton.jit
def _expert_histogram_kernel(idx_ptr, hist_ptr, A, E, E_PAD: tl.constexpr, BLOCK_A: tl.constexpr):
    """Count one block of flat assignments per expert -> hist[block, :] (int32), in parallel over blocks."""
    pid = tl.program_id(0)
    a = pid * BLOCK_A + tl.arange(0, BLOCK_A)                                 # (BA,)
    cols = tl.arange(0, E_PAD)                                                # (EP,)
    ex = tl.load(idx_ptr + a, mask=a < A, other=-1)                           # (BA,) -1 matches no expert
    onehot = (ex[:, None] == cols[None, :]).to(tl.int32)                      # (BA, EP)
    tl.store(hist_ptr + pid * E + cols, tl.sum(onehot, axis=0), mask=cols < E)


@triton.jit
def _assign_rows_kernel(idx_ptr, base_ptr, pos_ptr, tok_ptr, A, E, K, E_PAD: tl.constexpr, BLOCK_A: tl.constexpr):
    """Give every assignment a its permuted row and write both directions of the map:

        pos_of[a] = base[block, e] + #{a' < a in this block with the same expert e}
        token_of[pos_of[a]] = a // k

    base[block, e] (first row of expert e's rows from this block) comes from the histograms,
    so rows stay in flat-assignment order inside each expert, as with a stable sort.
    """
    pid = tl.program_id(0)
    a = pid * BLOCK_A + tl.arange(0, BLOCK_A).to(tl.int64)                    # (BA,)
    cols = tl.arange(0, E_PAD)                                                # (EP,)
    amask = a < A
    ex = tl.load(idx_ptr + a, mask=amask, other=-1)                           # (BA,)
    onehot = (ex[:, None] == cols[None, :]).to(tl.int32)                      # (BA, EP)
    rank = tl.sum(tl.cumsum(onehot, axis=0) * onehot, axis=1) - 1             # (BA,) earlier same-expert rows
    pos = tl.load(base_ptr + pid * E + ex, mask=amask, other=0) + rank        # (BA,) int64
    tl.store(pos_ptr + a, pos, mask=amask)
    tl.store(tok_ptr + pos, a // K, mask=amask)


def routing_index(indices: Tensor, num_experts: int) -> RoutingIndex:
    """Expert-contiguous order without a sort; reference: ``reference.routing_index_reference``."""
    if not _use_kernels(indices):
        return routing_index_reference(indices, num_experts)
    T, k = indices.shape
    A, E, e_pad = T * k, num_experts, _pad(num_experts)
    flat = indices.reshape(-1).contiguous()                                   # (A,)
    block_a = INTERPRET_BLOCK_A if _interpreting() else max(MIN_BLOCK_A, min(MAX_BLOCK_A, HIST_TILE_ELEMENTS // e_pad))
    nb = triton.cdiv(A, block_a)
    hist = torch.empty(nb, E, device=indices.device, dtype=torch.int32)      # (NB, E)
    _expert_histogram_kernel[(nb,)](flat, hist, A, E, E_PAD=e_pad, BLOCK_A=block_a)
    hist = hist.long()
    counts = hist.sum(0)                                                      # (E,)
    offsets = F.pad(torch.cumsum(counts, 0), (1, 0))                          # (E+1,)
    base = (offsets[:-1] + torch.cumsum(hist, 0) - hist).contiguous()         # (NB, E) first row of (block, e)
    pos_of = torch.empty(A, device=indices.device, dtype=torch.int64)         # (A,)
    token_of = torch.empty(A, device=indices.device, dtype=torch.int64)       # (A,)
    _assign_rows_kernel[(nb,)](flat, base, pos_of, token_of, A, E, k, E_PAD=e_pad, BLOCK_A=block_a)
    return RoutingIndex(counts, offsets, token_of, pos_of.view(T, k))


# --------------------------------------------------------------------------- permute / combine

@triton.jit
def _gather_rows_kernel(src_ptr, row_ptr, dst_ptr, R, D, BLOCK_R: tl.constexpr, BLOCK_D: tl.constexpr):
    """dst[r] = src[row[r]] for one (BLOCK_R, BLOCK_D) tile: permute's forward, rows into expert order."""
    r = tl.program_id(0) * BLOCK_R + tl.arange(0, BLOCK_R).to(tl.int64)      # (BR,)
    c = tl.program_id(1) * BLOCK_D + tl.arange(0, BLOCK_D)                    # (BD,)
    rmask = r < R
    mask = rmask[:, None] & (c[None, :] < D)
    src = tl.load(row_ptr + r, mask=rmask, other=0)                           # (BR,) int64
    v = tl.load(src_ptr + src[:, None] * D + c[None, :], mask=mask, other=0.0).to(tl.float32)
    tl.store(dst_ptr + r[:, None] * D + c[None, :], v.to(dst_ptr.dtype.element_ty), mask=mask)


@triton.jit
def _gather_sum_rows_kernel(src_ptr, pos_ptr, w_ptr, dst_ptr, T, D, K: tl.constexpr, HAS_W: tl.constexpr,
                            BLOCK_T: tl.constexpr, BLOCK_D: tl.constexpr):
    """dst[t] = sum_j (w[t, j] *) src[pos[t, j]] for one tile, summed in fp32.

    With weights it is combine's forward; without, permute's backward (the k
    copies of a token's row add up). A gather, so no atomics are needed.
    """
    t = tl.program_id(0) * BLOCK_T + tl.arange(0, BLOCK_T).to(tl.int64)      # (BT,)
    c = tl.program_id(1) * BLOCK_D + tl.arange(0, BLOCK_D)                    # (BD,)
    tmask = t < T
    mask = tmask[:, None] & (c[None, :] < D)
    acc = tl.zeros((BLOCK_T, BLOCK_D), tl.float32)
    for j in range(K):
        p = tl.load(pos_ptr + t * K + j, mask=tmask, other=0)                 # (BT,)
        v = tl.load(src_ptr + p[:, None] * D + c[None, :], mask=mask, other=0.0).to(tl.float32)
        if HAS_W:
            v = v * tl.load(w_ptr + t * K + j, mask=tmask, other=0.0).to(tl.float32)[:, None]
        acc += v
    tl.store(dst_ptr + t[:, None] * D + c[None, :], acc.to(dst_ptr.dtype.element_ty), mask=mask)


@triton.jit
def _combine_bwd_kernel(gy_ptr, yp_ptr, w_ptr, pos_ptr, gyp_ptr, gw_ptr, T, D, K: tl.constexpr,
                        K_PAD: tl.constexpr, NEED_GYP: tl.constexpr, NEED_GW: tl.constexpr,
                        BLOCK_T: tl.constexpr, BLOCK_D: tl.constexpr):
    """Backward of combine for BLOCK_T tokens, sweeping d so the dot needs no second pass:

        grad_y_perm[pos[t, j]] = w[t, j] * grad_y[t]               (distinct rows: a scatter, no atomics)
        grad_w[t, j]           = <grad_y[t], y_perm[pos[t, j]]>     (fp32, accumulated over the sweep)
    """
    t = tl.program_id(0) * BLOCK_T + tl.arange(0, BLOCK_T).to(tl.int64)      # (BT,)
    kcols = tl.arange(0, K_PAD)                                               # (KP,)
    tmask = t < T
    gw = tl.zeros((BLOCK_T, K_PAD), tl.float32)
    for d0 in range(0, D, BLOCK_D):
        c = d0 + tl.arange(0, BLOCK_D)                                        # (BD,)
        mask = tmask[:, None] & (c[None, :] < D)
        g = tl.load(gy_ptr + t[:, None] * D + c[None, :], mask=mask, other=0.0).to(tl.float32)  # (BT, BD)
        for j in range(K):
            p = tl.load(pos_ptr + t * K + j, mask=tmask, other=0)             # (BT,)
            if NEED_GYP:
                w = tl.load(w_ptr + t * K + j, mask=tmask, other=0.0).to(tl.float32)
                tl.store(gyp_ptr + p[:, None] * D + c[None, :], (w[:, None] * g).to(gyp_ptr.dtype.element_ty),
                         mask=mask)
            if NEED_GW:
                y = tl.load(yp_ptr + p[:, None] * D + c[None, :], mask=mask, other=0.0).to(tl.float32)
                gw = tl.where(kcols[None, :] == j, gw + tl.sum(g * y, axis=1)[:, None], gw)
    if NEED_GW:
        tl.store(gw_ptr + t[:, None] * K + kcols[None, :], gw.to(gw_ptr.dtype.element_ty),
                 mask=tmask[:, None] & (kcols[None, :] < K))


def _gather_sum(src: Tensor, pos_of: Tensor, weights: Tensor | None, out_dtype: torch.dtype) -> Tensor:
    """(T*k, d) rows -> (T, d): out[t] = sum_j (w[t, j] *) src[pos_of[t, j]]."""
    (T, k), D = pos_of.shape, src.shape[1]
    out = torch.empty(T, D, device=src.device, dtype=out_dtype)               # (T, d)
    block_t, block_d, warps = _row_tiles(D)
    grid = (triton.cdiv(T, block_t), triton.cdiv(D, block_d))
    _gather_sum_rows_kernel[grid](src, pos_of, src if weights is None else weights, out, T, D, K=k,
                                  HAS_W=weights is not None, BLOCK_T=block_t, BLOCK_D=block_d, num_warps=warps)
    return out


class _Permute(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x: Tensor, token_of: Tensor, pos_of: Tensor) -> Tensor:
        x = x.contiguous()
        R, D = token_of.shape[0], x.shape[1]
        out = torch.empty(R, D, device=x.device, dtype=x.dtype)               # (T*k, d)
        block_r, block_d, warps = _row_tiles(D)
        _gather_rows_kernel[(triton.cdiv(R, block_r), triton.cdiv(D, block_d))](
            x, token_of, out, R, D, BLOCK_R=block_r, BLOCK_D=block_d, num_warps=warps)
        ctx.save_for_backward(pos_of)
        ctx.x_dtype = x.dtype
        return out

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_perm: Tensor):
        (pos_of,) = ctx.saved_tensors
        return _gather_sum(grad_perm.contiguous(), pos_of, None, ctx.x_dtype), None, None   # (T, d)


def permute(x: Tensor, index: RoutingIndex) -> Tensor:
    """Rows into expert order, (T, d) -> (T*k, d); reference: ``reference.permute_reference``."""
    if not _use_kernels(x, index.token_of):
        return permute_reference(x, index)
    return _Permute.apply(x, index.token_of.contiguous(), index.pos_of.contiguous())


class _Combine(torch.autograd.Function):
    @staticmethod
    def forward(ctx, y_perm: Tensor, weights: Tensor, pos_of: Tensor) -> Tensor:
        y_perm, weights = y_perm.contiguous(), weights.contiguous()
        ctx.save_for_backward(y_perm, weights, pos_of)
        return _gather_sum(y_perm, pos_of, weights, y_perm.dtype)             # (T, d)

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_y: Tensor):
        y_perm, weights, pos_of = ctx.saved_tensors
        need_gyp, need_gw = ctx.needs_input_grad[0], ctx.needs_input_grad[1]
        if not (need_gyp or need_gw):
            return None, None, None
        (T, k), D = pos_of.shape, y_perm.shape[1]
        grad_yp = torch.empty_like(y_perm) if need_gyp else None                  # (T*k, d)
        grad_w = torch.empty_like(weights) if need_gw else None                   # (T, k)
        block_t, block_d, warps = _row_tiles(D)
        _combine_bwd_kernel[(triton.cdiv(T, block_t),)](
            grad_y.contiguous(), y_perm, weights, pos_of, grad_yp if need_gyp else y_perm,
            grad_w if need_gw else weights, T, D, K=k, K_PAD=_pad(k), NEED_GYP=need_gyp, NEED_GW=need_gw,
            BLOCK_T=block_t, BLOCK_D=block_d, num_warps=warps)
        return grad_yp, grad_w, None


def combine(y_perm: Tensor, weights: Tensor, index: RoutingIndex) -> Tensor:
    """Weighted un-permute, (T*k, d) -> (T, d) in y_perm's dtype; reference: ``reference.combine_reference``."""
    if not _use_kernels(y_perm, weights, index.pos_of):
        return combine_reference(y_perm, weights, index)
    return _Combine.apply(y_perm, weights, index.pos_of.contiguous())


TRITON_OPS = DispatchOps(topk_softmax, routing_index, permute, combine)
