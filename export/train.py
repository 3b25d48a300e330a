"""Noise-augmented training: IntRS-quant (QAT + discrete Gaussian noise) and the two float-noise baselines.

``mode="intrs"``: the noise is drawn from the engine's own integer sampler
(``kernels.sampler.sample_discrete_gaussian``) on the 0..255 pixel grid, one fresh bank per epoch
indexed by (epoch, image): ``stream = 16 + epoch``, ``seed`` = the training seed (see ``epoch_noise_key``). The noisy input is
``clip(v + n, 0, 255)`` exactly as in the engine (policy "clip"). Schedule: float warm-up epochs with
batch norm, then batch norms are folded and the network is trained with fake quantization
(:mod:`export.qat`); observers are frozen for the last QAT epochs.

``mode="float"`` (FloatRS-fp): Cohen et al.: float32 model, continuous Gaussian noise ``N(0, sigma^2)``
added to the [0, 1] image (no clipping), no quantization.

``mode="floatq"`` (FloatRS-quant of IntRS): the QAT schedule of ``intrs``, but the noise is continuous
Gaussian added in float and the noisy image is then quantized to the model's uint8 input grid,
``clip(round(255 (x + sigma z)), 0, 255)`` -- what :mod:`export.floatrs` does at certification.

SGD with momentum 0.9 and Nesterov, weight decay 5e-4 (``weight_decay``), cosine learning rate over all
epochs (per step), random crop (zero padding) and horizontal flip, optionally TrivialAugment
(``trivial_augment``) and cutout (``cutout``). With ``ema`` = d > 0 the float phase keeps an exponential
moving average of the weights and batch-norm statistics (Polyak averaging, ``w_ema <- d w_ema + (1 - d) w``
after every step, :class:`torch.optim.swa_utils.AveragedModel`); the averaged network, its batch-norm
statistics measured again on noisy training images, is the one the QAT phase starts from (and the float
model that is exported in ``float`` mode).

Consistency regularization (Jeong & Shin, NeurIPS 2020; ``consistency`` = lambda > 0): every image of
a batch is seen under ``noise_copies`` = m independent noise draws (same crop and flip), all m*B
inputs in one forward pass, and the loss is (:func:`consistency_objective`)

    (1/m) sum_j CE(f(x + n_j), y)  +  lambda (1/m) sum_j KL(p_bar || p_j)  +  eta H(p_bar),
    p_j = softmax f(x + n_j),  p_bar = (1/m) sum_j p_j,

which pulls each noisy prediction towards their mean (the smoothed classifier's) and keeps that mean
confident. The paper's CIFAR-10 settings (Gaussian + consistency): m = 2, eta = 0.5, lambda = 20 for
sigma <= 0.5 and 10 for sigma = 1.0 (:func:`paper_lambda`). In ``intrs`` mode copy j of epoch e draws
its discrete noise from its own sampler key (:func:`epoch_noise_key`); copy 0 is the plain run's bank.
"""
from __future__ import annotations

import math
import time
from dataclasses import dataclass, field

import numpy as np
import torch
from torch import nn

from export import models as fm
from export import qat

# sampler streams (0..255; 0 and 1 are certification's): 2 observer calibration, 3 test, 16+ per epoch
CALIB_NOISE_STREAM = 2
TEST_NOISE_STREAM = 3
TRAIN_NOISE_STREAM = 16
FLOAT_NOISE_MODES = ("float", "floatq")   # continuous Gaussian noise drawn by torch


COPY_SEED_STEP = 2**48      # noise copy j (consistency) shifts the seed by j * 2^48: disjoint from 2^32 epoch blocks
CONSISTENCY_ETA = 0.5       # the paper's entropy weight (all sigmas)
CONSISTENCY_COPIES = 2      # the paper's m for Gaussian + consistency


def epoch_noise_key(seed: int, epoch: int, copy: int = 0) -> tuple[int, int]:
    """(seed, stream) of noise copy ``copy`` of ``epoch``: streams 16..215, then the next seed block."""
    return (seed + (epoch // 200) * 2**32 + copy * COPY_SEED_STEP) % 2**64, TRAIN_NOISE_STREAM + epoch % 200


def paper_lambda(sigma: float) -> float:
    """Jeong & Shin's consistency weight for CIFAR-10 (Gaussian + consistency): 20 up to sigma 0.5, then 10."""
    return 20.0 if sigma <= 0.5 else 10.0


def consistency_objective(logits: torch.Tensor, target: torch.Tensor, copies: int, lbd: float,
                          eta: float = CONSISTENCY_ETA) -> torch.Tensor:
    """Cross-entropy over all copies + lbd * mean_j KL(p_bar || p_j) + eta * H(p_bar).

    ``logits``: (copies * B, K), copy-major (rows j*B .. (j+1)*B - 1 are copy j); ``target``: (B,).
    With one copy or lbd = 0 this is the plain cross-entropy (the entropy term belongs to the
    regularizer and is dropped with it).
    """
    ce = nn.functional.cross_entropy(logits, target.repeat(copies))
    if copies < 2 or lbd == 0:
        return ce
    log_p = nn.functional.log_softmax(logits, dim=1).reshape(copies, -1, logits.shape[1])   # (m, B, K)
    p_bar = log_p.exp().mean(0)                                                            # (B, K)
    log_p_bar = torch.log(p_bar.clamp_min(1e-12))   # p_bar >= min_j p_j > 0 up to float underflow
    kl = (p_bar * (log_p_bar - log_p)).sum(-1).mean()   # mean over copies and images
    entropy = -(p_bar * log_p_bar).sum(-1).mean()
    return ce + lbd * kl + eta * entropy


def discrete_noise(sigma: float, shape, seed: int, stream: int) -> np.ndarray:
    """int32 discrete Gaussian noise N_Z(0, (255 sigma)^2) from the engine's sampler."""
    from kernels.sampler import sample_discrete_gaussian, sigma_sq_from_sigma

    shape = tuple(int(s) for s in shape)
    # one sample (row) per image, its pixels the coordinates: noise = f(seed, stream, image, pixel).
    # A table-sampler failure (FAIL = INT32_MIN, probability < 2^-58 per value) clips to pixel 0.
    n = sample_discrete_gaussian(sigma_sq_from_sigma(sigma), (shape[0], int(np.prod(shape[1:]))), seed, stream)
    return np.asarray(n, dtype=np.int32).reshape(shape)


def noisy_clip(x_uint8: np.ndarray | torch.Tensor, noise) -> torch.Tensor:
    """clip(v + n, 0, 255) / 255 as float32 NCHW from uint8 NHWC images and int noise (the engine's policy)."""
    x = torch.as_tensor(x_uint8).to(torch.int32) + torch.as_tensor(noise).to(torch.int32)
    x = torch.clamp(x, 0, 255)
    return (x.to(torch.float32) / 255.0).permute(0, 3, 1, 2).contiguous()


def clean_input(x_uint8) -> torch.Tensor:
    return (torch.as_tensor(x_uint8).to(torch.float32) / 255.0).permute(0, 3, 1, 2).contiguous()


def augment(x: np.ndarray, rng: np.random.Generator, flip: bool = True, cutout: int = 0,
            trivial: bool = False) -> np.ndarray:
    """Random crop with zero padding (H // 8 pixels), horizontal flip, with ``trivial`` one TrivialAugment
    operation (:mod:`export.trivial_augment`) and, with ``cutout`` > 0, one ``cutout`` x ``cutout`` square
    set to 0 per image (DeVries & Taylor 2017: centre uniform over the image, the square clipped at its
    edges), uint8 NHWC. ``cutout`` 0 and ``trivial`` False draw nothing more from ``rng``, so runs without
    them repeat the earlier recipe bit for bit."""
    n, h, w, _ = x.shape
    pad = max(1, h // 8)
    xp = np.pad(x, ((0, 0), (pad, pad), (pad, pad), (0, 0)))
    dy = rng.integers(0, 2 * pad + 1, n)
    dx = rng.integers(0, 2 * pad + 1, n)
    out = np.empty_like(x)
    for i in range(n):
        out[i] = xp[i, dy[i]:dy[i] + h, dx[i]:dx[i] + w]
    if flip:
        f = rng.random(n) < 0.5
        out[f] = out[f, :, ::-1]
    if trivial:
        from export.trivial_augment import trivial_augment

        out = trivial_augment(out, rng)
    if cutout > 0:
        cy = rng.integers(0, h, n)
        cx = rng.integers(0, w, n)
        lo = cutout // 2
        for i in range(n):
            out[i, max(0, cy[i] - lo):cy[i] - lo + cutout, max(0, cx[i] - lo):cx[i] - lo + cutout] = 0
    return out


@dataclass
class TrainConfig:
    arch: str = "resnet20"
    sigma: float = 0.25
    epochs: int = 30
    qat_epochs: int | None = None      # default: about a third of the epochs (intrs), 0 for float
    freeze_epochs: int | None = None   # observers frozen for the last epochs (default: about a third of QAT)
    mode: str = "intrs"
    seed: int = 0
    batch_size: int = 128
    lr: float = 0.1
    weight_decay: float = 5e-4
    flip: bool = True
    cutout: int = 0                    # side of the cutout square in pixels (0: off)
    trivial_augment: bool = False      # one TrivialAugment operation per image (export.trivial_augment)
    ema: float = 0.0                   # decay of the float phase's weight average (0: off)
    qat_lr_scale: float = 0.1          # fine-tuning without batch norm diverges at the float learning rate
    threads: int = 2
    consistency: float = 0.0           # lambda of consistency regularization (0: off)
    noise_copies: int = 1              # noisy copies of each image per step (m)
    consistency_eta: float = CONSISTENCY_ETA
    extra: dict = field(default_factory=dict)

    def schedule(self) -> tuple[int, int, int]:
        """(float epochs, QAT epochs, frozen-observer epochs)."""
        if self.mode == "float":
            return self.epochs, 0, 0
        if self.qat_epochs is None:
            # about a third, but never all: QAT from random weights with frozen observers learns nothing
            q = min(max(1, round(self.epochs / 3)), self.epochs - 1)
        else:
            q = min(self.qat_epochs, self.epochs)
        f = self.freeze_epochs if self.freeze_epochs is not None else max(1, round(q / 3))
        return self.epochs - q, q, min(f, q)


def check_config(cfg: TrainConfig, pretrained: bool = False) -> None:
    """ValueError for a schedule that cannot train; ``pretrained``: weights come from --init/--resume."""
    if cfg.epochs < 1:
        raise ValueError(f"--epochs must be >= 1, got {cfg.epochs}")
    if not (math.isfinite(cfg.lr) and cfg.lr > 0):
        raise ValueError(f"--lr must be a number > 0, got {cfg.lr}: with lr 0 nothing is learned")
    if cfg.batch_size < 2:
        raise ValueError(f"--batch-size must be >= 2, got {cfg.batch_size}")
    if not (math.isfinite(cfg.sigma) and cfg.sigma >= 0):
        raise ValueError(f"--sigma must be >= 0, got {cfg.sigma}")
    for name, v in (("--qat-epochs", cfg.qat_epochs), ("--freeze-epochs", cfg.freeze_epochs)):
        if v is not None and v < 0:
            raise ValueError(f"{name} must be >= 0, got {v}")
    if not (math.isfinite(cfg.consistency) and cfg.consistency >= 0):
        raise ValueError(f"--consistency must be a number >= 0, got {cfg.consistency}")
    if not 1 <= cfg.noise_copies <= 16:
        raise ValueError(f"--noise-copies must be in [1, 16], got {cfg.noise_copies}")
    if cfg.consistency > 0 and cfg.noise_copies < 2:
        raise ValueError("--consistency compares noisy copies of each image: it needs --noise-copies >= 2")
    if not (math.isfinite(cfg.consistency_eta) and cfg.consistency_eta >= 0):
        raise ValueError(f"--consistency-eta must be a number >= 0, got {cfg.consistency_eta}")
    if not (math.isfinite(cfg.weight_decay) and cfg.weight_decay >= 0):
        raise ValueError(f"--weight-decay must be a number >= 0, got {cfg.weight_decay}")
    if cfg.cutout < 0:
        raise ValueError(f"--cutout must be >= 0 pixels, got {cfg.cutout}")
    if not (math.isfinite(cfg.ema) and 0 <= cfg.ema < 1):
        raise ValueError(f"--ema must be a decay in [0, 1), got {cfg.ema}")
    float_epochs, qat_epochs, _ = cfg.schedule()
    if cfg.mode != "float" and float_epochs == 0 and not pretrained:
        raise ValueError(
            f"--qat-epochs {qat_epochs} with --epochs {cfg.epochs} leaves no float epoch: quantization-aware "
            "training would start from random weights and learn nothing; use --qat-epochs below --epochs "
            "(or --init a float checkpoint)")


RECIPE_KEYS = ("arch", "mode", "sigma", "epochs", "seed", "batch_size", "lr", "consistency", "noise_copies",
               "consistency_eta", "weight_decay", "cutout", "trivial_augment", "ema")   # a resumed run continues the same recipe or is refused


def check_resume(cfg: TrainConfig, stored: dict, path: str) -> None:
    """ValueError when checkpoint ``path`` was written by a run with another recipe than ``cfg``."""
    defaults = TrainConfig()
    diff = [k for k in RECIPE_KEYS if stored.get(k, getattr(defaults, k)) != getattr(cfg, k)]
    if diff:
        parts = ", ".join(f"{k} {stored.get(k, getattr(defaults, k))!r} -> {getattr(cfg, k)!r}" for k in diff)
        raise ValueError(f"--resume {path} was written by another recipe ({parts}); rerun with its options "
                         "or start a new --checkpoint")


def _lr_at(cfg: TrainConfig, step: int, total: int) -> float:
    return 0.5 * cfg.lr * (1.0 + math.cos(math.pi * step / max(1, total)))


def _make_optimizer(cfg: TrainConfig, module: nn.Module) -> torch.optim.Optimizer:
    decay, no_decay = [], []
    for name, p in module.named_parameters():
        (no_decay if p.dim() <= 1 else decay).append(p)
    return torch.optim.SGD(
        [{"params": decay, "weight_decay": cfg.weight_decay}, {"params": no_decay, "weight_decay": 0.0}],
        lr=cfg.lr, momentum=0.9, nesterov=True,
    )


def quantize_input(x: torch.Tensor) -> torch.Tensor:
    """[0, 1]-scale float input -> the uint8 input grid (scale 1/255, zero point 0), as float."""
    return torch.clamp(torch.round(x * 255.0), 0.0, 255.0) / 255.0


def _batch_input(cfg: TrainConfig, xb: np.ndarray, noise, gen: torch.Generator | None):
    """Noisy float32 NCHW batch; ``noise``: int noise (intrs) or None (float modes draw from ``gen``)."""
    if cfg.mode in FLOAT_NOISE_MODES:
        x = clean_input(xb)
        x = x + cfg.sigma * torch.randn(x.shape, generator=gen)
        return quantize_input(x) if cfg.mode == "floatq" else x
    return noisy_clip(xb, noise)


@torch.no_grad()
def evaluate(cfg: TrainConfig, net: nn.Module, x: np.ndarray, y: np.ndarray, noisy: bool,
             batch: int = 256) -> float:
    """Top-1 accuracy, clean or under one noise draw per image (the base classifier under noise)."""
    net.eval()
    if noisy and cfg.mode not in FLOAT_NOISE_MODES:
        noise = discrete_noise(cfg.sigma, x.shape, cfg.seed, TEST_NOISE_STREAM)
    gen = torch.Generator().manual_seed(cfg.seed + TEST_NOISE_STREAM)
    correct = 0
    for i in range(0, len(x), batch):
        xb = x[i:i + batch]
        if not noisy:
            inp = clean_input(xb)
        elif cfg.mode in FLOAT_NOISE_MODES:
            inp = _batch_input(cfg, xb, None, gen)
        else:
            inp = noisy_clip(xb, noise[i:i + batch])
        correct += int((net(inp).argmax(1).numpy() == y[i:i + batch]).sum())
    return correct / max(1, len(x))


def checkpoint_state(epoch, net, optimizer, phase, cfg, history, ema=None) -> dict:
    state = {
        "epoch": epoch, "phase": phase, "model": net.state_dict(), "optimizer": optimizer.state_dict(),
        "config": {k: v for k, v in cfg.__dict__.items() if k != "extra"}, "history": history,
    }
    if ema is not None:
        state["ema"] = ema.state_dict()
    return state


def _weight_average(cfg: TrainConfig, net: nn.Module):
    """The float phase's exponential moving average of ``net`` (weights and batch-norm buffers), or None."""
    if cfg.ema <= 0:
        return None
    from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn

    return AveragedModel(net, multi_avg_fn=get_ema_multi_avg_fn(cfg.ema), use_buffers=True)


def _take_average(cfg: TrainConfig, net: nn.Module, ema, x_train: np.ndarray) -> nn.Module:
    """``net`` with the averaged weights when an average is kept, its batch-norm statistics recomputed.

    The moving average of running statistics is not the statistics of the averaged weights, so they are
    measured again (:func:`torch.optim.swa_utils.update_bn`: a cumulative average over one pass) on the
    training images under the calibration noise, before batch norms are folded into the convolutions.
    """
    if ema is None:
        return net
    from torch.optim.swa_utils import update_bn

    net.load_state_dict(ema.module.state_dict())
    noise = _calibration_noise(cfg, x_train.shape)
    gen = torch.Generator().manual_seed(cfg.seed * 100003 + 434343)
    batches = (_batch_input(cfg, x_train[i:i + cfg.batch_size],
                            None if noise is None else noise[i:i + cfg.batch_size], gen)
               for i in range(0, len(x_train), cfg.batch_size))   # one pass: update_bn reads it once
    with torch.no_grad():
        update_bn(batches, net)
    return net


def _calibration_noise(cfg: TrainConfig, shape) -> np.ndarray | None:
    """The calibration bank (CALIB_NOISE_STREAM) for images of ``shape``; None where torch draws the noise.

    The sampler keys each value by (image row, pixel), so a shorter bank is the start of a longer one."""
    if cfg.mode in FLOAT_NOISE_MODES:
        return None
    return discrete_noise(cfg.sigma, shape, cfg.seed, CALIB_NOISE_STREAM)


def train(cfg: TrainConfig, x_train, y_train, x_test, y_test, num_classes: int,
          checkpoint: str | None = None, resume: str | None = None, log=print, init: str | None = None,
          progress=None) -> dict:
    """Train and return {"model": float or QResNet (eval mode), "metrics": {...}, "history": [...]}.

    ``init``: a checkpoint taken in the float phase (of this architecture) whose weights start the
    float phase here (e.g. fine-tuning a model trained at another sigma); the schedule is unchanged.
    ``progress(epoch, steps done, steps per epoch)`` is called after every optimizer step.
    With no QAT epochs (intrs, floatq) the float network is still quantized at the end: batch norms
    folded, observers calibrated on noisy training batches (post-training quantization).
    """
    torch.set_num_threads(cfg.threads)
    torch.manual_seed(cfg.seed)
    n, h, w, c = x_train.shape
    float_epochs, qat_epochs, frozen_epochs = cfg.schedule()
    steps_per_epoch = math.ceil(n / cfg.batch_size)
    total_steps = cfg.epochs * steps_per_epoch

    net: nn.Module = fm.build(cfg.arch, num_classes, c, h)
    optimizer = _make_optimizer(cfg, net)
    phase, start_epoch, history = "float", 0, []
    ema = None   # the float phase's weight average (cfg.ema > 0), set below
    if init and not resume:
        state = torch.load(init, weights_only=True)
        if state["phase"] != "float":
            raise ValueError(f"--init checkpoint {init} is not from the float phase")
        net.load_state_dict(state["model"])
        log(f"initialized from {init} (float weights after epoch {state['epoch'] + 1})")
    if resume:
        state = torch.load(resume, weights_only=True)
        check_resume(cfg, state.get("config", {}), resume)
        phase, start_epoch, history = state["phase"], state["epoch"] + 1, list(state["history"])
        if phase == "qat":
            net = qat.quantize_model(net)
            optimizer = _make_optimizer(cfg, net)
        net.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        log(f"resumed from {resume} after epoch {state['epoch'] + 1} ({phase})")
    if phase == "float":
        ema = _weight_average(cfg, net)
        if resume and ema is not None:   # check_resume has matched the decay: the checkpoint holds the average
            ema.load_state_dict(state["ema"])

    t_start = time.time()
    for epoch in range(start_epoch, cfg.epochs):
        if epoch >= float_epochs and phase == "float" and qat_epochs > 0:
            net = _start_qat(cfg, _take_average(cfg, net, ema, x_train), x_train, log)
            optimizer = _make_optimizer(cfg, net)
            phase, ema = "qat", None
        if phase == "qat" and epoch >= cfg.epochs - frozen_epochs:
            net.freeze_observers(True)
        rng = np.random.default_rng([cfg.seed, epoch])
        gen = torch.Generator().manual_seed(cfg.seed * 100003 + epoch)
        copies = cfg.noise_copies
        noise = None
        if cfg.mode not in FLOAT_NOISE_MODES:
            noise = [discrete_noise(cfg.sigma, x_train.shape, *epoch_noise_key(cfg.seed, epoch, j))
                     for j in range(copies)]
        order = rng.permutation(n)
        net.train()
        t0, loss_sum, correct, seen = time.time(), 0.0, 0, 0
        lr_first = None
        for b in range(steps_per_epoch):
            idx = order[b * cfg.batch_size:(b + 1) * cfg.batch_size]
            if len(idx) < 2:
                continue
            step = epoch * steps_per_epoch + b
            lr = _lr_at(cfg, step, total_steps) * (cfg.qat_lr_scale if phase == "qat" else 1.0)
            for g in optimizer.param_groups:
                g["lr"] = lr
            lr_first = lr if lr_first is None else lr_first
            xb = augment(x_train[idx], rng, cfg.flip, cfg.cutout, cfg.trivial_augment)
            inp = torch.cat([_batch_input(cfg, xb, None if noise is None else noise[j][idx], gen)
                             for j in range(copies)])   # (copies * B, C, H, W), copy-major
            target = torch.as_tensor(y_train[idx])
            out = net(inp)
            loss = consistency_objective(out, target, copies, cfg.consistency, cfg.consistency_eta)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            nn.utils.clip_grad_norm_(net.parameters(), 5.0)
            optimizer.step()
            if ema is not None:
                ema.update_parameters(net)
            loss_sum += loss.item() * len(idx)
            correct += int((out[:len(idx)].argmax(1) == target).sum())   # copy 0: one noise draw per image
            seen += len(idx)
            if progress is not None:
                progress(epoch, b + 1, steps_per_epoch)
        # the network being trained: the average's running statistics are not its own until _take_average
        test_noisy = evaluate(cfg, net, x_test, y_test, noisy=True)
        rec = {"epoch": epoch + 1, "phase": phase, "loss": round(loss_sum / seen, 4),
               "train_acc": round(correct / seen, 4), "test_acc_noisy": round(test_noisy, 4),
               "seconds": round(time.time() - t0, 1)}
        history.append(rec)
        log(f"epoch {epoch + 1}/{cfg.epochs} [{phase}] loss {rec['loss']:.4f} train {rec['train_acc']:.3f} "
            f"test(noisy) {test_noisy:.3f} lr {lr_first or 0:.4f}->{optimizer.param_groups[0]['lr']:.4f} "
            f"{rec['seconds']:.0f}s")
        if checkpoint:
            torch.save(checkpoint_state(epoch, net, optimizer, phase, cfg, history, ema), checkpoint)
    if phase == "float":
        net = _take_average(cfg, net, ema, x_train)
    if phase == "float" and cfg.mode != "float":  # no QAT epoch ran: quantize after training
        net = _start_qat(cfg, net, x_train, log)
        net.freeze_observers(True)
    net.eval()
    metrics = {
        "test_acc_clean": round(evaluate(cfg, net, x_test, y_test, noisy=False), 4),
        "test_acc_noisy": round(evaluate(cfg, net, x_test, y_test, noisy=True), 4),
        "train_seconds": round(time.time() - t_start, 1),
    }
    log(f"final: test clean {metrics['test_acc_clean']:.4f}, test under noise (sigma {cfg.sigma}) "
        f"{metrics['test_acc_noisy']:.4f}, {metrics['train_seconds']:.0f}s")
    return {"model": net, "metrics": metrics, "history": history}


def _start_qat(cfg: TrainConfig, net: nn.Module, x_train, log, calib_batches: int = 16) -> qat.QResNet:
    """Fold batch norms, calibrate the observers on noisy training batches (no gradient)."""
    qnet = qat.quantize_model(net)
    qnet.train()
    rng = np.random.default_rng([cfg.seed, 424242])
    pool = min(len(x_train), calib_batches * cfg.batch_size)
    noise = _calibration_noise(cfg, (pool,) + x_train.shape[1:])
    gen = torch.Generator().manual_seed(cfg.seed * 100003 + 424242)
    with torch.no_grad():
        for b in range(calib_batches):
            idx = rng.permutation(pool)[: cfg.batch_size]
            qnet(_batch_input(cfg, x_train[idx], None if noise is None else noise[idx], gen))
    log("batch norms folded, observers calibrated; quantization-aware training starts")
    return qnet
