"""The CLI answers user errors and system errors with `capsid: error: ...` and a non-zero code,
never a traceback (issue 21): malformed `--vectors` files, unwritable output folders, a full disk."""

from __future__ import annotations

import errno

import numpy as np
import pytest

from capsid_gr.cli import main


def _error(capsys) -> str:
    err = capsys.readouterr().err
    assert "Traceback" not in err
    assert err.startswith("capsid: error: "), err
    return err


@pytest.mark.parametrize("array, said", [
    (np.ones(16, dtype=np.float32), "got float32 [16]"),  # 1-D: was an IndexError
    (np.ones((2, 3, 4), dtype=np.float32), "got float32 [2, 3, 4]"),
    (np.ones((0, 8), dtype=np.float32), "got float32 [0, 8]"),
    (np.ones((4, 0), dtype=np.float32), "got float32 [4, 0]"),
    (np.array([["a", "b"]]), "expected real numbers"),
    (np.ones((3, 4), dtype=bool), "expected real numbers"),
    (np.array([[1.0, np.nan], [0.0, 1.0]], dtype=np.float64), "row 0 has NaN"),
    (np.array([[1.0, 2.0], [1e300, 1.0]], dtype=np.float64), "row 1 has NaN or Inf"),  # inf once in float32
])
def test_encode_refuses_vectors_that_are_not_a_2d_float_matrix(tmp_path, capsys, array, said):
    path = tmp_path / "v.npy"
    np.save(path, array)
    rc = main(["encode", "--vectors", str(path), "--device", "cpu", "--quiet"])
    assert rc == 2
    err = _error(capsys)
    assert str(path) in err and said in err, err


def test_encode_refuses_a_file_that_is_not_npy_and_a_pickled_array(tmp_path, capsys):
    junk = tmp_path / "junk.npy"
    junk.write_bytes(b"not a numpy file at all")
    assert main(["encode", "--vectors", str(junk), "--device", "cpu", "--quiet"]) == 2
    assert "could not read it" in _error(capsys)
    pickled = tmp_path / "obj.npy"
    np.save(pickled, np.array([{"a": 1}], dtype=object), allow_pickle=True)
    assert main(["encode", "--vectors", str(pickled), "--device", "cpu", "--quiet"]) == 2
    assert "could not read it" in _error(capsys)


def test_encode_accepts_an_integer_matrix_and_tokenizes_it(tmp_path, capsys):
    path = tmp_path / "v.npy"
    np.save(path, np.random.default_rng(0).integers(-5, 6, size=(40, 16)).astype(np.int16) | 1)
    assert main(["encode", "--vectors", str(path), "--device", "cpu", "--quiet"]) == 0
    assert "SID diagnostics: 40 items" in capsys.readouterr().out


@pytest.mark.parametrize("flag, value", [("--items", "0"), ("--batch-size", "-3"), ("--items", "ten")])
def test_encode_sizes_below_one_are_refused_by_the_parser(capsys, flag, value):
    with pytest.raises(SystemExit) as e:
        main(["encode", flag, value, "--device", "cpu", "--quiet"])
    assert e.value.code == 2
    err = capsys.readouterr().err
    assert flag in err and "expected an integer >= 1" in err and "Traceback" not in err


def test_os_errors_are_a_clear_error_not_a_traceback(tmp_path, capsys, monkeypatch):
    # an output folder below a file: refused before any work, naming the argument
    blocker = tmp_path / "file"
    blocker.write_text("x")
    assert main(["encode", "--items", "50", "--device", "cpu", "--quiet", "--json", str(blocker / "d.json")]) == 2
    err = _error(capsys)
    assert "--json" in err and str(blocker) in err and "expected a folder this process can write to" in err
    assert main(["run", "--out", str(blocker / "run"), "--items", "60", "--users", "40", "--quiet"]) == 2
    assert "--out" in _error(capsys)
    assert main(["pipeline", "--out", str(blocker / "p"), "--preset", "cpu", "--quiet"]) == 2
    assert "--out" in _error(capsys)

    # a disk that fills up while the result is written: the system's reason and the file, exit 1
    import capsid_kernels.decode._atomic as atomic

    def full(path, payload):
        raise OSError(errno.ENOSPC, "No space left on device", str(path))

    monkeypatch.setattr(atomic, "write_atomic", full)
    import capsid_gr.atomic
    monkeypatch.setattr(capsid_gr.atomic, "_write_atomic", full)
    out = tmp_path / "ok" / "d.json"
    assert main(["encode", "--items", "50", "--device", "cpu", "--quiet", "--json", str(out)]) == 1
    err = _error(capsys)
    assert "No space left on device" in err and str(out) in err
    assert not out.exists()
