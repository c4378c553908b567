"""The Amazon loader on random malformed files (issue 10): every fault is a DataError naming the
file and the line, never another exception and never a silent skip; `skip_bad_lines=True`
skips exactly the bad lines and lists them. Budgets: max_examples <= 40, deadline=None."""

from __future__ import annotations

import json
import random
import warnings

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from capsid_gr.data import DataError, load_amazon

N_ITEMS = 6
HEADER = "item_id:token\ttitle:token\tcategories:token_seq\tprice:float\tbrand:token\n"


@st.composite
def valid_lines(draw):
    users = draw(st.lists(st.integers(1, 10**6), min_size=2, max_size=8, unique=True))
    return [[u] + draw(st.lists(st.integers(1, N_ITEMS), min_size=3, max_size=7)) for u in users]


def render(lines) -> list[bytes]:
    return [" ".join(map(str, ln)).encode() for ln in lines]


# One fault per kind, applied to line `at` (0-based) of the sequence file: (bytes of that line).
BAD_TOKENS = ["x", "-3", "1.5", "\u0663", "0x1", "+2", "9" * 30, str(2**31)]


def corrupt(kind: str, lines: list[list[int]], at: int, rng: random.Random) -> bytes:
    row = lines[at]
    if kind == "token":
        toks = [str(t) for t in row]
        toks[rng.randrange(len(toks))] = rng.choice(BAD_TOKENS)
        return " ".join(toks).encode()
    if kind == "empty":
        return b"   \t"
    if kind == "duplicate_user":
        return " ".join(map(str, [lines[rng.randrange(at)][0]] + row[1:])).encode()
    if kind == "short":
        return " ".join(map(str, row[: rng.randint(1, 3)])).encode()
    if kind == "item_range":
        toks = list(row)
        toks[rng.randrange(1, len(toks))] = rng.choice([0, N_ITEMS + 1, N_ITEMS + 100])
        return " ".join(map(str, toks)).encode()
    if kind == "utf8":
        return b" ".join(render([row])) + b" \xff\xfe"
    if kind == "nul":
        return render([row])[0] + b"\x00"
    raise AssertionError(kind)


KINDS = ["token", "empty", "duplicate_user", "short", "item_range", "utf8", "nul"]


def write_dataset(folder, seq: bytes, *, metadata: bool):
    (folder / "Toy.txt").write_bytes(seq)
    for name in ("datamaps.json", "Toy_item2attributes.json", "Amazon_Toy.item"):
        (folder / name).unlink(missing_ok=True)
    if metadata:
        ids = {str(i): f"A{i}" for i in range(1, N_ITEMS + 1)}
        (folder / "datamaps.json").write_text(json.dumps({"id2item": ids}, indent=1))
        (folder / "Toy_item2attributes.json").write_text(json.dumps({"1": [1, 2], "4": [3]}, indent=1))
        rows = "".join(f"A{i}\tT{i}\t'Toys'\t{i}.5\tB\n" for i in range(1, N_ITEMS + 1))
        (folder / "Amazon_Toy.item").write_text(HEADER + rows)


@settings(max_examples=40, deadline=None)
@given(valid_lines(), st.sampled_from(KINDS), st.integers(0, 2**32 - 1), st.booleans())
def test_each_malformed_sequence_line_is_a_data_error_naming_file_and_line(tmp_path_factory, lines, kind, seed,
                                                                           metadata):
    rng = random.Random(seed)
    # a duplicate needs an earlier user; a blank line at the end is allowed (files end that way)
    at = rng.randrange(1 if kind == "duplicate_user" else 0, len(lines) - (kind == "empty"))
    encoded = render(lines)
    bad = corrupt(kind, lines, at, rng)
    encoded[at] = bad
    if kind == "item_range" and not metadata and b" 0" not in b" " + bad.split(b" ", 1)[1]:
        return  # without datamaps any id >= 1 is valid (n_items = the largest id)
    folder = tmp_path_factory.mktemp("amazon")
    write_dataset(folder, b"\n".join(encoded) + b"\n", metadata=metadata)
    path = folder / "Toy.txt"
    with pytest.raises(DataError) as err:
        load_amazon(folder, name="Toy")
    assert f"{path}:{at + 1}:" in str(err.value)

    # skip_bad_lines: exactly that line is skipped and listed; the other users load unchanged.
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        ds = load_amazon(folder, name="Toy", skip_bad_lines=True)
    assert [ln for ln, _ in ds.skipped_lines] == [at + 1]
    assert any("skipped 1 bad lines" in str(w.message) for w in caught)
    kept = [ln for i, ln in enumerate(lines) if i != at]
    assert [s.tolist() for s in ds.sequences] == [[t - 1 for t in ln[1:]] for ln in kept]


@settings(max_examples=40, deadline=None)
@given(st.binary(max_size=200), st.sampled_from(["Toy.txt", "datamaps.json", "Toy_item2attributes.json",
                                                  "Amazon_Toy.item"]))
def test_random_bytes_in_any_file_never_crash(tmp_path_factory, blob, target):
    """Arbitrary bytes: either the file happens to be valid, or a DataError names that file."""
    folder = tmp_path_factory.mktemp("amazon")
    write_dataset(folder, b"1 1 2 3\n2 3 4 5\n", metadata=True)
    (folder / target).write_bytes(blob)
    try:
        load_amazon(folder, name="Toy")
    except DataError as exc:
        assert str(folder / target) in str(exc)


@settings(max_examples=30, deadline=None)
@given(st.sampled_from(["id2item_value", "id2item_dup", "attr_huge", "attr_neg", "attr_dup", "json_cut",
                        "table_fields", "table_price", "table_nul", "table_utf8"]), st.integers(1, N_ITEMS))
def test_malformed_metadata_names_file_and_line(tmp_path_factory, kind, item):
    folder = tmp_path_factory.mktemp("amazon")
    write_dataset(folder, b"1 1 2 3\n2 3 4 5\n", metadata=True)
    maps, attrs, table = folder / "datamaps.json", folder / "Toy_item2attributes.json", folder / "Amazon_Toy.item"
    ids = {str(i): f"A{i}" for i in range(1, N_ITEMS + 1)}
    if kind.startswith("id2item"):
        text = json.dumps({"id2item": ids}, indent=1)
        if kind == "id2item_value":
            text = text.replace(f'"A{item}"', "[1]")
        else:
            text = text.replace(f'"{item}": "A{item}"', f'"{item}": "A{item}",\n  "0{item}": "Z"')
        maps.write_text(text)
        where = (maps, 2 + item + (kind == "id2item_dup"))  # '{\n "id2item": {\n' then one id a line
    elif kind == "attr_dup":  # "0<item>" is item <item> again, on line 3
        attrs.write_text(f'{{\n "{item}": [1],\n "0{item}": [2]\n}}\n')
        where = (attrs, 3)
    elif kind in ("attr_huge", "attr_neg", "json_cut"):
        body = {"1": [1], str(item): [2**40] if kind == "attr_huge" else [-1] if kind == "attr_neg" else [3]}
        text = json.dumps(body, indent=1)
        if kind == "json_cut":
            text = text[: len(text) // 2]
        attrs.write_text(text)
        where = (attrs, next(i + 1 for i, ln in enumerate(text.split("\n")) if f'"{item}"' in ln)
                 if kind != "json_cut" else None)
    else:
        rows = [f"A{i}\tT{i}\t'Toys'\t{i}.5\tB" for i in range(1, N_ITEMS + 1)]
        row = rows[item - 1]
        rows[item - 1] = {"table_fields": row + "\textra", "table_price": row.replace(f"{item}.5", "cheap"),
                          "table_nul": row + "\x00", "table_utf8": row}[kind]
        blob = (HEADER + "\n".join(rows) + "\n").encode()
        if kind == "table_utf8":
            blob = blob.replace(f"T{item}\t".encode(), f"T{item}\xff\t".encode("latin-1"))
        table.write_bytes(blob)
        where = (table, item + 1)
    with pytest.raises(DataError) as err:
        load_amazon(folder, name="Toy")
    msg = str(err.value)
    if kind == "json_cut":
        assert msg.startswith(f"{attrs}:") and "invalid JSON" in msg
    else:
        assert msg.startswith(f"{where[0]}:{where[1]}:"), msg
