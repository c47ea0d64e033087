"""SCNN's spatial message passing, computed fast but exactly.

In a sweep, slice i becomes ``slice_i + relu(conv(new slice_{i-1}))``: each slice depends on the
already-updated previous one, so the work is sequential by definition (REFERENCE.md section 3).
The textbook code runs one ``conv2d`` per slice on a ``[B, C, 1, W]`` tensor and lets autograd
record ~270 tiny convolutions, slices and a ``torch.cat``; on CPU that is dominated by per-call
overhead and by convolution kernels that are poor at one-row inputs.

Here each sweep is one autograd ``Function`` working on a ``[slices, batch, row, channels]`` buffer
(vertical and horizontal sweeps share the code through a transpose; reverse sweeps walk the slice
index backwards):

* forward: the buffer is zero-padded along the row once; the 1-D convolution of a slice is a single
  matrix product of an im2col view (a window of ``k`` padded positions is ``k * C`` contiguous
  numbers) with the weight reshaped to ``[k * C, C]``; the conv outputs are kept and become the
  ReLU mask in one operation after the sweep;
* backward: the gradient flows back slice by slice through the transposed convolution (the same
  code with the flipped, transposed weight, accumulated in place by ``addmm_``), and the weight
  gradient of the whole sweep is ``k`` large matrix products over all slices at once instead of
  ~100 small ones.

Almost all the time is now in those matrix products (the same multiply-adds the naive version
does), so the speed-up over the naive version is bounded by how much better large GEMMs run than
~270 one-row convolutions: about 1.6-1.9x on 2 CPU cores (docs/performance.md).

The result equals the slice-by-slice version in value and in the gradients of the input and of the
four weights (see ``tests/test_model.py`` and ``benchmarks/bench_message_passing.py``).
"""

from __future__ import annotations

import math

import torch
from torch import nn
from torch.autograd.function import once_differentiable


def _im2col(padded_rows: torch.Tensor, length: int, kernel: int, out: torch.Tensor) -> torch.Tensor:
    """``[B, L + k - 1, C]`` contiguous -> ``out: [B * L, k * C]``, row ``l`` holding window ``l .. l+k-1``.

    A window of ``k`` consecutive padded positions is ``k * C`` consecutive numbers in memory, so the
    im2col matrix is a strided view; one ``copy_`` into a reused buffer makes it GEMM-ready (much
    cheaper than ``reshape``/``contiguous`` on an overlapping view, which allocate and take a slow path).
    """
    batch, padded_length, channels = padded_rows.shape
    windows = padded_rows.as_strided(
        (batch, length, kernel * channels),
        (padded_length * channels, channels, 1),
        padded_rows.storage_offset(),
    )
    out.view(batch, length, kernel * channels).copy_(windows)
    return out


def _forward_matrix(weight: torch.Tensor) -> torch.Tensor:
    """Conv weight ``[O, C, k]`` -> ``[k * C, O]`` matching :func:`_im2col` rows (window-major)."""
    out_channels, in_channels, kernel = weight.shape
    return weight.permute(2, 1, 0).reshape(kernel * in_channels, out_channels).contiguous()


def _transposed_matrix(weight: torch.Tensor) -> torch.Tensor:
    """The matrix of the transposed convolution: ``[k * O, C]`` with the taps flipped."""
    out_channels, in_channels, kernel = weight.shape
    return weight.flip(2).permute(2, 0, 1).reshape(kernel * out_channels, in_channels).contiguous()


def _zero_bordered(buffer: torch.Tensor, pad: int) -> torch.Tensor:
    """Zero the ``pad`` positions at both ends of dim 2 (the interior is about to be overwritten)."""
    buffer[:, :, :pad].zero_()
    buffer[:, :, buffer.shape[2] - pad :].zero_()
    return buffer


def _slice_order(num_slices: int, reverse: bool) -> list[int]:
    order = list(range(num_slices))
    return order[::-1] if reverse else order


class _Sweep(torch.autograd.Function):
    """One directional sweep over dim 0 of ``x: [N, B, L, C]`` with a 1-D conv ``weight: [C, C, k]`` along L."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, weight: torch.Tensor, reverse: bool) -> torch.Tensor:  # type: ignore[override]
        with torch.autocast(device_type=x.device.type, enabled=False):
            num_slices, batch, length, channels = x.shape
            kernel = weight.shape[-1]
            pad = kernel // 2
            work_weight = weight.to(x.dtype)
            matrix = _forward_matrix(work_weight)
            # Zero-padded along the row once; the interior is updated in place, slice by slice.
            padded = _zero_bordered(x.new_empty(num_slices, batch, length + 2 * pad, channels), pad)
            padded[:, :, pad : pad + length].copy_(x)
            order = _slice_order(num_slices, reverse)
            # The conv output of every slice before its ReLU; turned into the ReLU's mask after the
            # sweep in one operation, rather than one small comparison per slice.
            passed = x.new_empty(num_slices, batch, length, channels)
            passed[order[0]].zero_()
            activated = x.new_empty(batch, length, channels)
            columns = x.new_empty(batch * length, kernel * channels)
            for previous, current in zip(order[:-1], order[1:]):
                conv = passed[current]
                torch.mm(_im2col(padded[previous], length, kernel, columns), matrix, out=conv.view(-1, channels))
                padded[current, :, pad : pad + length].add_(torch.clamp_min(conv, 0, out=activated))
            passed.gt_(0)  # 1.0 where the conv output passed the ReLU, else 0.0
            ctx.save_for_backward(padded, passed, work_weight)
            ctx.reverse = reverse
            ctx.weight_dtype = weight.dtype
            # A view of a saved buffer: an in-place change to it makes backward raise, not go wrong.
            return padded[:, :, pad : pad + length]

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_output: torch.Tensor):  # type: ignore[override]
        padded, passed, weight = ctx.saved_tensors
        with torch.autocast(device_type=grad_output.device.type, enabled=False):
            grad_output = grad_output.to(padded.dtype)
            num_slices, batch, padded_length, channels = padded.shape
            kernel = weight.shape[-1]
            pad = kernel // 2
            length = padded_length - 2 * pad
            matrix = _transposed_matrix(weight)
            # grad of each new slice, accumulated from the slice after it in sweep order.
            grad_slices = grad_output.clone(memory_format=torch.contiguous_format)
            # grad at the conv outputs (pre-ReLU), zero-padded for the transposed conv and dW.
            order = _slice_order(num_slices, ctx.reverse)
            grad_conv = _zero_bordered(padded.new_empty(num_slices, batch, padded_length, channels), pad)
            grad_conv[order[0]].zero_()  # the first slice of the sweep has no conv
            columns = padded.new_empty(batch * length, kernel * channels)
            for previous, current in zip(order[::-1][1:], order[::-1][:-1]):
                # Through the ReLU: a multiply by the saved mask (a `where` into this strided view is far slower).
                torch.mul(grad_slices[current], passed[current], out=grad_conv[current, :, pad : pad + length])
                grad_slices[previous].view(batch * length, channels).addmm_(
                    _im2col(grad_conv[current], length, kernel, columns), matrix)
            grad_weight = None
            if ctx.needs_input_grad[1] and num_slices > 1:
                grad_weight = _sweep_weight_grad(padded, grad_conv, kernel, ctx.reverse)
                grad_weight = grad_weight.to(ctx.weight_dtype)
            return grad_slices, grad_weight, None


def _sweep_weight_grad(padded: torch.Tensor, grad_conv: torch.Tensor, kernel: int, reverse: bool) -> torch.Tensor:
    """dW of a whole sweep in ``k`` matrix products over every slice at once.

    ``dW[o, c, j] = sum_{slice, b, l} grad_conv[l + pad, o] * padded_prev[l + j, c]``. Flattening
    ``[slice, batch, padded row]`` into one axis, tap ``j`` is a product of two contiguous row
    ranges offset by ``j``; pairs that straddle two rows meet the zero padding of ``grad_conv``.
    """
    num_slices, batch, padded_length, channels = padded.shape
    pad = kernel // 2
    if reverse:
        sources, targets = padded[1:], grad_conv[:-1]
    else:
        sources, targets = padded[:-1], grad_conv[1:]
    rows = (num_slices - 1) * batch * padded_length
    sources = sources.reshape(rows, channels)
    targets = targets.reshape(rows, channels)[pad : rows - pad]
    # sources^T @ targets ([C_in, C_out]) runs ~1.4x faster on CPU than targets^T @ sources.
    taps = [sources[j : rows - 2 * pad + j].t() @ targets for j in range(kernel)]
    return torch.stack(taps, dim=2).transpose(0, 1)


def _sweep(x: torch.Tensor, weight: torch.Tensor, reverse: bool) -> torch.Tensor:
    """Apply one sweep to ``[N, B, L, C]`` with weight ``[C, C, k]``; differentiable in both."""
    return _Sweep.apply(x, weight, reverse)


class MessagePassing(nn.Module):
    """SCNN message passing: top-to-bottom, bottom-to-top, left-to-right, right-to-left.

    The four convolutions are held as ``nn.Conv2d`` attributes, registered in sweep order, so the
    parameters have the conventional shapes (``(1, k)`` for vertical, ``(k, 1)`` for horizontal sweeps)
    and names; their weights are used by the fast sweep, their ``forward`` is not.
    """

    def __init__(self, channels: int = 128, kernel: int = 9) -> None:
        super().__init__()
        if kernel < 1 or kernel % 2 == 0:
            raise ValueError(f"MessagePassing kernel must be a positive odd number, got {kernel}")
        self.channels = channels
        self.kernel = kernel
        vertical = dict(kernel_size=(1, kernel), padding=(0, kernel // 2), bias=False)
        horizontal = dict(kernel_size=(kernel, 1), padding=(kernel // 2, 0), bias=False)
        self.top_to_bottom = nn.Conv2d(channels, channels, **vertical)
        self.bottom_to_top = nn.Conv2d(channels, channels, **vertical)
        self.left_to_right = nn.Conv2d(channels, channels, **horizontal)
        self.right_to_left = nn.Conv2d(channels, channels, **horizontal)
        self.reset_parameters()

    def sweeps(self) -> tuple[nn.Conv2d, nn.Conv2d, nn.Conv2d, nn.Conv2d]:
        """The four convolutions in the order they are applied."""
        return (self.top_to_bottom, self.bottom_to_top, self.left_to_right, self.right_to_left)

    def reset_parameters(self) -> None:
        """Normal init with a fifth of Kaiming's variance.

        Every slice adds ``relu(conv(previous))`` to itself, ~100 times in a row and four sweeps over.
        With full Kaiming gain the ReLU output has the previous slice's variance, so the variance
        grows linearly along a sweep and multiplies across sweeps; at a fifth of it, a slice's
        variance settles at 1.25x its input's and activations stay at the input's scale.
        """
        for conv in self.sweeps():
            fan_in = conv.in_channels * self.kernel
            nn.init.normal_(conv.weight, mean=0.0, std=math.sqrt(2.0 / (5.0 * fan_in)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() != 4 or x.shape[1] != self.channels:
            raise ValueError(f"MessagePassing expects [B, {self.channels}, H, W], got {list(x.shape)}")
        channels_last = x.is_contiguous(memory_format=torch.channels_last) and not x.is_contiguous()
        # Under bf16 autocast the neck hands over bf16. Each sweep adds ~100 slices into one another;
        # in bf16 that drifts: the sweep's weight gradients differ from float32 by ~6 % (relative L2,
        # docs/guides/recipe.md), so the sweeps always run in float32 and only the result is cast back.
        dtype = x.dtype
        if dtype in (torch.bfloat16, torch.float16):
            x = x.float()
        rows = x.permute(2, 0, 3, 1)  # [H, B, W, C]: slices are rows, convolved along W
        rows = _sweep(rows, self.top_to_bottom.weight[:, :, 0, :], reverse=False)
        rows = _sweep(rows, self.bottom_to_top.weight[:, :, 0, :], reverse=True)
        columns = rows.permute(2, 1, 0, 3)  # [W, B, H, C]: slices are columns, convolved along H
        columns = _sweep(columns, self.left_to_right.weight[:, :, :, 0], reverse=False)
        columns = _sweep(columns, self.right_to_left.weight[:, :, :, 0], reverse=True)
        out = columns.permute(1, 3, 2, 0)  # [B, C, H, W]
        fmt = torch.channels_last if channels_last else torch.contiguous_format
        return out.to(dtype).contiguous(memory_format=fmt)
