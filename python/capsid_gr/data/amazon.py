"""Loader for Amazon review sequences in the S3-Rec layout (SPEC §10).

Files in `directory` (only `<name>.txt` is required; see shared/data/amazon-beauty/SOURCE.md):
- `<name>.txt`: `user item item ...` per line, 1-based ids, chronological.
- `<name>_item2attributes.json`: `{"<item id>": [attribute id, ...]}`.
- `datamaps.json`: `id2item` maps item id -> ASIN, the key into the item table.
- `Amazon_<name>.item`: RecBole TSV (csv quoting) with title, categories, price, brand.

Every malformed input raises DataError naming the file, the line, and the fault: a silently
skipped line would shift every later user and corrupt the split without a trace. Files that
are not valid UTF-8, hold NUL bytes or ids past int32 are malformed inputs too, never a crash.
`skip_bad_lines=True` is the documented exception for the sequence file only: bad lines are
skipped, counted in `SequenceDataset.skipped_lines` and reported in one warning.
"""

from __future__ import annotations

import csv
import html
import io
import json
import os
import re
import warnings
from pathlib import Path

import numpy as np

from ..checks import short as _short  # values from a file are elided too (a bad token may be huge)
from .dataset import DataError, SequenceDataset

_QUOTED = re.compile(r"'([^']*)'|\"([^\"]*)\"")  # one category in RecBole's token_seq field
MAX_ID = 2**31 - 1
"""Largest item, user or attribute id read: tries and kernels index items with int32."""


def default_beauty_dir() -> Path | None:
    """Where Beauty lives: $CAPSID_BEAUTY_DIR, else the shared copy beside the repo, else None."""
    env = os.environ.get("CAPSID_BEAUTY_DIR")
    if env:
        return Path(env)
    shared = Path(__file__).resolve().parents[3].parent / "shared" / "data" / "amazon-beauty"
    return shared if shared.is_dir() else None


def load_amazon(
    directory: str | os.PathLike | None = None,
    name: str = "Beauty",
    with_metadata: bool = True,
    min_items: int = 3,
    skip_bad_lines: bool = False,
) -> SequenceDataset:
    """Load `<name>.txt` and, when present and `with_metadata`, item text and attributes.

    Ids become 0-based. n_items is the size of datamaps' `id2item` when it is read, else the
    largest item id in the sequences. `min_items` = 3 is the least leave-one-out can split.
    `skip_bad_lines` (default off) skips malformed lines of `<name>.txt` instead of raising:
    each is listed as (line, reason) in the result's `skipped_lines`, and one warning gives
    the count. A repeated user keeps its first line. Metadata files still fail on any fault.
    """
    if not isinstance(min_items, int) or isinstance(min_items, bool) or min_items < 3:
        raise ValueError(f"min_items: expected an integer >= 3 (leave-one-out needs a training, a validation "
                         f"and a test item), got {_short(min_items)}")
    if directory is None:
        directory = default_beauty_dir()
        if directory is None:
            raise FileNotFoundError(
                "no Amazon data directory given and none found: pass one, or set "
                "CAPSID_BEAUTY_DIR to the folder holding Beauty.txt"
            )
    root = Path(directory)
    seq_path = root / f"{name}.txt"
    if not seq_path.is_file():
        raise FileNotFoundError(f"{seq_path}: sequence file not found")

    id2item = None
    maps_path = root / "datamaps.json"
    if with_metadata and maps_path.is_file():
        id2item = _read_id2item(maps_path)
    sequences, skipped = _read_sequences(seq_path, len(id2item) if id2item else None, min_items, skip_bad_lines)
    n_items = len(id2item) if id2item else _catalogue_size(seq_path, sequences)

    item_text = item_attributes = None
    if with_metadata:
        attr_path = root / f"{name}_item2attributes.json"
        if attr_path.is_file():
            item_attributes = _read_attributes(attr_path, n_items)
        table_path = root / f"Amazon_{name}.item"
        if table_path.is_file():
            if id2item is None:
                raise DataError(
                    f"{table_path}: item table found but {maps_path} is missing, and the join "
                    "from item id to ASIN needs it; add it or pass with_metadata=False"
                )
            item_text = _read_item_text(table_path, id2item)
    return SequenceDataset(
        n_items=n_items,
        sequences=sequences,
        item_text=item_text,
        item_attributes=item_attributes,
        name=name,
        skipped_lines=skipped,
    )


def _read_sequences(path: Path, n_items: int | None, min_items: int,
                    skip_bad_lines: bool = False) -> tuple[list[np.ndarray], list[tuple[int, str]]]:
    data = path.read_bytes()
    lone_cr = re.search(rb"\r(?!\n)", data)
    if lone_cr is not None:
        raise DataError(f"{path}:{_line_at(data, lone_cr.start())}: carriage return without a line feed; lines "
                        "must end with \\n or \\r\\n (CR-only files would read as one user)")
    lines = data.split(b"\n")
    while lines and not lines[-1].strip():  # blank lines may end the file, not split it
        lines.pop()
    flat: list[int] = []
    lengths: list[int] = []
    seen_users: dict[int, int] = {}
    skipped: list[tuple[int, str]] = []
    for lineno, raw in enumerate(lines, start=1):
        parsed = _parse_sequence_line(raw, n_items, min_items, seen_users, lineno)
        if isinstance(parsed, str):
            if not skip_bad_lines:
                raise DataError(f"{path}:{lineno}: {parsed}")
            skipped.append((lineno, parsed))
            continue
        user, items = parsed
        seen_users[user] = lineno
        flat.extend(items)
        lengths.append(len(items))
    if skipped:
        first = skipped[0]
        warnings.warn(f"{path}: skipped {len(skipped)} bad lines (skip_bad_lines=True); first: line {first[0]}: "
                      f"{first[1]}", RuntimeWarning, stacklevel=3)
    if not lengths:
        raise DataError(f"{path}: no users" + (f" ({len(skipped)} bad lines skipped)" if skipped else ""))
    ids = np.array(flat, dtype=np.int64) - 1
    return np.split(ids, np.cumsum(lengths)[:-1]), skipped


SPARSE_LIMIT = 4
"""Without datamaps, n_items is the largest item id: ids may skip (items seen only in other
splits of a dataset), but a largest id above SPARSE_LIMIT x the distinct ids + 1,024 is refused,
since every per-item array would be sized by it."""


def _catalogue_size(path: Path, sequences: list[np.ndarray]) -> int:
    flat = np.concatenate(sequences)
    top = int(flat.max()) + 1
    distinct = int(np.unique(flat).size)
    if top > SPARSE_LIMIT * distinct + 1024:
        raise DataError(f"{path}: largest item id {top} but only {distinct} distinct items; ids must be dense "
                        f"(at most {SPARSE_LIMIT * distinct + 1024} here) or datamaps.json must list the catalogue")
    return top


def _parse_sequence_line(raw: bytes, n_items: int | None, min_items: int, seen_users: dict[int, int],
                         lineno: int) -> tuple[int, list[int]] | str:
    """(user, 1-based items) of one line, or the reason it is malformed."""
    try:
        line = raw.decode("utf-8")
    except UnicodeDecodeError as e:
        return f"not valid UTF-8 (byte {e.start} of the line)"
    tokens = line.split()
    if not tokens:
        return "empty line"
    bad = next((t for t in tokens if not (t.isascii() and t.isdigit())), None)
    if bad is not None:
        return f"{_short(bad)} is not a non-negative integer id"
    big = next((t for t in tokens if len(t) > 10 or int(t) > MAX_ID), None)
    if big is not None:
        return f"id {_short(big)[1:-1]} exceeds the largest supported id {MAX_ID} (2**31 - 1)"
    user = int(tokens[0])
    if user in seen_users:
        return f"user {user} already appeared on line {seen_users[user]}"
    if len(tokens) - 1 < min_items:
        return (f"user {user} has {len(tokens) - 1} items, at least {min_items} needed (leave-one-out "
                "needs train, validation and test)")
    items = [int(t) for t in tokens[1:]]
    low, high = min(items), max(items)
    if low < 1 or (n_items is not None and high > n_items):
        wrong = low if low < 1 else high
        limit = f"1..{n_items}" if n_items is not None else "1 or more"
        return f"item id {wrong} out of range ({limit}; ids are 1-based)"
    return user, items


def _read_id2item(path: Path) -> dict[int, str]:
    raw, text = _read_json(path)
    if not isinstance(raw, dict) or not isinstance(raw.get("id2item"), dict):
        raise DataError(f"{path}:1: expected a JSON object with an 'id2item' object")
    id2item: dict[int, str] = {}
    for key, asin in raw["id2item"].items():
        where = _Where(path, text, key)
        if not (key.isascii() and key.isdigit()) or len(key) > 10 or not 1 <= int(key) <= MAX_ID:
            raise DataError(f"{where}: id2item has item id {_short(key)}, expected a 1-based integer <= {MAX_ID}")
        if not isinstance(asin, str):
            raise DataError(f"{where}: id2item[{_short(key)}] is {_short(asin)}, expected an ASIN string")
        if int(key) - 1 in id2item:
            raise DataError(f"{where}: id2item has item id {int(key)} twice (as {key!r})")
        id2item[int(key) - 1] = asin
    missing = set(range(len(id2item))) - id2item.keys()
    if missing:
        raise DataError(
            f"{path}: id2item has {len(id2item)} entries but lacks item id {min(missing) + 1}; "
            "ids must run 1..N without gaps"
        )
    return id2item


def _read_json(path: Path) -> tuple[object, str]:
    """(parsed JSON, its text); malformed bytes or JSON raise DataError naming the line."""
    data = path.read_bytes()
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as e:
        raise DataError(f"{path}:{_line_at(data, e.start)}: not valid UTF-8") from None
    try:
        return json.loads(text, object_pairs_hook=_no_duplicates), text
    except _DuplicateKey as e:
        key = e.args[0]
        raise DataError(f"{path}:{_line_of_key(text, key, 2)}: key {_short(key)} appears twice in one object; "
                        "a second value would silently replace the first") from None
    except json.JSONDecodeError as e:
        raise DataError(f"{path}:{e.lineno}: invalid JSON ({e.msg})") from None
    except RecursionError:
        raise DataError(f"{path}:1: JSON nested too deeply") from None


def _line_at(data: bytes | str, offset: int) -> int:
    """1-based line holding position `offset`."""
    return data.count(b"\n" if isinstance(data, bytes) else "\n", 0, offset) + 1


class _Where:
    """`path:line` of a JSON key, looked up only when an error message prints it (a search of
    the text per key would make loading quadratic in the file size)."""

    __slots__ = ("path", "text", "key")

    def __init__(self, path: Path, text: str, key: str) -> None:
        self.path, self.text, self.key = path, text, key

    def __str__(self) -> str:
        return f"{self.path}:{_line_of_key(self.text, self.key)}"


class _DuplicateKey(Exception):
    pass


def _no_duplicates(pairs: list) -> dict:
    out = {}
    for k, v in pairs:
        if k in out:
            raise _DuplicateKey(k)
        out[k] = v
    return out


def _line_of_key(text: str, key: str, nth: int = 1) -> int:
    """Line of the `nth` `"key":` in the JSON text (1 when it is written with escapes)."""
    at = -1
    for _ in range(nth):
        nxt = text.find(json.dumps(key) + ":", at + 1)
        if nxt < 0:
            break
        at = nxt
    if at < 0:
        at = text.find(json.dumps(key))
    return text.count("\n", 0, at) + 1 if at >= 0 else 1


def _read_attributes(path: Path, n_items: int) -> list[np.ndarray]:
    """Attribute ids become 0-based like item ids; an item absent from the file gets none."""
    raw, text = _read_json(path)
    if not isinstance(raw, dict):
        raise DataError(f"{path}:1: expected a JSON object of item id -> attribute id list")
    out = [np.zeros(0, dtype=np.int64) for _ in range(n_items)]
    seen: set[int] = set()
    for key, attrs in raw.items():
        where = _Where(path, text, key)
        if not (key.isascii() and key.isdigit()) or len(key) > 10 or not 1 <= int(key) <= n_items:
            raise DataError(f"{where}: unknown item id {_short(key)} (items are 1..{n_items})")
        if int(key) in seen:
            raise DataError(f"{where}: item id {int(key)} appears twice (as {key!r})")
        seen.add(int(key))
        if not isinstance(attrs, list) or not all(type(a) is int and 1 <= a <= MAX_ID for a in attrs):
            raise DataError(f"{where}: item id {key}: attributes must be a list of integers in 1..{MAX_ID}")
        out[int(key) - 1] = np.array(attrs, dtype=np.int64) - 1
    return out


def _read_item_text(path: Path, id2item: dict[int, str]) -> list[str]:
    """One "title; brand B; categories; price P" string per item, empty fields left out."""
    asin_to_item = {asin: item for item, asin in id2item.items()}
    text: list[str | None] = [None] * len(id2item)
    data = path.read_bytes()
    try:
        content = data.decode("utf-8")
    except UnicodeDecodeError as e:
        raise DataError(f"{path}:{_line_at(data, e.start)}: not valid UTF-8") from None
    if "\0" in content:
        raise DataError(f"{path}:{_line_at(content, content.index(chr(0)))}: NUL byte in the item table")
    reader = csv.reader(io.StringIO(content, newline=""), delimiter="\t")
    try:
        header = [h.split(":")[0] for h in next(reader, [])]
        need = ("item_id", "title", "categories", "price", "brand")
        if any(n not in header for n in need):
            raise DataError(f"{path}:1: header {header} lacks one of {list(need)}")
        col = {n: header.index(n) for n in need}
        for row in reader:
            where = f"{path}:{reader.line_num}"
            if len(row) != len(header):
                raise DataError(f"{where}: {len(row)} fields, header has {len(header)}")
            asin = row[col["item_id"]]
            item = asin_to_item.get(asin)
            if item is None:
                raise DataError(f"{where}: unknown item id {_short(asin)} (not in datamaps id2item)")
            if text[item] is not None:
                raise DataError(f"{where}: item id {asin!r} appears twice")
            text[item] = _item_text(row, col, where)
    except csv.Error as e:
        raise DataError(f"{path}:{reader.line_num}: {e}") from None
    absent = [i for i, t in enumerate(text) if t is None]
    if absent:
        raise DataError(
            f"{path}: no row for {len(absent)} items, e.g. item id {absent[0] + 1} "
            f"(ASIN {id2item[absent[0]]!r})"
        )
    return text  # type: ignore[return-value]


def _item_text(row: list[str], col: dict[str, int], where: str) -> str:
    def clean(s: str) -> str:
        # Twice: a few rows are escaped twice ("Kirk&amp;#39;s"). split() also folds the
        # newline inside one title and the &nbsp; entities into single spaces.
        return " ".join(html.unescape(html.unescape(s)).split())

    title, brand = clean(row[col["title"]]), clean(row[col["brand"]])
    categories = ", ".join(clean(a or b) for a, b in _QUOTED.findall(row[col["categories"]]))
    price = row[col["price"]].strip()
    if price:
        try:
            value = float(price)
        except ValueError:
            raise DataError(f"{where}: price {_short(price)} is not a number") from None
        if not np.isfinite(value):
            raise DataError(f"{where}: price {_short(price)} is not a finite number")
        price = f"price {value:.2f}"
    parts = (title, f"brand {brand}" if brand else "", categories, price)
    return "; ".join(p for p in parts if p)
