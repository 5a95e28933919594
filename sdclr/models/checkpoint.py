"""Checkpoints: written atomically, carrying what is needed to rebuild the model.

The pretrain checkpoint (written by :func:`sdclr.train.loop.pretrain`) holds the online model
(``model``, what the probes and the export use), the optimiser, ``method_state`` (MoCo's key
encoder, queue and pointer, BYOL's target and predictor, the current momentum; empty for
SimCLR / SDCLR), the mask, the BCL loss memory (``boost``), the temperatures, the monitor's
records, the position in the epoch, every RNG state, and ``spec`` / ``config``.

Durable: a checkpoint is serialised in memory, written to a temporary file and ``fsync``-ed,
checked to be a complete archive, and only then renamed over the latest one, whose
predecessor stays beside it as ``<name>.prev.pt`` (the directory is ``fsync``-ed after the
renames). A machine crash at any point leaves at least one complete checkpoint;
:func:`load_latest` falls back to the previous one when the latest cannot be read. A full
disk stops the run with one message and leaves both files as they were.

The reference code's checkpoints (``train_simCLR.py``'s ``model_<epoch>.pt``) are read too,
mapped onto our model by :mod:`sdclr.models.reference` (the dense branch; the payload's
``source`` says so).

Safe: checkpoints are loaded with ``weights_only=True`` (tensors, containers and plain values
only; unpickling cannot call anything), allowing just NumPy's array reconstruction, which
the RNG state of checkpoints written before 2026-12 needs.
"""

from __future__ import annotations

import errno
import io
import os
import pickle
import re
import zipfile
from pathlib import Path
from typing import Any

import numpy as np
import torch

from sdclr.config.derived import bn_mode, cifar_stem, head_depth
from sdclr.errors import CheckpointError
from sdclr.models.contrastive import ContrastiveModel, build_model
from sdclr.models.reference import from_reference, is_reference_checkpoint
from sdclr.utils.runlog import warn


def model_spec(cfg) -> dict[str, Any]:
    """Everything that fixes the network's shape; stored in every checkpoint."""
    return {
        "backbone": str(cfg.backbone.name),
        "cifar_stem": cifar_stem(cfg),
        "channels": list(cfg.backbone.channels) if cfg.backbone.channels else None,
        "head_depth": head_depth(cfg),
        "out_dim": int(cfg.head.out_dim),
        "dual_bn": bn_mode(cfg) == "dual",
        "image_size": int(cfg.data.image_size),
        "mean": list(cfg.data.mean),
        "std": list(cfg.data.std),
    }


def build_from_spec(spec: dict[str, Any]) -> ContrastiveModel:
    return build_model(
        spec["backbone"],
        spec["cifar_stem"],
        spec["channels"],
        spec["head_depth"],
        spec["out_dim"],
        spec["dual_bn"],
    )


#: the globals a checkpoint may name besides torch's own: NumPy arrays (the legacy RNG state)
_NUMPY_CORE = getattr(np, "_core", None) or np.core  # numpy 2 / numpy 1
SAFE_GLOBALS = [np.dtype, np.ndarray, _NUMPY_CORE.multiarray._reconstruct]
if hasattr(np, "dtypes"):  # the dtype classes numpy >= 1.25 pickles an array's dtype as
    SAFE_GLOBALS.append(np.dtypes.UInt32DType)
#: a write that fails with one of these found no room (ENOSPC, quota, file size limit)
NO_SPACE = {errno.ENOSPC, errno.EDQUOT, errno.EFBIG}


def previous_path(path: Path) -> Path:
    """Where the checkpoint before ``path`` is kept: ``pretrain.pt`` -> ``pretrain.prev.pt``."""
    path = Path(path)
    return path.with_name(f"{path.stem}.prev{path.suffix}")


def _fsync_dir(folder: Path) -> None:
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:  # not every platform opens directories
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def save_checkpoint(path: Path, payload: dict[str, Any]) -> None:
    """Write ``payload`` to ``path`` durably; the checkpoint it replaces becomes
    :func:`previous_path`. Raises :class:`CheckpointError` (both files untouched) when the
    disk has no room for it."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    buffer = io.BytesIO()
    torch.save(payload, buffer)
    data = buffer.getbuffer()
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    try:
        with open(tmp, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        with zipfile.ZipFile(tmp) as archive:  # complete: its central directory is there
            archive.namelist()
    except OSError as e:
        tmp.unlink(missing_ok=True)
        if e.errno in NO_SPACE:
            raise CheckpointError(
                f"no room to write the checkpoint into {path.parent}: it needs {len(data):,} "
                f"bytes ({os.strerror(e.errno)}); the checkpoints there are as they were. "
                f"Free space (or raise the quota) and run the same command again to resume"
            ) from e
        raise
    if zipfile.is_zipfile(path):  # an unreadable latest must not displace a good previous
        os.replace(path, previous_path(path))
    os.replace(tmp, path)
    _fsync_dir(path.parent)


def check_checkpoint_file(path: str | Path) -> Path:
    """``path``, after checking (from its first bytes, without loading it) that it is a file
    torch.save could have written: a zip archive, or the legacy pickle or tar format."""
    path = Path(path).expanduser()
    if not path.is_file():
        raise CheckpointError(
            f"checkpoint {path} not found; pass the pretrain checkpoint of "
            f"a finished job (its checkpoints/pretrain.pt)"
        )
    with open(path, "rb") as f:
        head = f.read(512)
    # zip (torch.save since 1.6), a pickle's PROTO opcode (the legacy format), a tar archive
    if head.startswith((b"PK\x03\x04", b"\x80")) or head[257:262] == b"ustar":
        return path
    if not head:
        what = f"{path} is empty, not a checkpoint"
    elif (text := _as_text(head)) is not None:
        start = " ".join(text.split())[:40]
        what = f"{path} is a text file (it starts {start!r}), not a checkpoint"
    else:
        what = (
            f"{path} is not a checkpoint (it starts with the bytes {head[:8].hex(' ')}, not "
            f"those of the zip archive torch.save writes)"
        )
    raise CheckpointError(
        f"{what}; pass a finished job's checkpoints/pretrain.pt (or the reference code's "
        f"model_<epoch>.pt)"
    )


def _as_text(head: bytes) -> str | None:
    """``head`` (a file's first bytes) as text, or None when they are not UTF-8 text."""
    for cut in range(4):  # the last character may be cut off
        try:
            text = head[: len(head) - cut].decode("utf-8")
        except UnicodeDecodeError:
            continue
        return text if all(c.isprintable() or c in "\t\n\r\f\v" for c in text) else None
    return None


def load_checkpoint(path: str | Path) -> dict[str, Any]:
    path = check_checkpoint_file(path)
    try:
        with torch.serialization.safe_globals(SAFE_GLOBALS):
            payload = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        refused = _refused_global(e)
        if refused is None:
            raise CheckpointError(
                f"checkpoint {path} cannot be read ({_one_line(e)[:120]}); it is corrupt or not "
                f"an sdclr checkpoint"
            ) from e
        raise CheckpointError(
            f"checkpoint {path} was refused: it holds objects other than tensors and plain "
            f"values ({refused}), and loading those could run code. Pass a checkpoint "
            f"written by sdclr"
        ) from e
    except Exception as e:
        raise CheckpointError(
            f"checkpoint {path} cannot be read ({_one_line(e)}); it is corrupt or not an sdclr "
            f"checkpoint"
        ) from e
    if is_reference_checkpoint(payload):
        try:
            return from_reference(payload)
        except ValueError as e:
            raise CheckpointError(
                f"checkpoint {path} is in the reference code's layout (VITA-Group/SDCLR) but "
                f"cannot be evaluated here: {e}"
            ) from e
    if not isinstance(payload, dict) or "model" not in payload or "spec" not in payload:
        raise CheckpointError(
            f"{path} is not an sdclr pretrain checkpoint (no model/spec); "
            f"pass a job's checkpoints/pretrain.pt"
        )
    return payload


def load_latest(path: Path) -> tuple[dict[str, Any], Path] | None:
    """The job's checkpoint at ``path`` and where it came from: the latest, or, when that is
    missing or cannot be read, the previous one (:func:`previous_path`) with a warning on
    stderr naming both and the epoch it resumes from. None when there is neither."""
    path = Path(path)
    prev = previous_path(path)
    try:
        return load_checkpoint(path), path
    except CheckpointError:
        if not prev.is_file():
            if not path.exists():
                return None
            raise
        payload = load_checkpoint(prev)
        why = "is missing" if not path.exists() else "cannot be read (corrupt or truncated)"
        warn(
            f"{path} {why}; resuming from the previous checkpoint {prev} "
            f"(epoch {payload.get('epoch')})"
        )
        return payload, prev


def _one_line(e: BaseException) -> str:
    return " ".join(str(e).split())[:300]


def _refused_global(e: pickle.UnpicklingError) -> str | None:
    """The name torch's weights-only unpickler refused (e.g. ``posix.system``), or None when
    the file is simply not a pickle it can read."""
    found = re.search(r"GLOBAL (\S+)", str(e))
    return found.group(1) if found else None


def load_encoder(
    path: str | Path, expected_backbone: str | None = None
) -> tuple[ContrastiveModel, dict[str, Any]]:
    """Rebuild the model from a checkpoint and check it is the backbone the run asks for."""
    payload = load_checkpoint(path)
    if payload.get("finished") is False:
        raise CheckpointError(
            f"checkpoint {path} is from an unfinished pretraining (epoch {payload['epoch']}); "
            f"resume it first (run its command again), then evaluate"
        )
    spec = payload["spec"]
    if expected_backbone is not None and spec["backbone"] != expected_backbone:
        raise CheckpointError(
            f"checkpoint {path} holds a {spec['backbone']} but backbone={expected_backbone} "
            f"was asked for; pass backbone={spec['backbone']} or a {expected_backbone} "
            f"checkpoint"
        )
    model = build_from_spec(spec)
    try:
        model.load_state_dict(payload["model"])
    except RuntimeError as e:
        raise CheckpointError(f"checkpoint {path} does not fit its recorded model ({e})") from e
    return model, payload


def check_input_normalisation(
    spec: dict[str, Any], mean: list[float], std: list[float], path: str | Path
) -> None:
    """Refuse to probe a checkpoint with another input normalisation than it was trained
    with (the reference's ResNet carries its own; ours record theirs in the spec)."""
    want_mean, want_std = spec.get("mean"), spec.get("std")
    if want_mean is None or want_std is None:
        return
    same = all(
        abs(float(a) - float(b)) <= 1e-6
        for a, b in zip([*want_mean, *want_std], [*mean, *std], strict=True)
    )
    if not same:

        def flag(values: list[float]) -> str:  # pasteable into a shell unquoted
            return "[" + ",".join(f"{float(v):g}" for v in values) + "]"

        raise CheckpointError(
            f"checkpoint {path} was trained on inputs normalised with mean {want_mean} and std "
            f"{want_std}, this run normalises with mean {list(mean)} and std {list(std)}; pass "
            f"data.mean={flag(want_mean)} data.std={flag(want_std)}"
        )
