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
    in_pad: int = 0              # conv: its input is stored inside a border of this many pixels (run_bordered)
    residual_pad: int = 0        # conv+add: the residual's border
    out_border: tuple | None = None  # (pixels, zero point): the output (conv+add: the add's) is written inside
    #                                  a border holding its padded readers' input zero point


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
        each conv output row is added while in cache. A conv's (or a conv + add's) output whose readers can
        all read it inside a zero-point border (:meth:`_border`) is stored that way (``out_border``): its
        padded conv readers skip their padding copy (``in_pad``), an unpadded 1x1 reader starts one border
        in, a fused add reads its residual through the border (``residual_pad``). In ResNet-20 on the
        vnni512 rung every tensor a padded conv reads except the network input. Same kernels, same bits.
        ``self.fuse``: ``"all"``, ``"add"`` (no borders) or ``"none"`` (every node separate)."""
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
        if self.fuse == "all":
            fused_at = {c.add_name: i for i, c in enumerate(calls) if c is not None and c.kind == "conv+add"}
            for i, call in enumerate(calls):
                if call is None or not hasattr(call.run, "run_bordered") or self._plan[i][0] != "conv2d":
                    continue
                name = call.add_name if call.kind == "conv+add" else self._plan[i][1]
                border = self._border(name, readers.get(name, []), calls, fused_at)
                if border is None:
                    continue
                calls[i] = calls[i]._replace(out_border=border)
                for j in readers[name]:
                    if calls[j].kind == "done":  # the residual of a fused conv + add
                        k = fused_at[self._plan[j][1]]
                        calls[k] = calls[k]._replace(residual_pad=border[0])
                    else:
                        calls[j] = calls[j]._replace(in_pad=border[0])
        self._prepared[backend] = calls
        return calls

    def _border(self, name: str, after: list[int], calls: list, fused_at: dict) -> tuple | None:
        """(pixels, zero point) of the border tensor ``name`` can be stored in, or None: every reader is a conv
        that reads it as its input and can read it in place inside that border (``reads_bordered``) or a fused
        conv + add that takes it as its residual; the padded convs among them share one padding and one
        input zero point (the border's value), and there is at least one (else a border saves nothing)."""
        if name == self.output or not after:
            return None
        padded = set()
        for j in after:
            op, reader, inputs, args = self._plan[j]
            call = calls[j]
            if call is None:
                return None
            if call.kind == "done":
                if calls[fused_at[reader]].residual != name or not hasattr(calls[fused_at[reader]].run,
                                                                           "run_bordered"):
                    return None
                continue
            if op != "conv2d" or inputs[0] != name or not hasattr(call.run, "reads_bordered"):
                return None
            if args[7] > 0:  # conv2d args: (weight, bias, input_zero_point, ..., padding at 7, ...)
                padded.add((int(args[7]), int(args[2])))
        if len(padded) != 1:
            return None
        border = padded.pop()
        if not all(calls[j].kind == "done" or calls[j].run.reads_bordered(border[0]) for j in after):
            return None
        return border

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

    def _destination(self, name: str, x, border: tuple | None) -> np.ndarray:
        """Where node ``name`` writes: :meth:`_output`, or with ``border = (pixels, zero point)`` its reused
        buffer inside that border: the border is filled once, when the buffer is made; producers write only
        the interior (``run_bordered``), so it stays as filled while the buffer is reused."""
        if border is None:
            return self._output(name, x)
        batch, padding = x.shape[0], border[0]
        bufs = self._bufs()
        h, w, c = self.activation_shapes[name]
        key = (name, "bordered", border)
        buf = bufs.get(key)
        if buf is None or buf.shape[0] < batch:
            buf = bufs[key] = np.full((batch, h + 2 * padding, w + 2 * padding, c), border[1], dtype=np.uint8)
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
                    add_out = self._destination(call.add_name, x, call.out_border)
                    if call.in_pad or call.residual_pad or call.out_border:
                        values[call.add_name] = call.run.run_bordered(
                            ins[0], call.in_pad, values[call.residual], call.residual_pad, out, add_out,
                            call.out_border[0] if call.out_border else 0)
                    else:
                        values[call.add_name] = call.run(ins[0], values[call.residual], out, add_out)
                elif call is not None:  # inputs: this model's own activations, C-contiguous uint8
                    dest = self._destination(name, x, call.out_border)
                    if call.in_pad or call.out_border:
                        out = call.run.run_bordered(ins[0], call.in_pad, dest,
                                                    call.out_border[0] if call.out_border else 0)
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
