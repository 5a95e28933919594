"""Read the records of an offline W&B run (``run-*.wandb``, a LevelDB-style log of
protobuf records). wandb >= 0.19 writes offline summaries and config only there."""

from __future__ import annotations

import struct
from pathlib import Path

BLOCK = 32768
HEADER = 7  # crc32 (4), length (2), type (1); the file starts with a 7-byte ident too
FULL, FIRST, MIDDLE, LAST = 1, 2, 3, 4


def records(path: Path):
    from wandb.proto import wandb_internal_pb2

    data = Path(path).read_bytes()
    assert data[:4] == b":W&B", "not a W&B transaction log"
    pos, chunk = HEADER, b""
    while pos + HEADER <= len(data):
        left_in_block = BLOCK - pos % BLOCK
        if left_in_block < HEADER:  # block trailer padding
            pos += left_in_block
            continue
        _crc, length, kind = struct.unpack("<IHB", data[pos : pos + HEADER])
        pos += HEADER
        payload = data[pos : pos + length]
        pos += length
        if kind == FULL:
            chunk = payload
        elif kind == FIRST:
            chunk = payload
            continue
        elif kind == MIDDLE:
            chunk += payload
            continue
        elif kind == LAST:
            chunk += payload
        else:
            break  # zero padding at the end of the file
        rec = wandb_internal_pb2.Record()
        rec.ParseFromString(chunk)
        yield rec


def logged_keys(path: Path) -> dict[str, set[str]]:
    """Keys of history rows, summary updates and config updates in a run file."""
    out: dict[str, set[str]] = {"history": set(), "summary": set(), "config": set()}
    for rec in records(path):
        kind = rec.WhichOneof("record_type")
        items = {
            "history": lambda r: r.history.item,
            "summary": lambda r: r.summary.update,
            "config": lambda r: r.config.update,
        }.get(kind)
        if items is None:
            continue
        for item in items(rec):
            out[kind].add(item.key or "/".join(item.nested_key))
    return out


def run_config(path: Path) -> dict:
    """The config the run was started with (the run record's config updates)."""
    import json

    for rec in records(path):
        if rec.WhichOneof("record_type") == "run":
            return {item.key: json.loads(item.value_json) for item in rec.run.config.update}
    raise AssertionError("no run record in the log")


def media_types(path: Path) -> dict[str, str]:
    """``{key: _type}`` of the media (tables, images, HTML) logged to history."""
    import json

    out = {}
    for rec in records(path):
        if rec.WhichOneof("record_type") != "history":
            continue
        for item in rec.history.item:
            key = item.key or "/".join(item.nested_key)
            if key.endswith("/_type"):
                out[key[: -len("/_type")]] = json.loads(item.value_json)
    return out


def wait_until_written(path: Path, timeout: float = 30.0) -> None:
    """Wait for the run's exit record: in-process, ``finish()`` can return before W&B's
    writer (a service process) has put the last records into the file."""
    import time

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if any(rec.WhichOneof("record_type") == "exit" for rec in records(path)):
                return
        except Exception:  # a record cut mid-write: read again
            pass
        time.sleep(0.2)
    raise AssertionError(f"{path} has no exit record after {timeout:.0f} s")


def artifacts(path: Path) -> dict[str, dict]:
    """``{name: {type, aliases, metadata, files: {path in the artifact: staged copy}}}`` of
    the artifacts the run logged (``run.log_artifact``)."""
    import json

    out = {}
    for rec in records(path):
        if rec.WhichOneof("record_type") != "artifact":
            continue
        a = rec.artifact
        out[a.name] = {
            "type": a.type,
            "aliases": list(a.aliases),
            "metadata": json.loads(a.metadata) if a.metadata else {},
            "files": {e.path: e.local_path for e in a.manifest.contents},
        }
    return out
