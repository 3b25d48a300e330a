"""Hostile images, datasets, results files and CLI options (issue 13: B2, B3, B6, B11 at the CLI,
'Also'): every case ends in success or in the one-line error contract, never a traceback or a hang."""
from __future__ import annotations

import io
import os
import zipfile

import numpy as np
import pytest
from numpy.lib import format as npformat

from intengine import cli, modelfile

from _hostile import assert_one_line, base_model


@pytest.fixture(scope="module")
def tiny_file(tmp_path_factory):
    p = tmp_path_factory.mktemp("tiny") / "tiny.int8"
    modelfile.write(p, *base_model())
    return p


@pytest.fixture(autouse=True)
def _cache(monkeypatch, tmp_path):
    monkeypatch.setenv("INTENGINE_CACHE", str(tmp_path / "cache"))


def run(argv, capsys):
    try:
        rc = cli.main([str(a) for a in argv])
    except SystemExit as exc:  # argparse
        rc = exc.code
    out, err = capsys.readouterr()
    return rc, out, err


def _npy_header(path, shape, descr="|u1", fortran=False, data=b"", version=(1, 0)):
    with open(path, "wb") as fh:
        d = {"descr": descr, "fortran_order": fortran, "shape": shape}
        (npformat.write_array_header_1_0 if version == (1, 0) else npformat.write_array_header_2_0)(fh, d)
        fh.write(data)


def image_corpus(d):
    """name -> (path, expected: 'ok' or a substring of the error)."""
    H, W, C = 6, 6, 2
    good = np.arange(H * W * C, dtype=np.uint8).reshape(H, W, C)
    cases = {}

    def save(name, arr, expect):
        p = d / name
        np.save(p, arr, allow_pickle=arr.dtype.hasobject)
        cases[name] = (p, expect)

    save("good.npy", good, "ok")
    save("chw.npy", good.transpose(2, 0, 1).copy(), "ok")
    save("fortran.npy", np.asfortranarray(good), "ok")
    save("float16.npy", (good / 255).astype(np.float16), "ok")
    save("bigendian.npy", good.astype(">u2"), "ok")
    save("batch1.npy", good[None], "ok")
    save("nan.npy", np.full((H, W, C), np.nan, np.float32), "NaN")
    save("inf.npy", np.full((H, W, C), np.inf), "NaN")
    save("neg.npy", np.full((H, W, C), -1, np.int16), "0..255")
    save("big.npy", np.full((H, W, C), 256, np.int32), "0..255")
    save("bool.npy", good > 3, "boolean")
    save("complex.npy", good.astype(np.complex64), "dtype")
    save("object.npy", np.array([{"a": 1}], dtype=object), "Python objects")
    save("structured.npy", np.zeros(3, dtype=[("a", "u1"), ("b", "f4")]), "dtype")
    save("strings.npy", np.array(["x"] * 3), "dtype")
    save("scalar.npy", np.array(7, np.uint8), "shape")
    save("empty.npy", np.zeros((0, H, W, C), np.uint8), "shape")
    save("batch2.npy", np.stack([good, good]), "shape")
    save("wrong.npy", np.zeros((H + 1, W, C), np.uint8), "shape")
    _npy_header(d / "huge.npy", (10**9, 10**9, 3), data=b"\0" * 3000)                       # B2
    cases["huge.npy"] = (d / "huge.npy", "header claims")
    _npy_header(d / "huge2.npy", (2**62, 2**62), descr="<f8", version=(2, 0))
    cases["huge2.npy"] = (d / "huge2.npy", "header claims")
    _npy_header(d / "short.npy", (H, W, C), data=good.tobytes()[:-1])
    cases["short.npy"] = (d / "short.npy", "header claims")
    _npy_header(d / "long.npy", (H, W, C), data=good.tobytes() + b"\0")
    cases["long.npy"] = (d / "long.npy", "header claims")
    _npy_header(d / "zerosize.npy", (10**18,), descr="|V0")
    cases["zerosize.npy"] = (d / "zerosize.npy", "not a plain numeric dtype")
    for name, raw, expect in (("empty_file.npy", b"", "cannot read"), ("text.npy", b"hello\n", "cannot read"),
                              ("magic_only.npy", b"\x93NUMPY\x01\x00", "cannot read"),
                              ("badheader.npy", b"\x93NUMPY\x01\x00\x10\x00{'descr': __import", "cannot read"),
                              ("v9.npy", b"\x93NUMPY\x09\x00\x10\x00" + b" " * 16, "cannot read")):
        (d / name).write_bytes(raw)
        cases[name] = (d / name, expect)
    buf = io.BytesIO()
    np.savez(buf, x=good)
    (d / "zip.npy").write_bytes(buf.getvalue())
    cases["zip.npy"] = (d / "zip.npy", "cannot read")
    os.mkfifo(d / "fifo.npy")                                                                  # B6
    cases["fifo.npy"] = (d / "fifo.npy", "FIFO")
    os.symlink(d / "loop.npy", d / "loop.npy")
    cases["loop.npy"] = (d / "loop.npy", "symbolic link")
    os.mkdir(d / "dir.npy")
    cases["dir.npy"] = (d / "dir.npy", "directory")
    cases["missing.npy"] = (d / "missing.npy", "not found")
    cases["image.png"] = (d / "good.npy", "ok")  # placeholder replaced below
    (d / "image.png").write_bytes(b"\x89PNG")
    cases["image.png"] = (d / "image.png", ".npy")
    return cases


def test_hostile_image_corpus(tiny_file, tmp_path, capsys):
    cases = image_corpus(tmp_path)
    counts = {"ok": 0, "rejected": 0}
    for name, (path, expect) in cases.items():
        rc, out, err = run(["certify", tiny_file, path, "--n", 20, "--n0", 10, "--seed", 1, "--json"], capsys)
        if expect == "ok":
            assert rc == 0 and err == "", (name, err)
            counts["ok"] += 1
        else:
            assert_one_line(rc, out, err, name)
            assert expect in err, (name, err)
            counts["rejected"] += 1
    assert counts["rejected"] >= 25


CLI_OPTIONS = [
    (["--n", "1000000000000"], "n must"), (["--n0", "1000000000000"], "n0 must"),                # B3
    (["--n", "10000001"], "n must"), (["--n", "0"], "n must"), (["--n", "-5"], "n must"), (["--n", "1e3"], "--n"),
    (["--n", "abc"], "--n"), (["--n0", "0"], "n0 must"), (["--alpha", "1e-300"], "alpha"),      # B11
    (["--alpha", "0.6"], "alpha"), (["--alpha", "nan"], "alpha"), (["--alpha", "inf"], "alpha"),
    (["--alpha", "-1"], "alpha"), (["--alpha", "x"], "alpha"), (["--sigma", "0"], "sigma"),
    (["--sigma", "nan"], "sigma"), (["--sigma", "1e300"], "at most"), (["--sigma", "1e-300"], "sigma"), (["--sigma", "-inf"], "sigma"), (["--sigma", "abc"], "sigma"),
    (["--batch", "0"], "batch"), (["--batch", "-3"], "batch"), (["--seed", "-1"], "seed"),
    (["--seed", str(2**64)], "seed"), (["--seed", "abc"], "seed"), (["--threads", "0"], "threads"),
    (["--memory-budget", "0"], "memory budget"), (["--memory-budget", "abc"], "memory budget"),
    (["--memory-budget=-1G"], "memory budget"), (["--memory-budget", "1"], "memory budget"),
    (["--sampler", "nope"], "sampler"), (["--backend", "nope"], "backend"), (["--bogus"], "unrecognized"),
]
CLI_OK = [["--batch", str(10**18)], ["--seed", "0x10"], ["--threads", "100000"], ["--memory-budget", "1M"],
          ["--alpha", "1e-12"], ["--alpha", "0.5"], ["--sigma", "1e-3"]]


def test_hostile_cli_options(tiny_file, tmp_path, capsys):
    img = tmp_path / "img.npy"
    np.save(img, np.zeros((6, 6, 2), np.uint8))
    for extra, match in CLI_OPTIONS:
        for cmd in (["certify"], ["predict"]) if "--n0" not in extra else (["certify"],):
            rc, out, err = run(cmd + [tiny_file, img, "--n", 20, "--n0", 10] + extra, capsys)
            assert_one_line(rc, out, err, extra)
            assert match in err, (extra, err)
    for extra in CLI_OK:
        rc, out, err = run(["certify", tiny_file, img, "--n", 20, "--n0", 10, "--json"] + extra, capsys)
        assert rc == 0, (extra, err)


def test_report_on_binary_and_special_files(tmp_path, capsys):
    """'Also': report on a binary file did not name the file."""
    binfile = tmp_path / "results.bin"
    binfile.write_bytes(bytes(range(256)) * 4)
    rc, out, err = run(["report", binfile], capsys)
    assert_one_line(rc, out, err)
    assert str(binfile) in err
    os.mkfifo(tmp_path / "r.tsv")
    rc, out, err = run(["report", tmp_path / "r.tsv"], capsys)
    assert_one_line(rc, out, err)
    assert "FIFO" in err


def _npz(path, **members):
    buf = io.BytesIO()
    np.savez(buf, **members)
    path.write_bytes(buf.getvalue())


def test_hostile_datasets(tiny_file, tmp_path, capsys):
    """B2 for .npz members, B6 for the dataset; each a one-line error."""
    x = np.zeros((4, 32, 32, 3), np.uint8)
    y = np.zeros(4, np.int64)
    cases = {}
    _npz(tmp_path / "nolabels.npz", x_test=x)
    cases["nolabels.npz"] = "y_test"
    _npz(tmp_path / "objects.npz", x_test=x, y_test=np.array([None] * 4, dtype=object))
    cases["objects.npz"] = "Python objects"
    _npz(tmp_path / "floatlabels.npz", x_test=x, y_test=y.astype(float))
    cases["floatlabels.npz"] = "labels"
    with zipfile.ZipFile(tmp_path / "forged.npz", "w") as zf:     # header claims 10^18 images
        hdr = io.BytesIO()
        npformat.write_array_header_1_0(hdr, {"descr": "|u1", "fortran_order": False,
                                              "shape": (10**18, 32, 32, 3)})
        zf.writestr("x_test.npy", hdr.getvalue() + b"\0" * 64)
        zf.writestr("y_test.npy", hdr.getvalue())
    cases["forged.npz"] = "header claims"
    (tmp_path / "garbage.npz").write_bytes(b"PK\x03\x04" + b"\0" * 100)
    cases["garbage.npz"] = "not a readable .npz"
    os.mkfifo(tmp_path / "fifo.npz")
    cases["fifo.npz"] = "FIFO"
    os.symlink(tmp_path / "loop.npz", tmp_path / "loop.npz")
    cases["loop.npz"] = "symbolic link"
    for name, match in cases.items():
        rc, out, err = run(["certify-dataset", tiny_file, tmp_path / name, "--out", tmp_path / f"{name}.tsv",
                            "--n", 20, "--n0", 10, "--max", 1], capsys)
        assert_one_line(rc, out, err, name)
        assert match in err, (name, err)
