"""Hostile model files (issue 13: B6, B7, the read-whole problem, duplicate and unknown keys, digest)
and the seeded model-file fuzzer of tests/_hostile.py."""
from __future__ import annotations

import json
import os
import struct
import time
from pathlib import Path

import pytest

from intengine import cli, modelfile
from intengine.errors import IntengineError

from _hostile import _join, _split, assert_one_line, base_model, fuzz

ROOT = Path(__file__).resolve().parents[1]
SHIPPED = ROOT / "models" / "resnet20_sigma0.25.int8"
CAT = ROOT / "examples" / "cat_chelsea.npy"


def _edit_model(data: bytes, fn) -> bytes:
    header, body = _split(data)
    model = json.loads(header["__metadata__"]["model"])
    fn(model)
    header["__metadata__"]["model"] = json.dumps(model, sort_keys=True, separators=(",", ":"))
    return _join(header, body)


def _assert_fuzz_clean(stats):
    bugs = {cat: [k for k in c if k.startswith("bug")] for cat, c in stats.items()}
    assert not any(bugs.values()), bugs
    for cat, c in stats.items():
        assert c["rejected"] > 0, cat  # every category reaches the validator's rejections


def test_fuzz_model_files():
    stats = fuzz(seed=13, cases=2000)
    _assert_fuzz_clean(stats)
    assert sum(c["loaded"] for c in stats.values()) > 10  # some mutants are valid models and must run


@pytest.mark.slow
def test_fuzz_model_files_long():
    _assert_fuzz_clean(fuzz(seed=1013, cases=6000))


def test_b7_output_zero_point_must_match_its_quantization_entry(tmp_path, capsys):
    """B7: the cat became "deer" when one node's output_zero_point disagreed with its activation."""
    def edit(m):
        node = next(n for n in m["nodes"] if n["op"] == "conv2d" and n["name"] != "stem")
        node["attrs"]["output_zero_point"] = (node["attrs"]["output_zero_point"] + 7) % 256

    bad = tmp_path / "b7.int8"
    bad.write_bytes(_edit_model(SHIPPED.read_bytes(), edit))
    rc = cli.main(["certify", str(bad), str(CAT), "--n", "10", "--n0", "10"])
    out, err = capsys.readouterr()
    assert_one_line(rc, out, err)
    assert "output_zero_point disagrees" in err


@pytest.mark.parametrize("edit,match", [
    (lambda m: m["nodes"][4].update(attrs=dict(m["nodes"][4]["attrs"], stride=2, kernel=2)), None),
    (lambda m: m["quantization"]["mp"].update(scale=0.5), "max_pool output must keep"),
    (lambda m: m["quantization"]["input"].update(scale=0.5), "input scale"),
    (lambda m: m["quantization"].update(ghost={"scale": 1.0, "zero_point": 0}), "names no activation"),
    (lambda m: m["nodes"][3]["attrs"].update(a_multiplier=1073741824), "scale ratio"),
    (lambda m: m["nodes"][5]["attrs"].update(output_shift=-2), "scale ratio"),
    (lambda m: m["nodes"][0]["tensors"].update(bias="c2.bias"), "must be named"),
    (lambda m: m.update(comment="hi"), "unknown key 'comment'"),
    (lambda m: m["nodes"][0].update(note=1), "unknown key 'note'"),
    (lambda m: m["input"].update(mean=0.5), "unknown key 'mean'"),
    (lambda m: m["quantization"]["c1"].update(axis=0), "unknown key 'axis'"),
])
def test_every_stated_relation_is_checked(edit, match):
    model, tensors = base_model()
    if match is None:  # a valid variation still loads
        edit(model)
        modelfile.loads(modelfile.dumps(model, tensors))
        return
    edit(model)
    with pytest.raises(IntengineError, match=match):
        modelfile.loads(modelfile.dumps(model, tensors))


def test_duplicate_keys_rejected():
    data = modelfile.dumps(*base_model())
    header, body = _split(data)
    text = header["__metadata__"]["model"]
    header["__metadata__"]["model"] = text.replace('"sigma":', '"sigma":0.5,"sigma":', 1)
    with pytest.raises(IntengineError, match="duplicate key 'sigma'"):
        modelfile.loads(_join(header, body))
    raw = json.dumps(header, separators=(",", ":"))
    raw = raw.replace('"__metadata__":', '"__metadata__":{},"__metadata__":', 1).encode()
    raw += b" " * (-len(raw) % 8)
    with pytest.raises(IntengineError, match="duplicate key '__metadata__'"):
        modelfile.loads(struct.pack("<Q", len(raw)) + raw + body)


def test_digest_recorded_verified_and_shown(tmp_path, capsys):
    model, tensors = base_model()
    data = modelfile.dumps(model, tensors)
    header, body = _split(data)
    assert header["__metadata__"]["tensors_sha256"] == modelfile.tensors_digest(tensors)
    flipped = bytearray(data)
    flipped[-1] ^= 1  # one bit of the last tensor
    with pytest.raises(IntengineError, match="tensors_sha256"):
        modelfile.loads(bytes(flipped))
    rc = cli.main(["info", str(SHIPPED)])
    out, _ = capsys.readouterr()
    m, t = modelfile.read(SHIPPED)
    assert rc == 0 and modelfile.tensors_digest(t) in out


def test_version_1_files_without_digest_still_load():
    data = modelfile.dumps(*base_model())
    header, body = _split(data)
    header["__metadata__"]["format_version"] = "1"
    del header["__metadata__"]["tensors_sha256"]
    modelfile.loads(_join(header, body))
    header["__metadata__"]["tensors_sha256"] = "0" * 64  # version 1 has no such key
    with pytest.raises(IntengineError, match="unknown metadata key"):
        modelfile.loads(_join(header, body))


def test_huge_file_rejected_before_reading(tmp_path):
    """A 3 GB sparse file used to be read whole (2-9 s) before its header was looked at."""
    big = tmp_path / "big.int8"
    with open(big, "wb") as f:
        f.truncate(3 << 30)
    t0 = time.perf_counter()
    with pytest.raises(IntengineError, match="larger than 2 GiB"):
        modelfile.read(big)
    bogus = tmp_path / "bogus.int8"
    with open(bogus, "wb") as f:  # header claims 1.5 GiB of tensors in a sparse file of that size
        data = modelfile.dumps(*base_model())
        f.write(data[:8 + struct.unpack("<Q", data[:8])[0]])
        f.truncate(3 << 29)
    with pytest.raises(IntengineError, match="header describes"):
        modelfile.read(bogus)
    assert time.perf_counter() - t0 < 1.0


def test_header_read_before_body(tmp_path, monkeypatch):
    """The body is never read when the header is bad: count the bytes read."""
    data = modelfile.dumps(*base_model())
    header, body = _split(data)
    header["__metadata__"]["format"] = "other"
    p = tmp_path / "m.int8"
    p.write_bytes(_join(header, body * 50))
    read_sizes = []
    import intengine.safeio as safeio

    real = safeio.open_regular

    def spy(path, what):
        f = real(path, what)
        orig = f.read
        f.read = lambda k=-1: (read_sizes.append(k), orig(k))[1]
        return f

    monkeypatch.setattr(safeio, "open_regular", spy)
    with pytest.raises(IntengineError, match="not a model.int8"):
        modelfile.read(p)
    assert sum(read_sizes) <= len(_join(header, b""))  # the 8-byte length and the header only


def test_special_files_as_model(tmp_path, capsys):
    """B6 and 'Also': a FIFO blocked for ever, /dev/zero was 'pickled data', a loop 'not found'."""
    fifo = tmp_path / "f.int8"
    os.mkfifo(fifo)
    loop = tmp_path / "loop.int8"
    os.symlink(loop, loop)
    for path, match in ((fifo, "FIFO"), ("/dev/zero", "character device"), (loop, "symbolic link"),
                        (tmp_path, "directory"), (tmp_path / "none.int8", "not found")):
        rc = cli.main(["info", str(path)])
        out, err = capsys.readouterr()
        assert_one_line(rc, out, err, path)
        assert match in err, err
