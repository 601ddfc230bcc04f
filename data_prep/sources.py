"""Where input data comes from: local parquet / jsonl / json files or folders, or a hub name when online.

Nothing here waits on a network that is not there: offline is detected from ``HF_HUB_OFFLINE`` /
``HF_DATASETS_OFFLINE`` or from a connection attempt that gives up after a few seconds, and the error then says
that a local path is needed.
"""

from __future__ import annotations

import json
import os
import re
import socket
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import pyarrow as pa
import pyarrow.parquet as pq

from data_prep.schema import DataError

SUPPORTED_SUFFIXES = (".parquet", ".jsonl", ".json")
_HUB_NAME = re.compile(r"[A-Za-z0-9][\w.-]*/[\w.-]+")
_PROBE_TIMEOUT_S = 3.0
_TRUE = {"1", "true", "yes", "on"}


@dataclass(frozen=True)
class Source:
    """One input: a local file (``path``) or a table loaded from the hub (``table``, named by ``name``)."""

    name: str
    path: Path | None = None
    table: pa.Table | None = None

    @property
    def suffix(self) -> str:
        return self.path.suffix.lower() if self.path is not None else ".parquet"


def hub_is_reachable(timeout_s: float = _PROBE_TIMEOUT_S) -> tuple[bool, str]:
    """(whether the Hugging Face hub can be reached, why not): env switches first, then a bounded TCP probe.

    The probe runs in a daemon thread so that even a name lookup that hangs cannot stall the caller.
    """
    for variable in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE"):
        if os.environ.get(variable, "").strip().lower() in _TRUE:
            return False, f"{variable} is set"
    endpoint = urlparse(os.environ.get("HF_ENDPOINT", "https://huggingface.co"))
    host = endpoint.hostname or "huggingface.co"
    port = endpoint.port or (443 if endpoint.scheme != "http" else 80)
    outcome: dict[str, str | None] = {"error": "no answer"}

    def probe() -> None:
        try:
            with socket.create_connection((host, port), timeout=timeout_s):
                outcome["error"] = None
        except OSError as err:
            outcome["error"] = f"{type(err).__name__}: {err}"

    worker = threading.Thread(target=probe, daemon=True)
    worker.start()
    worker.join(timeout_s + 0.5)
    error = outcome["error"]
    return error is None, f"cannot connect to {host}:{port} ({error or 'timed out'})"


def _load_from_hub(name: str, split: str | None) -> pa.Table:
    import datasets

    loaded = datasets.load_dataset(name, split=split) if split else datasets.load_dataset(name)
    if isinstance(loaded, datasets.DatasetDict):
        if len(loaded) != 1:
            raise DataError(f"{name} has the splits {sorted(loaded)}: choose one with --split")
        loaded = next(iter(loaded.values()))
    return loaded.data.table


def resolve_sources(spec: str, split: str | None = None) -> list[Source]:
    """The inputs named by ``spec``: a file, a folder (its parquet/jsonl/json files, sorted), or a hub name.

    Raises DataError for a missing path, an unsupported file type, an empty folder, or a hub name while offline.
    """
    path = Path(spec).expanduser()
    if path.is_file():
        if path.suffix.lower() not in SUPPORTED_SUFFIXES:
            raise DataError(f"{path}: not a parquet, jsonl or json file (supported: {', '.join(SUPPORTED_SUFFIXES)})")
        return [Source(name=str(path), path=path)]
    if path.is_dir():
        files = sorted(p for p in path.rglob("*") if p.is_file() and p.suffix.lower() in SUPPORTED_SUFFIXES)
        if not files:
            raise DataError(f"{path}: folder without any {', '.join(SUPPORTED_SUFFIXES)} file")
        return [Source(name=str(file), path=file) for file in files]
    if path.exists():
        raise DataError(f"{path}: not a regular file or folder")
    if not _HUB_NAME.fullmatch(spec):
        raise DataError(f"{spec}: no such file or folder")
    reachable, why = hub_is_reachable()
    if not reachable:
        raise DataError(
            f"{spec}: no such local file or folder, and the Hugging Face hub cannot be reached ({why}). "
            "This machine is offline: download the data set on a machine with network and pass its local path "
            "(a parquet, jsonl or json file, or a folder of them) with --input."
        )
    return [Source(name=f"hub:{spec}", table=_load_from_hub(spec, split))]


def open_parquet(path: Path) -> pq.ParquetFile:
    """The parquet file at ``path``, or a DataError saying that it is not one."""
    try:
        return pq.ParquetFile(path)
    except Exception as err:  # pyarrow raises several types for a file that is not parquet
        raise DataError(f"{path}: not a readable parquet file ({type(err).__name__}: {err})") from err


def read_json_records(path: Path) -> list[Any]:
    """The records of a jsonl file (one JSON value a line) or a json file (an array of objects, or JSON lines).

    A jsonl line that is not valid JSON becomes a ``MalformedLine`` record, so that it can be reported (or skipped
    with --skip-bad) as a bad row with its line number instead of failing the whole file.
    """
    text = path.read_text(encoding="utf-8")
    if path.suffix.lower() == ".json":
        try:
            whole = json.loads(text)
        except json.JSONDecodeError as err:
            if "Extra data" not in str(err):  # "Extra data" = several JSON values: JSON lines in a .json file
                raise DataError(f"{path}: not valid JSON ({err})") from err
        else:
            if isinstance(whole, list):
                return whole
            if isinstance(whole, dict):
                lists = [value for value in whole.values() if isinstance(value, list)]
                if len(lists) == 1:  # {"data": [...]} or {"test": [...]}
                    return lists[0]
            raise DataError(f"{path}: a json file must hold an array of records (or one key holding one)")
    records: list[Any] = []
    for number, line in enumerate(text.splitlines()):
        if not line.strip():
            continue
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError as err:
            records.append(MalformedLine(line_number=number, error=str(err)))
    return records


@dataclass(frozen=True)
class MalformedLine:
    """A jsonl line that is not JSON (kept as a record so that it is reported as a bad row)."""

    line_number: int
    error: str


def read_records(source: Source) -> list[Any]:
    """Every record of ``source`` as Python values, types as stored (a float stays a float, null stays None)."""
    if source.table is not None:
        return source.table.to_pylist()
    assert source.path is not None
    if source.suffix == ".parquet":
        return open_parquet(source.path).read().to_pylist()
    return read_json_records(source.path)


def column_names(records: list[Any]) -> list[str]:
    """The keys found in any record, in order of first appearance."""
    names: dict[str, None] = {}
    for record in records:
        if isinstance(record, dict):
            names.update(dict.fromkeys(record))
    return list(names)
