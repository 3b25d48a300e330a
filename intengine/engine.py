"""Graph executor: runs a validated model.int8 through a kernel backend ("numba" or "reference").

The model file is validated completely by :mod:`intengine.modelfile` when it is loaded, so every
kernel call below receives arguments the kernels accept. Activations are uint8 NHWC, batch = noise
samples; a linear layer takes its input flattened in NHWC order.
"""
from __future__ import annotations

import os
import threading
from pathlib import Path
from typing import NamedTuple

import numpy as np

from intengine import modelfile
from intengine.errors import IntengineError


class _Call(NamedTuple):
    """How the backend runs one node: see :meth:`Model._prepared_calls`."""

    kind: str                    # "run" (a prepared call), "conv+add" (a conv and its add) or "done" (that add)
    run: object = None
    residual: str | None = None  # conv+add: the add's other input
    add_name: str | None = None  # conv+add: the add computed with the conv
    padded_in: bool = False      # the input arrives zero-point-padded, written by its producer (run_padded)
    pad_out: tuple | None = None  # (padding, zero point) of the only reader's padded input, written in place


class Model:
    """A loaded, validated integer network."""

    def __init__(self, model: dict, tensors: dict[str, np.ndarray], path: str | None = None):
        # per-sample shape of every activation ("input" and each node's output), from validation
        self.activation_shapes = modelfile.validate(model, tensors, path or "<model>")
        self.description = model
        self.tensors = tensors
        self.path = path
        self.input_shape = tuple(int(v) for v in model["input"]["shape"])
        self.num_classes = int(model["num_classes"])
        self.class_names = list(model["class_names"])
        self.sigma = float(model["sigma"])
        self.clip = model["input"]["clip"]
        self.metadata = model.get("provenance", {})
        self.nodes = model["nodes"]
        self.output = model["output"]
        # per-node argument tuples, prepared once (C-contiguous arrays, Python ints)
        self._plan = [self._prepare(n) for n in self.nodes]
        self._arena = threading.local()  # per-thread activation buffers, see _buffer
        self._prepared: dict[str, list] = {}  # backend name -> per-node prepared calls, see _prepared_calls
        # which fusions _prepared_calls makes: "all" (default), "add" (conv + add only), "none" (every node on
        # its own); INTENGINE_FUSE=all|add|none (0 = none), for A/B timing
        self.fuse = {"0": "none", "none": "none", "add": "add"}.get(os.environ.get("INTENGINE_FUSE", "").strip(),
                                                                    "all")

    def _prepare(self, node):
        a, t = node["attrs"], {k: np.ascontiguousarray(self.tensors[v]) for k, v in node["tensors"].items()}
        op = node["op"]
        if op == "conv2d":
            args = (t["weight"], t["bias"], a["input_zero_point"], t["output_multiplier"], t["output_shift"],
                    a["output_zero_point"], a["stride"], a["padding"], a["act_min"], a["act_max"])
        elif op == "linear":
            args = (t["weight"], t["bias"], a["input_zero_point"], t["output_multiplier"], t["output_shift"],
                    a["output_zero_point"], a["act_min"], a["act_max"])
        elif op == "add_round_half_up":
            args = (a["a_zero_point"], a["a_multiplier"], a["a_shift"], a["b_zero_point"], a["b_multiplier"],
                    a["b_shift"], a["output_zero_point"], a["act_min"], a["act_max"])
        elif op == "avg_pool_round_half_up":
            args = (a["kernel"], a["stride"], a["input_zero_point"], a["output_multiplier"], a["output_shift"],
                    a["output_zero_point"], a["act_min"], a["act_max"])
        else:
            args = (a["kernel"], a["stride"], a["padding"])
        return op, node["name"], list(node["inputs"]), args

    def _prepared_calls(self, backend: str, ops) -> list:
        """Per node, how the backend runs it: None (the plain op) or a :class:`_Call`: ``"run"`` (a prepared
        call, ``run(*inputs, out)``), ``"conv+add"`` (a conv fused with the add that is its only reader:
        ``run(x, residual, conv_out, add_out)``) or ``"done"`` (that add).

        A backend op may offer ``op.prepare(*args)`` and ``conv2d.prepare_add`` (the numba backend does):
        the model was validated at load, so the per-call checks and lookups of the op would only repeat
        themselves (about 1.1 ms per ResNet-20 forward). A conv is fused with its add where the add is its
        only reader and the add's other input is computed before the conv (every residual block here):
        each conv output row is added while in cache. A conv whose only reader is a padded conv that can
        read a padded input in place (``reads_padded_input``) writes its output inside that conv's
        zero-point border (``write_padded``; ``pad_out``), and the reader skips its padding copy
        (``run_padded``; ``padded_in``): the first conv of every residual block here. Same kernels, same
        bits. ``self.fuse``: ``"all"``, ``"add"`` (no padded handoff) or ``"none"`` (every node separate)."""
        calls = self._prepared.get(backend)
        if calls is not None:
            return calls
        calls = [None] * len(self._plan)
        readers: dict[str, list[int]] = {}
        for i, (_, _, inputs, _) in enumerate(self._plan):
            for k in inputs:
                readers.setdefault(k, []).append(i)
        produced_at = {name: i for i, (_, name, _, _) in enumerate(self._plan)}
        prepare_add = getattr(ops.conv2d, "prepare_add", None) if self.fuse != "none" else None
        for i, (op, name, inputs, args) in enumerate(self._plan):
            if calls[i] is not None:
                continue
            prepare = getattr(getattr(ops, op), "prepare", None)
            if prepare is None or op not in ("conv2d", "add_round_half_up"):
                continue
            if op == "add_round_half_up":
                calls[i] = _Call("run", prepare(*args))
                continue
            input_shape = self.activation_shapes[inputs[0]]
            after = readers.get(name, [])
            if prepare_add is not None and name != self.output and len(after) == 1:
                j = after[0]
                add_op, add_name, add_inputs, add_args = self._plan[j]
                if add_op == "add_round_half_up" and add_inputs.count(name) == 1:
                    residual = add_inputs[1 - add_inputs.index(name)]
                    if residual == "input" or produced_at[residual] < i:
                        run = prepare_add(*args, input_shape=input_shape, add=add_args,
                                          conv_is_a=add_inputs[0] == name)
                        calls[i], calls[j] = _Call("conv+add", run, residual, add_name), _Call("done")
                        continue
            calls[i] = _Call("run", prepare(*args, input_shape=input_shape))
        for i, (op, name, _, _) in enumerate(self._plan if self.fuse == "all" else ()):
            after = readers.get(name, [])
            if op != "conv2d" or name == self.output or len(after) != 1 or calls[i] is None:
                continue
            j = after[0]
            reader_op, _, reader_inputs, reader_args = self._plan[j]
            if (reader_op == "conv2d" and calls[j] is not None and calls[i].kind == "run"
                    and hasattr(calls[i].run, "write_padded") and getattr(calls[j].run, "reads_padded_input", False)):
                # conv2d args: (weight, bias, input_zero_point, ..., padding at 7, ...)
                calls[i] = calls[i]._replace(pad_out=(reader_args[7], reader_args[2]))
                calls[j] = calls[j]._replace(padded_in=True)
        self._prepared[backend] = calls
        return calls

    def _output(self, name: str, x) -> np.ndarray:
        """Where node ``name`` writes for input ``x``: its reused buffer, or a fresh array for the output."""
        if name != self.output:
            return self._buffer(name, x.shape[0])
        return np.empty((x.shape[0],) + self.activation_shapes[name], dtype=np.uint8)

    def _buffer(self, name: str, batch: int) -> np.ndarray:
        """A uint8 output buffer (batch, *shape of ``name``), reused by later forward calls of this thread.

        Every conv/add node writes into its own buffer (sized for the largest batch seen), so no
        live activation is overwritten within a call; reusing them across calls saves the page
        faults of fresh multi-megabyte arrays, a fifth of a ResNet-20 forward at batch 400."""
        bufs = self._bufs()
        buf = bufs.get(name)
        if buf is None or buf.shape[0] < batch:
            buf = bufs[name] = np.empty((batch,) + self.activation_shapes[name], dtype=np.uint8)
        return buf[:batch]

    def _padded_buffer(self, name: str, batch: int, padding: int, zero_point: int) -> np.ndarray:
        """Node ``name``'s output buffer inside a border of ``padding`` pixels holding ``zero_point``: its only
        reader's padded input. The border is filled once, when the buffer is made; the producer writes
        only the interior (``write_padded``), so the border stays as filled while the buffer is reused."""
        bufs = self._bufs()
        h, w, c = self.activation_shapes[name]
        key = (name, "padded")
        buf = bufs.get(key)
        if buf is None or buf.shape[0] < batch:
            buf = bufs[key] = np.full((batch, h + 2 * padding, w + 2 * padding, c), zero_point, dtype=np.uint8)
        return buf[:batch]

    def _bufs(self) -> dict:
        """This thread's reused buffers (see :meth:`_buffer`)."""
        bufs = getattr(self._arena, "bufs", None)
        if bufs is None:
            bufs = self._arena.bufs = {}
        return bufs

    def release_buffers(self) -> None:
        """Free this thread's reused activation buffers (they are rebuilt on the next forward)."""
        self._arena.bufs = {}

    def check_input(self, x) -> np.ndarray:
        if not isinstance(x, np.ndarray):
            raise IntengineError(f"input must be a numpy array, got {type(x).__name__}")
        if x.dtype != np.uint8:
            raise IntengineError(f"input must have dtype uint8 (pixel values 0..255), got {x.dtype}")
        if x.ndim != 4 or tuple(x.shape[1:]) != self.input_shape:
            raise IntengineError(
                f"input must have shape (N, {', '.join(map(str, self.input_shape))}) (NHWC), got {tuple(x.shape)}")
        return np.ascontiguousarray(x)

    def forward(self, x, backend: str = "numba") -> np.ndarray:
        """uint8 logits (N, num_classes) for uint8 NHWC input ``x``."""
        from kernels import get_backend

        x = self.check_input(x)
        try:
            ops = get_backend(backend)
        except ValueError as exc:
            raise IntengineError(str(exc)) from None
        if x.shape[0] == 0:
            return np.zeros((0, self.num_classes), dtype=np.uint8)
        values = {"input": x}
        remaining = _last_use(self._plan, self.output)
        prepared = self._prepared_calls(backend, ops)
        try:
            for i, (op, name, inputs, args) in enumerate(self._plan):
                ins = [values[k] for k in inputs]
                keep = name != self.output  # the returned array is never a reused buffer
                call = prepared[i]
                if call is not None and call.kind == "done":  # computed with its conv
                    out = values[name]
                elif call is not None and call.kind == "conv+add":
                    out = self._buffer(name, x.shape[0])
                    run = call.run.run_padded if call.padded_in else call.run
                    values[call.add_name] = run(ins[0], values[call.residual], out, self._output(call.add_name, x))
                elif call is not None:  # inputs: this model's own activations, C-contiguous uint8
                    if call.pad_out is not None:  # values[name] becomes the reader's padded input
                        pad = call.pad_out[0]
                        dest = self._padded_buffer(name, x.shape[0], *call.pad_out)
                    else:
                        pad, dest = 0, self._output(name, x)
                    if call.padded_in:
                        out = call.run.run_padded(ins[0], dest, pad)
                    elif pad:
                        out = call.run.write_padded(ins[0], dest, pad)
                    else:
                        out = call.run(*ins, dest)
                elif op == "conv2d":
                    dest = self._buffer(name, x.shape[0]) if keep else None
                    out = ops.conv2d(ins[0], *args, out=dest)
                elif op == "linear":
                    out = ops.linear(np.ascontiguousarray(ins[0].reshape(ins[0].shape[0], -1)), *args)
                elif op == "add_round_half_up":
                    dest = self._buffer(name, x.shape[0]) if keep else None
                    out = ops.add_round_half_up(ins[0], ins[1], *args, out=dest)
                elif op == "avg_pool_round_half_up":
                    out = ops.avg_pool_round_half_up(ins[0], *args)
                else:
                    out = ops.max_pool(ins[0], *args)
                values[name] = out
                for k in remaining[i]:  # free activations no later node reads
                    values.pop(k, None)
        except ValueError as exc:  # argument checks in kernels (cannot happen for a validated model)
            raise IntengineError(f"kernel rejected node {name!r}: {exc}") from None
        return values[self.output]

    def classify(self, x, backend: str = "numba") -> np.ndarray:
        """int32 class ids (N,): argmax of the uint8 logits, ties to the lowest class id."""
        from kernels import get_backend

        logits = self.forward(x, backend)
        if logits.shape[0] == 0:
            return np.zeros((0,), dtype=np.int32)
        return get_backend(backend).argmax(logits)

    def parameter_count(self) -> int:
        return modelfile.parameter_count(self.tensors)

    def __repr__(self) -> str:
        h, w, c = self.input_shape
        where = f", path={self.path!r}" if self.path else ""
        return (f"Model(arch={self.description.get('arch', '?')!r}, input={h}x{w}x{c} uint8, "
                f"classes={self.num_classes}, sigma={self.sigma:g}, parameters={self.parameter_count():,}{where})")


def _last_use(plan, output):
    """For each step, the activation names whose last reader is that step (never the output)."""
    last = {}
    for i, (_, _, inputs, _) in enumerate(plan):
        for k in inputs:
            last[k] = i
    free = [[] for _ in plan]
    for k, i in last.items():
        if k != output:
            free[i].append(k)
    return free


def load_model(path) -> Model:
    """Load and validate a ``model.int8`` file (one-line IntengineError on any problem)."""
    model, tensors = modelfile.read(path)
    return Model(model, tensors, str(path))


def info_text(model: Model, path=None) -> str:
    """Human summary for ``intengine info``: graph table, parameters, file size, sigma, provenance."""
    d = model.description
    lines = []
    if path is not None:
        size = os.path.getsize(path) if Path(path).exists() else None
        lines.append(f"file        {path}" + (f" ({size:,} bytes)" if size is not None else ""))
    lines.append(f"format      {modelfile.FORMAT} version {modelfile.FORMAT_VERSION}")
    lines.append(f"tensors     sha256 {modelfile.tensors_digest(model.tensors)}")
    lines.append(f"arch        {d.get('arch', '?')}")
    h, w, c = model.input_shape
    inp = d["input"]
    lines.append(f"input       {h}x{w}x{c} uint8, scale {inp['scale']:.6g}, zero point {inp['zero_point']}, "
                 f"noise policy {model.clip!r}")
    lines.append(f"classes     {model.num_classes}: {', '.join(model.class_names)}")
    lines.append(f"sigma       {model.sigma:g} (pixel scale; sigma_int = {255 * model.sigma:g})")
    lines.append(f"parameters  {model.parameter_count():,}")
    shapes = model.activation_shapes
    lines.append("")
    lines.append(f"{'#':>3}  {'node':<16} {'op':<23} {'inputs':<28} {'output shape':<14} {'params':>8}")
    for i, node in enumerate(model.nodes):
        params = sum(model.tensors[t].size for k, t in node["tensors"].items() if k in ("weight", "bias"))
        shape = "x".join(str(s) for s in shapes[node["name"]])
        lines.append(f"{i:>3}  {node['name']:<16} {node['op']:<23} {','.join(node['inputs']):<28} "
                     f"{shape:<14} {params:>8,}")
    prov = model.metadata
    if prov:
        lines.append("")
        lines.append("provenance")
        for k in sorted(prov):
            lines.append(f"  {k:<22} {prov[k]}")
    return "\n".join(lines)
