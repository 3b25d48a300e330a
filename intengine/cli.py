"""``intengine`` command line: certify, predict, certify-dataset, predict-dataset, report, info, train,
export-onnx, import-onnx.

Every user error (IntengineError, a missing file, a bad option value) ends as one line
``intengine: error: ...`` on stderr and exit code 2, never a traceback.
"""
from __future__ import annotations

import argparse
import json
import sys

from intengine.errors import IntengineError

EXIT_USAGE = 2


class _CliError(Exception):
    pass


def _positive_int(name):
    def parse(text):
        try:
            v = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{name} must be an integer, got {text!r}") from None
        if v < 1:
            raise argparse.ArgumentTypeError(f"{name} must be >= 1, got {v}")
        return v
    return parse


def _float(name):
    def parse(text):
        try:
            return float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{name} must be a number, got {text!r}") from None
    return parse


def _seed(text):
    try:
        v = int(text, 0)
    except ValueError:
        raise argparse.ArgumentTypeError(f"seed must be an integer, got {text!r}") from None
    if not 0 <= v < 2**64:
        raise argparse.ArgumentTypeError(f"seed must be in [0, 2^64), got {v}")
    return v


def _size(text):
    from intengine.membudget import parse_size

    try:
        return parse_size(text)
    except IntengineError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _add_smoothing_options(p: argparse.ArgumentParser, *, certify: bool = True) -> None:
    p.add_argument("--sigma", type=_float("sigma"), default=None,
                   help="noise level, pixel scale (default: the model's training sigma)")
    if certify:
        p.add_argument("--n0", "--N0", type=int, default=100, help="selection samples (default 100)")
    else:
        p.add_argument("--n0", "--N0", type=int, default=100, help=argparse.SUPPRESS)
    p.add_argument("--n", "--N", type=int, default=100_000, help="estimation samples (default 100000)")
    p.add_argument("--alpha", type=_float("alpha"), default=0.001, help="failure probability (default 0.001)")
    p.add_argument("--batch", type=int, default=1000, help="noisy samples per forward pass (default 1000; "
                   "lowered to fit --memory-budget)")
    p.add_argument("--memory-budget", type=_size, default=None, metavar="SIZE",
                   help="cap on the memory of one batch, e.g. 2G, 512M (default 2G); the batch shrinks to fit")
    p.add_argument("--seed", type=_seed, default=None, help="noise seed (default: from the OS, reported)")
    p.add_argument("--threads", type=_positive_int("threads"), default=None,
                   help="Numba threads (default: all available cores)")
    p.add_argument("--sampler", choices=("table", "cks"), default="table",
                   help="discrete Gaussian sampler: table (fast, failure bin) or cks (exact) (default table)")
    p.add_argument("--backend", choices=("numba", "reference"), default="numba",
                   help="kernel backend: numba (fast) or reference (NumPy, the spec) (default numba)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")


class _Parser(argparse.ArgumentParser):
    """argparse with the CLI's one-line error contract (argparse prints usage and a second line)."""

    def error(self, message):
        self.exit(EXIT_USAGE, f"intengine: error: {' '.join(message.split())} (see {self.prog} --help)\n")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="intengine",
        description="Certified robustness (randomized smoothing) for int8 networks, with integers only.")
    from intengine import __version__

    parser.add_argument("--version", action="version", version=f"intengine {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True

    p = sub.add_parser("certify", help="smoothed prediction and certified l2 radius for one image")
    p.add_argument("model", help="model.int8 file")
    p.add_argument("image", help=".npy image: HWC or CHW, uint8 0..255 or float 0..1")
    _add_smoothing_options(p)
    p.add_argument("--json", action="store_true", help="print one JSON object")

    p = sub.add_parser("predict", help="smoothed prediction (Cohen's PREDICT, two-sided test) for one image")
    p.add_argument("model", help="model.int8 file")
    p.add_argument("image", help=".npy image: HWC or CHW, uint8 0..255 or float 0..1")
    _add_smoothing_options(p, certify=False)
    p.add_argument("--json", action="store_true", help="print one JSON object")

    for name, text in (("certify-dataset", "CERTIFY over a dataset; Cohen's TSV + counts; resumable"),
                       ("predict-dataset", "PREDICT over a dataset; Cohen's predict TSV + counts; resumable")):
        p = sub.add_parser(name, help=text)
        p.add_argument("model", help="model.int8 file")
        p.add_argument("data", help="CIFAR-10 .npz (x_test/y_test...), cifar-10-batches-py folder, or 'digits'")
        p.add_argument("--out", required=True, help="results .tsv (resumed when it exists)")
        p.add_argument("--split", choices=("test", "train"), default="test", help="dataset split (default test)")
        p.add_argument("--skip", type=_positive_int("skip"), default=1, help="index stride (default 1)")
        p.add_argument("--max", type=int, default=None,
                       help="index bound as in Cohen et al.'s certify.py: images idx = 0, skip, 2 skip, ... "
                            "below MAX (--skip 100 --max 1000: 10 images) (default: all)")
        p.add_argument("--max-images", type=int, default=None,
                       help="run at most this many of the selected images (default: all)")
        _add_smoothing_options(p, certify=name == "certify-dataset")
        p.add_argument("--json", action="store_true", help="print a JSON summary at the end")
        if name == "certify-dataset":  # one task per image on Dask (intengine.cluster)
            g = p.add_mutually_exclusive_group()
            g.add_argument("--workers", type=_positive_int("workers"), default=None,
                           help="run on a Dask LocalCluster of this many worker processes (default: in process)")
            g.add_argument("--scheduler", default=None, metavar="tcp://HOST:8786",
                           help="run on this running Dask cluster")
            p.add_argument("--threads-per-worker", type=_positive_int("threads-per-worker"), default=None,
                           help="Numba threads per Dask worker (default: a machine's cores / its task slots)")

    p = sub.add_parser("report", help="certified-accuracy table (and plot) from results .tsv files")
    p.add_argument("results", nargs="+", help="results .tsv files")
    p.add_argument("--plot", default=None, help="write certified accuracy vs radius to this .png")
    p.add_argument("--radii", default=None, help="comma-separated radii (default 0,0.25,...,1.5)")
    p.add_argument("--json", action="store_true", help="print the summaries as JSON")

    p = sub.add_parser("info", help="describe a model file")
    p.add_argument("model", help="model.int8 file")

    for name, text in (("train", "train a QAT model with noise augmentation (needs intengine[torch])"),
                       ("export-onnx", "export a model to standard QDQ ONNX (needs intengine[onnx])"),
                       ("import-onnx", "import a QDQ ONNX model as model.int8 (needs intengine[onnx])")):
        p = sub.add_parser(name, help=text, add_help=False)
        p.add_argument("rest", nargs=argparse.REMAINDER, help="options of the command (see its --help)")
    return parser


# ---------------------------------------------------------------------------

def _check_common(args) -> None:
    from intengine.certificate import check_options

    if args.sigma is not None:
        check_options(sigma=args.sigma)
    check_options(alpha=args.alpha, n0=args.n0, n=args.n)
    if args.batch < 1:
        raise IntengineError(f"batch must be >= 1, got {args.batch}")
    for opt in ("max", "max_images"):
        if getattr(args, opt, None) is not None and getattr(args, opt) < 0:
            raise IntengineError(f"--{opt.replace('_', '-')} must be >= 0, got {getattr(args, opt)}")


def _load_model(path):
    from intengine.engine import load_model

    return load_model(path)


def _progress(args, total_desc: str):
    """(callback, closer): a tqdm bar on stderr when it is a terminal, else no-ops."""
    if args.no_progress or not sys.stderr.isatty():
        return None, lambda: None
    from tqdm import tqdm

    bar = tqdm(total=0, desc=total_desc, unit="sample", file=sys.stderr, leave=False, dynamic_ncols=True)

    def update(done, total):
        if bar.total != total:
            bar.reset(total=total)
        bar.update(done - bar.n)

    return update, bar.close


def _label_text(model, label):
    names = getattr(model, "class_names", None) or []
    if label is None:
        return "ABSTAIN"
    return f"{label} ({names[label]})" if label < len(names) else str(label)


def format_human(model, res, model_path, image_path) -> str:
    lines = [f"{res.mode} {image_path} with {model_path}"]
    if res.mode == "certify":
        if res.abstain:
            lines.append(f"  prediction : ABSTAIN (selected class {_label_text(model, res.guess)} "
                         f"got {res.count_top} of {res.n} votes; pA_lower {res.p_a_lower:.6f} <= 1/2)")
            lines.append("  radius     : none (abstained)")
        else:
            lines.append(f"  prediction : class {_label_text(model, res.label)}")
            lines.append(f"  radius     : {res.radius:.6f} (l2, pixel scale [0,1]); integer units: "
                         f"certified for every integer perturbation with |delta|^2 <= {res.radius_sq_int} "
                         f"(|delta| < {255 * res.radius:.3f} grid steps)")
            lines.append(f"  pA_lower   : {res.p_a_lower:.6f}")
        lines.append(f"  counts     : top class {res.count_top}/{res.n} (estimation), "
                     f"selection {max(res.counts_selection) if res.counts_selection else 0}/{res.n0}, "
                     f"failed samples {res.failed}")
        lines.append(f"  estimation : {res.counts_estimation}")
    else:
        if res.abstain:
            lines.append(f"  prediction : ABSTAIN (top class {_label_text(model, res.guess)} with "
                         f"{res.count_top} vs {res.count_runner_up} votes; p-value {res.p_value:.3g} > alpha)")
        else:
            lines.append(f"  prediction : class {_label_text(model, res.label)} "
                         f"(p-value {res.p_value:.3g} <= alpha)")
        lines.append(f"  counts     : top {res.count_top}, runner-up {res.count_runner_up} of {res.n} "
                     f"(failed samples {res.failed}); all: {res.counts_estimation}")
    lines.append(f"  settings   : sigma {res.sigma:g} (sigma_int^2 = {res.sigma_sq_int}), alpha {res.alpha:g}, "
                 f"seed {res.seed}, sampler {res.sampler}, backend {res.backend}, batch {res.batch}")
    lines.append(f"  time       : {res.seconds:.2f} s")
    return "\n".join(lines)


def cmd_certify_or_predict(args) -> int:
    from intengine.images import load_image
    from intengine.notices import compile_notice, set_threads_noting_cap
    from intengine.smoothing import certify, predict

    _check_common(args)
    set_threads_noting_cap(args.threads)
    model = _load_model(args.model)
    x = load_image(args.image, model.input_shape)
    compile_notice(args.backend)
    progress, close = _progress(args, args.command)
    try:
        common = dict(sigma=args.sigma, n=args.n, alpha=args.alpha, batch=args.batch, seed=args.seed,
                      sampler=args.sampler, backend=args.backend, progress=progress,
                      memory_budget=args.memory_budget)
        if args.command == "certify":
            res = certify(model, x, n0=args.n0, **common)
        else:
            res = predict(model, x, **common)
    finally:
        close()
    if args.json:
        print(json.dumps(res.to_dict()))
    else:
        print(format_human(model, res, args.model, args.image))
    return 0


def cmd_certify_dataset(args) -> int:
    from intengine import cli_dataset
    from intengine.notices import set_threads_noting_cap

    _check_common(args)
    executor = _cluster_executor(args) if args.command == "certify-dataset" else None
    if executor is None:
        set_threads_noting_cap(args.threads)
    model = _load_model(args.model)
    return cli_dataset.run(args, model, "certify" if args.command == "certify-dataset" else "predict", executor)


def _cluster_executor(args):
    """A DaskExecutor for --workers / --scheduler, None for a run in this process."""
    if args.workers is None and args.scheduler is None:
        if args.threads_per_worker is not None:
            raise IntengineError("--threads-per-worker needs --workers or --scheduler (use --threads)")
        return None
    if args.threads is not None:
        raise IntengineError("--threads sets this process's threads; with a cluster use --threads-per-worker")
    from intengine.cluster import DaskExecutor

    return DaskExecutor(workers=args.workers, scheduler=args.scheduler, threads=args.threads_per_worker,
                        log=lambda line: print(f"intengine: {line}", file=sys.stderr, flush=True))


def cmd_report(args) -> int:
    from intengine.report import format_table, parse_radii, plot, read_results, summarize

    radii = parse_radii(args.radii)
    results = [read_results(p) for p in args.results]
    summaries = [summarize(r, radii) for r in results]
    if args.json:
        print(json.dumps(summaries))
    else:
        print(format_table(summaries))
    if args.plot:
        plot(results, args.plot)
        if not args.json:
            print(f"plot written to {args.plot}")
    return 0


def cmd_info(args) -> int:
    from intengine.engine import info_text

    model = _load_model(args.model)
    print(info_text(model, args.model))
    return 0


def cmd_torch(args) -> int:
    import importlib

    module_name = {"train": "export.cli_train", "export-onnx": "export.onnx_export",
                   "import-onnx": "export.onnx_import"}[args.command]
    extra = "torch" if args.command == "train" else "onnx"
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise _CliError(f"`intengine {args.command}` needs the {extra} extra: install intengine[{extra}] "
                        f"({exc})") from None
    sub = argparse.ArgumentParser(prog=f"intengine {args.command}", formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    module.add_arguments(sub)
    sub_args = sub.parse_args(args.rest)
    rc = module.run(sub_args)
    return int(rc or 0)


COMMANDS = {
    "certify": cmd_certify_or_predict,
    "predict": cmd_certify_or_predict,
    "certify-dataset": cmd_certify_dataset,
    "predict-dataset": cmd_certify_dataset,
    "report": cmd_report,
    "info": cmd_info,
    "train": cmd_torch,
    "export-onnx": cmd_torch,
    "import-onnx": cmd_torch,
}


def _one_line(exc: BaseException) -> str:
    text = str(exc) or type(exc).__name__
    if isinstance(exc, FileNotFoundError) and exc.filename:
        text = f"file not found: {exc.filename}"
    return " ".join(text.split())


def main(argv=None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = build_parser()
    if argv and argv[0] in ("train", "export-onnx", "import-onnx"):
        # forwarded untouched: their options belong to the export module's own parser
        args = argparse.Namespace(command=argv[0], rest=argv[1:])
    else:
        args = parser.parse_args(argv)
    try:
        return COMMANDS[args.command](args)
    except (IntengineError, _CliError, FileNotFoundError, ValueError) as exc:
        print(f"intengine: error: {_one_line(exc)}", file=sys.stderr)
        return EXIT_USAGE
    except OSError as exc:  # the environment (disk, permissions), not a bug: one line too
        where = f"{exc.filename}: " if exc.filename else ""
        print(f"intengine: error: {where}{exc.strerror or _one_line(exc)}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:
        print("intengine: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:
        return 0


if __name__ == "__main__":
    sys.exit(main())
