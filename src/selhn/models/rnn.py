"""A bidirectional GRU over padded batches, the two directions averaged.

The parameters live in a standard ``nn.GRU(bidirectional=True)`` (so state dicts match
VSE-infinity's). On CUDA the packed cuDNN kernel runs. On the CPU the recurrence is unrolled
here over the packed time steps: PyTorch's packed CPU GRU slices its input projection per step,
and the backward pass of every slice zero-fills and adds a full-size gradient, which makes the
backward pass quadratic in the caption length. Outputs and gradients are identical (tested);
benchmarks/train_step.py measures the step against one that uses the packed GRU.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn
from torch.nn.utils.rnn import PackedSequence, pack_padded_sequence, pad_packed_sequence


def _direction(
    steps: list[Tensor], sizes: list[int], w_hh: Tensor, b_hh: Tensor, reverse: bool
) -> list[Tensor]:
    """Hidden states of one direction; ``steps[t]`` is the (sizes[t], 3H) input projection."""
    hidden = w_hh.shape[1]
    h = steps[0].new_zeros(sizes[-1] if reverse else sizes[0], hidden)
    out: list[Tensor] = [h] * len(sizes)
    for t in reversed(range(len(sizes))) if reverse else range(len(sizes)):
        active = sizes[t]  # sequences are sorted by length: the active ones are a prefix
        if h.shape[0] > active:
            h = h[:active]
        elif h.shape[0] < active:
            h = torch.cat([h, h.new_zeros(active - h.shape[0], hidden)])
        gates_h = torch.addmm(b_hh, h, w_hh.t())
        reset, update = torch.sigmoid(steps[t][:, : 2 * hidden] + gates_h[:, : 2 * hidden]).chunk(
            2, dim=1
        )
        new = torch.tanh(steps[t][:, 2 * hidden :] + reset * gates_h[:, 2 * hidden :])
        h = new + update * (h - new)
        out[t] = h
    return out


class BiGRU(nn.Module):
    """(B, T, D) padded inputs with (B,) lengths -> (B, T, H) outputs, zero past each length."""

    def __init__(self, input_size: int, hidden_size: int) -> None:
        super().__init__()
        self.gru = nn.GRU(input_size, hidden_size, batch_first=True, bidirectional=True)

    def forward(self, inputs: Tensor, lengths: Tensor) -> Tensor:
        packed = pack_padded_sequence(inputs, lengths.cpu(), batch_first=True, enforce_sorted=False)
        if inputs.is_cuda:
            data = self.gru(packed)[0].data
            half = data.shape[1] // 2
            data = (data[:, :half] + data[:, half:]) / 2
        else:
            data = self._unrolled(packed)
        out = PackedSequence(
            data, packed.batch_sizes, packed.sorted_indices, packed.unsorted_indices
        )
        return pad_packed_sequence(out, batch_first=True, total_length=inputs.shape[1])[0]

    def _unrolled(self, packed: PackedSequence) -> Tensor:
        g = self.gru
        sizes = packed.batch_sizes.tolist()
        forward = torch.addmm(g.bias_ih_l0, packed.data, g.weight_ih_l0.t()).split(sizes)
        backward = torch.addmm(g.bias_ih_l0_reverse, packed.data, g.weight_ih_l0_reverse.t())
        fwd = _direction(list(forward), sizes, g.weight_hh_l0, g.bias_hh_l0, reverse=False)
        bwd = _direction(
            list(backward.split(sizes)), sizes, g.weight_hh_l0_reverse, g.bias_hh_l0_reverse, True
        )
        return (torch.cat(fwd) + torch.cat(bwd)) / 2
