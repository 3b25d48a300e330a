"""Fake-quantization (QAT) modules that mirror the engine's integer semantics.

Tensors flow through the quantized network as ``(x, scale, zero_point)`` where ``x`` is the float
value ``scale * (q - zero_point)`` of a uint8 code ``q``. Every module computes its output the way
the engine does, in floating point:

* weights: per output channel, symmetric, ``s_w[o] = max|W[o]| / 127``, ``w_q = round(W / s_w)`` in
  [-127, 127] (``weight_qparams``, also used by the converter, so the codes are the same);
* bias: ``b_q = round(b / (s_in * s_w[o]))`` (``bias_qparams``, also used by the converter);
* outputs: per-tensor uint8 with EMA min/max observers (frozen late in training),
  ``q = clamp(floor(y / s_out + 1/2) + zp_out, act_min, 255)``: round half up, as the engine's
  single-rounding requantization; ReLU is fused as ``act_min = zp_out``;
* residual add: the float sum of the two dequantized inputs, requantized like any output;
* global average pooling: exact integer ``floor(sum(q - zp) / k^2 + 1/2)``, output keeps the input's
  scale and zero point (the engine's multiplier is then exactly 1/k^2 up to Q0.31 rounding);
* max pooling keeps the input's quantization.

The engine's multiplier ``s_in * s_w / s_out`` is a Q0.31 approximation, so the engine can differ
from this model only where ``y / s_out`` lies within about 2^-30 (relative) of a rounding tie: run in
float64, the shipped models' logit codes differ from the engine's on 0-0.6% of logits, by at most
2 LSB (a tie flipped in one layer can move the next by one more).
Run in float32 (as it trains), the convolution sums are rounded too: on the shipped models 4-16% of
the logit codes move by 1-2 LSB (the model cards give both, ``python -m export.card --checkpoint``).
Gradients use the straight-through estimator, zero outside the clamp range.
"""
from __future__ import annotations

import math

import torch
from torch import nn
from torch.nn import functional as F

from export import models as fm

INPUT_SCALE = 1.0 / 255.0
INPUT_ZERO_POINT = 0
INT32_BIAS_LIMIT = 2**30  # bias codes are clamped here; the accumulator bound is checked at conversion


def round_half_up(x: torch.Tensor) -> torch.Tensor:
    return torch.floor(x + 0.5)


def weight_qparams(weight: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-output-channel symmetric int8 codes (float64 tensor of integers) and scales (float64, (O,))."""
    w = weight.detach().double()
    amax = w.abs().flatten(1).amax(dim=1)
    scale = torch.where(amax > 0, amax / 127.0, torch.ones_like(amax))
    shape = (-1,) + (1,) * (w.dim() - 1)
    codes = torch.clamp(torch.round(w / scale.view(shape)), -127, 127)
    return codes, scale


def bias_qparams(bias: torch.Tensor, input_scale: float, weight_scale: torch.Tensor) -> torch.Tensor:
    """int32 bias codes (as float64 integers) at scale ``s_in * s_w[o]``, round to nearest."""
    b = bias.detach().double()
    return torch.clamp(torch.round(b / (input_scale * weight_scale)), -INT32_BIAS_LIMIT, INT32_BIAS_LIMIT)


def activation_qparams(lo: float, hi: float, relu: bool) -> tuple[float, int]:
    """uint8 (scale, zero_point) covering [lo, hi] widened to contain 0 (so real 0 is exact: padding)."""
    lo = 0.0 if relu else min(float(lo), 0.0)
    hi = max(float(hi), 0.0)
    if hi - lo < 1e-8:
        hi = lo + 1e-8
    scale = (hi - lo) / 255.0
    zero_point = int(min(255, max(0, math.floor(-lo / scale + 0.5))))
    return scale, zero_point


class ActQuant(nn.Module):
    """Per-tensor uint8 fake quantization with an EMA min/max observer; ReLU fused as the clamp."""

    def __init__(self, relu: bool, momentum: float = 0.05):
        super().__init__()
        self.relu = relu
        self.momentum = momentum
        self.register_buffer("min_val", torch.zeros((), dtype=torch.float64))
        self.register_buffer("max_val", torch.zeros((), dtype=torch.float64))
        self.register_buffer("initialized", torch.zeros((), dtype=torch.bool))
        self.register_buffer("frozen", torch.zeros((), dtype=torch.bool))

    def qparams(self) -> tuple[float, int]:
        return activation_qparams(self.min_val.item(), self.max_val.item(), self.relu)

    def act_range(self) -> tuple[int, int]:
        _, zp = self.qparams()
        return (zp if self.relu else 0), 255

    @torch.no_grad()
    def observe(self, y: torch.Tensor) -> None:
        lo, hi = y.min().double(), y.max().double()
        if not bool(self.initialized):
            self.min_val.copy_(lo)
            self.max_val.copy_(hi)
            self.initialized.fill_(True)
        else:
            self.min_val.mul_(1 - self.momentum).add_(self.momentum * lo)
            self.max_val.mul_(1 - self.momentum).add_(self.momentum * hi)

    def forward(self, y: torch.Tensor):
        if self.training and not bool(self.frozen):
            self.observe(y)
        scale, zp = self.qparams()
        act_min, act_max = self.act_range()
        q = torch.clamp(round_half_up(y.detach() / scale) + zp, act_min, act_max)
        fake = ((q - zp) * scale).to(y.dtype)
        y_c = torch.clamp(y, (act_min - zp) * scale, (act_max - zp) * scale)
        return y_c + (fake - y_c).detach(), scale, zp


class QConv(nn.Module):
    """Conv2d with folded batch norm, fake-quantized weights/bias, uint8 output (ReLU fused if relu)."""

    def __init__(self, weight: torch.Tensor, bias: torch.Tensor, stride: int, padding: int, relu: bool):
        super().__init__()
        self.weight = nn.Parameter(weight.detach().clone())
        self.bias = nn.Parameter(bias.detach().clone())
        self.stride = int(stride)
        self.padding = int(padding)
        self.out = ActQuant(relu)

    def fake_weight_bias(self, input_scale: float):
        codes, w_scale = weight_qparams(self.weight)
        shape = (-1,) + (1,) * (self.weight.dim() - 1)
        w_fake = (codes * w_scale.view(shape)).to(self.weight.dtype)
        b_fake = (bias_qparams(self.bias, input_scale, w_scale) * input_scale * w_scale).to(self.bias.dtype)
        w = self.weight + (w_fake - self.weight).detach()
        b = self.bias + (b_fake - self.bias).detach()
        return w, b

    def forward(self, x, input_scale: float, input_zero_point: int):
        w, b = self.fake_weight_bias(input_scale)
        return self.out(F.conv2d(x, w, b, self.stride, self.padding))


class QLinear(QConv):
    """Linear layer, fake-quantized like QConv; uint8 output without ReLU (the logits)."""

    def __init__(self, weight: torch.Tensor, bias: torch.Tensor):
        super().__init__(weight, bias, 1, 0, relu=False)

    def forward(self, x, input_scale: float, input_zero_point: int):
        w, b = self.fake_weight_bias(input_scale)
        return self.out(F.linear(x, w, b))


class QAdd(nn.Module):
    """Residual add of two quantized tensors, requantized to uint8 with fused ReLU."""

    def __init__(self, relu: bool = True):
        super().__init__()
        self.out = ActQuant(relu)

    def forward(self, a, b):
        return self.out(a + b)


def global_avg_pool(x: torch.Tensor, scale: float, zero_point: int) -> torch.Tensor:
    """Exact integer global average (round half up), same scale and zero point; straight-through gradient."""
    area = x.shape[2] * x.shape[3]
    codes = torch.round(x.detach().double() / scale)  # q - zp, exact integers
    pooled = torch.floor(codes.sum(dim=(2, 3)) / area + 0.5)
    # keep the result inside uint8 after adding the zero point (it always is: an average of codes)
    exact = (pooled * scale).to(x.dtype)
    mean = x.mean(dim=(2, 3))
    return mean + (exact - mean).detach()


def fold_bn(conv: nn.Conv2d, bn: nn.BatchNorm2d) -> tuple[torch.Tensor, torch.Tensor]:
    """Conv weight and bias with the batch norm (running statistics) folded in."""
    std = torch.sqrt(bn.running_var + bn.eps)
    gamma = bn.weight / std
    weight = conv.weight * gamma.view(-1, 1, 1, 1)
    bias = bn.bias - bn.running_mean * gamma
    if conv.bias is not None:
        bias = bias + conv.bias * gamma
    return weight.detach(), bias.detach()


def _qconv(seq: nn.Sequential, relu: bool) -> QConv:
    conv, bn = seq[0], seq[1]
    w, b = fold_bn(conv, bn)
    return QConv(w, b, conv.stride[0], conv.padding[0], relu)


class QBlock(nn.Module):
    """Quantized residual block: a chain of QConv (ReLU on all but the last), shortcut, QAdd(ReLU)."""

    def __init__(self, block: nn.Module):
        super().__init__()
        seqs = [block.branch1, block.branch2] + ([block.branch3] if hasattr(block, "branch3") else [])
        self.convs = nn.ModuleList([_qconv(s, relu=(i < len(seqs) - 1)) for i, s in enumerate(seqs)])
        self.shortcut = None if block.shortcut is None else _qconv(block.shortcut, relu=False)
        self.add = QAdd(relu=True)

    def forward(self, x, s, zp):
        y, ys, yzp = x, s, zp
        for conv in self.convs:
            y, ys, yzp = conv(y, ys, yzp)
        if self.shortcut is None:
            sc = x
        else:
            sc, _, _ = self.shortcut(x, s, zp)
        return self.add(y, sc)


class QResNet(nn.Module):
    """The quantized network that the converter turns into model.int8 (same structure, same rounding)."""

    def __init__(self, model: fm.ResNet):
        super().__init__()
        self.arch = model.arch
        self.input_shape = tuple(model.input_shape)
        self.stem = _qconv(model.stem, relu=True)
        self.stem_pool = model.stem_pool
        self.stages = nn.ModuleList([nn.ModuleList([QBlock(b) for b in stage]) for stage in model.stages])
        self.fc = QLinear(model.fc.weight, model.fc.bias)

    def forward(self, x, return_qparams: bool = False):
        """x: float NCHW raw pixels / 255 (on the 1/255 grid). Returns fake-quantized logits."""
        y, s, zp = self.stem(x, INPUT_SCALE, INPUT_ZERO_POINT)
        if self.stem_pool:
            y = F.max_pool2d(y, 3, 2, 1)
        for stage in self.stages:
            for block in stage:
                y, s, zp = block(y, s, zp)
        y = global_avg_pool(y, s, zp)
        logits, ls, lzp = self.fc(y, s, zp)
        return (logits, ls, lzp) if return_qparams else logits

    def logit_codes(self, x) -> torch.Tensor:
        """uint8 logit codes (as int64) that the engine should reproduce."""
        logits, s, zp = self.forward(x, return_qparams=True)
        return (torch.round(logits.double() / s) + zp).long()

    def act_quants(self):
        return [m for m in self.modules() if isinstance(m, ActQuant)]

    def freeze_observers(self, frozen: bool = True) -> None:
        for m in self.act_quants():
            m.frozen.fill_(frozen)


def quantize_model(model: fm.ResNet) -> QResNet:
    """Fold batch norms of a trained float model into a QResNet (observers still to be calibrated)."""
    model = model.eval()
    return QResNet(model)
