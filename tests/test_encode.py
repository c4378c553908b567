"""``capsid encode``: chunked catalogue tokenization from the CLI."""

import json

from capsid_gr.cli import main


def test_encode_synthetic_in_chunks_writes_diagnostics(tmp_path, capsys):
    out = tmp_path / "diag.json"
    rc = main(["encode", "--items", "300", "--device", "cpu", "--batch-size", "128", "--preset", "default",
               "--quiet", "--json", str(out)])
    assert rc == 0
    text = capsys.readouterr().out
    assert "SID diagnostics: 300 items" in text and "length histogram" in text
    diag = json.loads(out.read_text())["diagnostics"]
    assert diag["items"] == 300 and sum(diag["length_histogram"].values()) == 300
    assert diag["depths"][0]["active"] == 300
