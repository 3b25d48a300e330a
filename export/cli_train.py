"""`intengine train`: noise-augmented training and export to model.int8 (torch is imported lazily).

Also runnable as ``python -m export.cli_train ...`` with the same options.
"""
from __future__ import annotations

import argparse
import shlex
import sys


NOISE_TEXT = {
    "intrs": "discrete Gaussian N_Z(0,(255 sigma)^2) from kernels.sampler, clip(v+n,0,255)",
    "float": "continuous Gaussian N(0,sigma^2) on [0,1] pixels, no clip",
    "floatq": "continuous Gaussian N(0,sigma^2) on [0,1] pixels, then clip(round(255 v),0,255)",
}


CHANCE_FACTOR = 1.5  # "at chance": clean accuracy below 1.5x 1/K (junk lands within noise of 1/K)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The options of `intengine train`; use argparse.ArgumentDefaultsHelpFormatter to show defaults."""
    parser.add_argument("--data", required=True,
                        help="CIFAR-10 .npz (x_train/y_train/x_test/y_test) or cifar-10-batches-py folder, or 'digits'")
    parser.add_argument("--arch", default="resnet20", choices=["resnet20", "small", "resnet50"],
                        help="network: resnet20 (CIFAR), small (8x8 digits), resnet50 (ImageNet layout)")
    parser.add_argument("--sigma", type=float, default=0.25, help="noise level in pixel scale [0, 1]")
    parser.add_argument("--epochs", type=int, default=30, help="all epochs (float + QAT)")
    parser.add_argument("--qat-epochs", type=int, default=None,
                        help="epochs with fake quantization (None: about 1/3, at least one float epoch first)")
    parser.add_argument("--freeze-epochs", type=int, default=None,
                        help="last QAT epochs with frozen observers (None: about 1/3 of QAT)")
    parser.add_argument("--batch-size", type=int, default=128, help="images per optimizer step")
    parser.add_argument("--lr", type=float, default=0.1, help="peak learning rate (cosine schedule, > 0)")
    parser.add_argument("--weight-decay", type=float, default=5e-4,
                        help="SGD weight decay on weights (not on biases or batch-norm parameters)")
    parser.add_argument("--cutout", type=int, default=0, metavar="PIXELS",
                        help="augmentation: one PIXELS x PIXELS square per training image set to black "
                             "(DeVries & Taylor 2017; 0: off)")
    parser.add_argument("--trivial-augment", action="store_true",
                        help="augmentation: one TrivialAugment operation (Mueller & Hutter 2021, RandAugment's "
                             "ranges) per training image, after the crop and flip, before the cutout")
    parser.add_argument("--ema", type=float, default=0.0, metavar="DECAY",
                        help="keep an exponential moving average of the float phase's weights (Polyak averaging, "
                             "e.g. 0.999); QAT starts from the average (0: off)")
    parser.add_argument("--train-images", type=int, default=None,
                        help="train on this many training images (a seeded random subset) for quick trials "
                             "(None: all)")
    parser.add_argument("--out", required=True, help="output model.int8 (float mode: float32 safetensors)")
    parser.add_argument("--seed", type=int, default=0, help="weights, order, augmentation and noise seed")
    parser.add_argument("--mode", choices=list(NOISE_TEXT), default="intrs",
                        help="intrs: QAT + discrete Gaussian noise from the engine's sampler (IntRS-quant); "
                             "float: float32, continuous noise (Cohen et al., FloatRS-fp); floatq: QAT, continuous "
                             "noise quantized to the input grid (FloatRS-quant)")
    parser.add_argument("--resume", default=None, help="checkpoint to resume from")
    parser.add_argument("--checkpoint", default=None, help="checkpoint written after every epoch (None: OUT.ckpt)")
    parser.add_argument("--init", default=None,
                        help="start from the float weights of a checkpoint (float phase), e.g. another sigma's run")
    parser.add_argument("--threads", type=int, default=2, help="torch threads")
    parser.add_argument("--consistency", nargs="?", const="paper", default=None, metavar="LAMBDA",
                        help="consistency regularization (Jeong & Shin 2020) with weight LAMBDA; bare flag: the "
                             "paper's CIFAR-10 value for --sigma (20 up to 0.5, 10 above)")
    parser.add_argument("--noise-copies", type=int, default=None, metavar="M",
                        help="noisy copies of each image per step (None: 2 with --consistency, else 1)")
    parser.add_argument("--consistency-eta", type=float, default=0.5,
                        help="weight of the entropy term of the consistency loss (the paper's 0.5)")


def subset(x, y, k: int | None, seed: int):
    """The first ``k`` images of a seeded permutation (all when k is None), order kept."""
    if k is None:
        return x, y
    from intengine.errors import IntengineError

    if not 2 <= k:
        raise IntengineError(f"--train-images must be >= 2, got {k}")
    if k >= len(x):
        return x, y
    import numpy as np

    idx = np.sort(np.random.default_rng([seed, 7]).permutation(len(x))[:k])
    return x[idx], y[idx]


def consistency_settings(args) -> tuple[float, int]:
    """(lambda, noise copies) from --consistency / --noise-copies; IntengineError on a bad value."""
    from export.train import CONSISTENCY_COPIES, paper_lambda
    from intengine.errors import IntengineError

    if args.consistency is None:
        lbd = 0.0
    elif args.consistency == "paper":
        lbd = paper_lambda(args.sigma)
    else:
        try:
            lbd = float(args.consistency)
        except ValueError:
            raise IntengineError(f"--consistency must be a number >= 0, got {args.consistency!r}") from None
    copies = args.noise_copies if args.noise_copies is not None else (CONSISTENCY_COPIES if lbd > 0 else 1)
    return lbd, copies


def chance_warning(acc: float, num_classes: int) -> str | None:
    """A warning text when clean test accuracy ``acc`` is at chance level (see CHANCE_FACTOR), else None."""
    chance = 1.0 / max(1, num_classes)
    if acc >= CHANCE_FACTOR * chance:
        return None
    return (f"clean test accuracy {100 * acc:.1f}% is at chance level ({100 * chance:.1f}% for {num_classes} "
            f"classes): this model has not learned, its certificates are meaningless; train longer or "
            f"check --lr / --epochs")


def _epoch_bar(epochs: int):
    """(progress callback, closer): a tqdm bar per epoch on a terminal's stderr, else no-ops."""
    if not sys.stderr.isatty():
        return None, lambda: None
    from tqdm import tqdm

    state = {"epoch": None, "bar": None}

    def progress(epoch, done, total):
        if state["epoch"] != epoch:
            if state["bar"] is not None:
                state["bar"].close()
            state["epoch"] = epoch
            state["bar"] = tqdm(total=total, desc=f"epoch {epoch + 1}/{epochs}", unit="batch",
                                file=sys.stderr, leave=False, dynamic_ncols=True)
        state["bar"].update(done - state["bar"].n)

    def close():
        if state["bar"] is not None:
            state["bar"].close()

    return progress, close


def run(args: argparse.Namespace) -> int:
    try:
        import torch  # noqa: F401
    except ImportError:
        from intengine.errors import IntengineError

        raise IntengineError("training needs torch: pip install 'intengine[torch]'") from None
    import platform

    from export import convert
    from export.train import TrainConfig, check_config, train
    from intengine.datasets import DIGITS, load_dataset
    from intengine.errors import IntengineError

    lbd, copies = consistency_settings(args)
    cfg = TrainConfig(arch=args.arch, sigma=args.sigma, epochs=args.epochs, qat_epochs=args.qat_epochs,
                      freeze_epochs=args.freeze_epochs, mode=args.mode, seed=args.seed,
                      batch_size=args.batch_size, lr=args.lr, threads=args.threads,
                      weight_decay=args.weight_decay, cutout=args.cutout,
                      trivial_augment=args.trivial_augment, ema=args.ema,
                      flip=(args.data != "digits"),  # digits are not mirror-symmetric
                      consistency=lbd, noise_copies=copies, consistency_eta=args.consistency_eta)
    try:
        check_config(cfg, pretrained=bool(args.init or args.resume))
    except ValueError as exc:
        raise IntengineError(str(exc)) from None
    x_train, y_train, names = load_dataset(args.data, "train")
    x_test, y_test, _ = load_dataset(args.data, "test")
    dataset = "sklearn digits 8x8 (80/20 split, seed 0)" if args.data == DIGITS else f"CIFAR-10 from {args.data}"
    x_train, y_train = subset(x_train, y_train, args.train_images, args.seed)
    ckpt = args.checkpoint or (args.out + ".ckpt")
    recipe = f" consistency lambda={lbd:g} eta={cfg.consistency_eta:g}" if lbd > 0 else ""
    print(f"training {args.arch} ({args.mode}{recipe}) sigma={args.sigma} epochs={args.epochs} "
          f"schedule(float,qat,frozen)={cfg.schedule()} noise copies={copies} seed={args.seed} "
          f"on {len(x_train)} images", flush=True)
    progress, close_bar = _epoch_bar(args.epochs)
    try:
        result = train(cfg, x_train, y_train, x_test, y_test, len(names), checkpoint=ckpt, resume=args.resume,
                       log=lambda s: print(s, flush=True), init=args.init, progress=progress)
    except ValueError as exc:   # a checkpoint that does not fit this run (--resume, --init): one line
        raise IntengineError(str(exc)) from None
    finally:
        close_bar()
    warning = chance_warning(result["metrics"]["test_acc_clean"], len(names))
    float_e, qat_e, frozen_e = cfg.schedule()
    provenance = {
        "dataset": dataset, "train_images": int(len(x_train)), "test_images": int(len(x_test)),
        "arch": args.arch, "mode": args.mode, "epochs": args.epochs, "float_epochs": float_e,
        "qat_epochs": qat_e, "frozen_observer_epochs": frozen_e, "seed": args.seed,
        "batch_size": args.batch_size, "lr": args.lr, "weight_decay": args.weight_decay,
        "augmentation": "random crop (zero padding), " + ("horizontal flip" if cfg.flip else "no flip")
                        + (", TrivialAugment (RandAugment ranges)" if args.trivial_augment else "")
                        + (f", cutout {args.cutout}x{args.cutout}" if args.cutout else ""),
        "init": _init_note(args.init),
        "weight_average": (f"exponential moving average of the float phase's weights, decay {args.ema:g}"
                           if args.ema else "none"),
        "noise": NOISE_TEXT[args.mode],
        "noise_copies": copies,
        "objective": (f"consistency regularization (Jeong & Shin 2020): mean CE over {copies} noisy copies + "
                      f"{lbd:g} * mean KL(p_bar || p_j) + {cfg.consistency_eta:g} * H(p_bar)" if lbd > 0
                      else f"cross-entropy under noise ({copies} noisy cop{'y' if copies == 1 else 'ies'} "
                           f"per image)"),
        "consistency_lambda": lbd, "consistency_eta": cfg.consistency_eta if lbd > 0 else 0.0,
        "test_acc_clean": result["metrics"]["test_acc_clean"],
        "test_acc_noisy": result["metrics"]["test_acc_noisy"],
        "train_seconds": result["metrics"]["train_seconds"],
        "command": "intengine train " + " ".join(shlex.quote(a) for a in _argv_of(args)),
        "torch": torch.__version__, "python": platform.python_version(),
    }
    if warning:
        provenance["warning"] = warning
        bar = "!" * 78
        print(f"{bar}\nWARNING: {warning}\n{bar}", file=sys.stderr, flush=True)
    if args.mode == "float":
        convert.write_float_baseline(result["model"], args.out, args.sigma, names, provenance)
    else:
        convert.write_model(result["model"], args.out, sigma=args.sigma, class_names=names, provenance=provenance)
    print(f"wrote {args.out}", flush=True)
    return 0


def _init_note(init) -> str:
    if not init:
        return "random (seeded)"
    import torch

    state = torch.load(init, weights_only=True)
    cfg = state.get("config", {})
    return (f"float weights of a {cfg.get('arch')} run at sigma={cfg.get('sigma')} (seed {cfg.get('seed')}) "
            f"after {state['epoch'] + 1} epochs")


def _argv_of(args) -> list[str]:
    out = ["--data", args.data, "--arch", args.arch, "--sigma", str(args.sigma), "--epochs", str(args.epochs)]
    for opt, val in (("--qat-epochs", args.qat_epochs), ("--freeze-epochs", args.freeze_epochs)):
        if val is not None:
            out += [opt, str(val)]
    if args.train_images is not None:
        out += ["--train-images", str(args.train_images)]
    if args.batch_size != 128:
        out += ["--batch-size", str(args.batch_size)]
    if args.lr != 0.1:
        out += ["--lr", str(args.lr)]
    if args.weight_decay != 5e-4:
        out += ["--weight-decay", str(args.weight_decay)]
    if args.trivial_augment:
        out += ["--trivial-augment"]
    if args.cutout:
        out += ["--cutout", str(args.cutout)]
    if args.ema:
        out += ["--ema", f"{args.ema:g}"]
    if args.init:
        out += ["--init", args.init]
    if args.consistency is not None:
        out += ["--consistency"] + ([] if args.consistency == "paper" else [str(args.consistency)])
    if args.noise_copies is not None:
        out += ["--noise-copies", str(args.noise_copies)]
    if args.consistency_eta != 0.5:
        out += ["--consistency-eta", str(args.consistency_eta)]
    out += ["--out", args.out, "--seed", str(args.seed), "--mode", args.mode]
    return out


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="intengine train", formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    add_arguments(parser)
    args = parser.parse_args(argv)
    try:
        return run(args)
    except Exception as exc:  # one line for user errors
        from intengine.errors import IntengineError

        if isinstance(exc, IntengineError):
            print(f"error: {exc}", file=sys.stderr)
            return 2
        raise


if __name__ == "__main__":
    sys.exit(main())
