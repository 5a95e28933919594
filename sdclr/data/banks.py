"""Where a batch's pixels come from: a resident uint8 array, or image files decoded per batch.

* :class:`TensorImages`: the whole dataset decoded once, uint8 ``[N, 3, H, W]`` on the training
  device; a batch is an index gather (CIFAR, and resized caches of larger data).
* :class:`FileImages`: image files decoded per batch, for data too large or too varied in size
  to hold decoded. On CUDA, JPEGs are decoded on the GPU in batches (``torchvision.io``'s
  nvJPEG decoder) while a thread reads the next batches' bytes; on CPU, a multi-worker loader
  decodes ahead. A batch is a list of uint8 ``[3, H_i, W_i]`` tensors on the device, which
  :mod:`sdclr.augment.views` turns into fixed-size float batches.

Both yield the same thing for the same indices and both are :class:`Images`, so the training
loop, the probes and the monitors do not care which one they get.
"""

from __future__ import annotations

import os
import threading
import warnings
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from queue import Full, Queue
from typing import Protocol

import numpy as np
import torch
from torch import Tensor

from sdclr.augment.views import resize_center_crop
from sdclr.errors import DataError
from sdclr.utils.progress import progress_bar

# torchvision >= 0.29 marks torchvision.io's decoders as superseded by TorchCodec; they are
# still the decoders that ship with torchvision (and the GPU machine's 0.26 has no TorchCodec)
warnings.filterwarnings(
    "ignore", message="The image decoding and encoding capabilities", category=DeprecationWarning
)


class Images(Protocol):
    """An image bank: what the training loop, the probes and the monitors read images from
    (:class:`TensorImages` or :class:`FileImages`)."""

    def __len__(self) -> int: ...

    @property
    def device(self) -> torch.device:
        """Where its batches are delivered."""
        ...

    @property
    def image_size(self) -> int | None:
        """The side of every (square) image, or None when the sizes vary (image files)."""
        ...

    def batches(self, idx_batches: Sequence[Tensor]) -> Iterator[Tensor | list[Tensor]]:
        """The images at each index batch, in order: a uint8 ``[B, 3, H, W]`` tensor, or a list
        of uint8 ``[3, H_i, W_i]`` tensors (:mod:`sdclr.augment.views` takes both)."""
        ...

    def subset(self, idx: np.ndarray | Tensor) -> Images:
        """The images at positions ``idx``, in that order, as a bank of their own."""
        ...


def _positions(idx: np.ndarray | Tensor) -> np.ndarray:
    """Positions as a host array, from a tensor on any device or an array."""
    return np.asarray(idx.cpu() if isinstance(idx, Tensor) else idx)


class TensorImages:
    """A decoded dataset held on the device."""

    def __init__(self, images: Tensor):
        self.images = images

    def __len__(self) -> int:
        return len(self.images)

    @property
    def device(self) -> torch.device:
        return self.images.device

    @property
    def image_size(self) -> int:
        return int(self.images.shape[-1])

    def take(self, idx: Tensor) -> Tensor:
        return self.images[idx.to(self.images.device)]

    def batches(self, idx_batches: Sequence[Tensor]) -> Iterator[Tensor]:
        for idx in idx_batches:
            yield self.take(idx)

    def subset(self, idx: np.ndarray | Tensor) -> TensorImages:
        """A gathered copy of the images at ``idx``."""
        return TensorImages(self.take(torch.as_tensor(idx, device=self.device)))


def as_images(images: Tensor | Images) -> Images:
    return TensorImages(images) if isinstance(images, Tensor) else images


# --- decoding ------------------------------------------------------------------------------------


def decode_bytes(data: bytes | Tensor, name: str) -> Tensor:
    """uint8 ``[3, H, W]`` from an encoded image (torchvision's decoders, PIL for the rest)."""
    from torchvision.io import ImageReadMode, decode_image

    buf = data if isinstance(data, Tensor) else torch.frombuffer(bytearray(data), dtype=torch.uint8)
    try:
        return decode_image(buf, mode=ImageReadMode.RGB)
    except (RuntimeError, ValueError):
        pass  # a format torchvision does not decode (bmp, tiff, ...) or a corrupt file
    import io

    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(io.BytesIO(bytes(buf.numpy()))) as im:
            arr = np.asarray(im.convert("RGB"))
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError) as e:
        raise DataError(
            f"image {name} is corrupt or truncated ({e}); replace or remove the file"
        ) from e
    return torch.from_numpy(arr.copy()).permute(2, 0, 1).contiguous()


def read_bytes(path: Path) -> bytes:
    try:
        return path.read_bytes()
    except OSError as e:
        raise DataError(
            f"cannot read image {path} ({e.strerror}); check data.root and the lists"
        ) from e


def decode_file(path: Path) -> Tensor:
    return decode_bytes(read_bytes(path), str(path))


class _DecodeBatches(torch.utils.data.Dataset):
    """Loader-worker side of the CPU path: item i is batch i, decoded."""

    def __init__(self, root: Path, paths: list[str], idx_batches: list[np.ndarray]):
        self.root, self.paths, self.idx_batches = root, paths, idx_batches

    def __len__(self) -> int:
        return len(self.idx_batches)

    def __getitem__(self, i: int) -> list[Tensor]:
        return [decode_file(self.root / self.paths[j]) for j in self.idx_batches[i]]


def _unwrap_worker_error(e: Exception) -> DataError:
    # A DataLoader worker re-raises with the traceback text in the message; keep our line.
    lines = [ln for ln in str(e).splitlines() if "DataError:" in ln]
    return DataError(lines[-1].split("DataError:", 1)[1].strip() if lines else str(e))


class FileImages:
    """Image files decoded per batch on ``device``; ``workers`` CPU loader processes."""

    def __init__(
        self, root: Path, paths: list[str], device: torch.device, workers: int | None = None
    ):
        self.root = Path(root)
        self.paths = list(paths)
        self.device = torch.device(device)
        self.workers = min(8, os.cpu_count() or 1) if workers is None else int(workers)
        self._stream: torch.cuda.Stream | None = None  # the CUDA decode stream, made on first use

    def __len__(self) -> int:
        return len(self.paths)

    @property
    def image_size(self) -> None:
        return None  # decoded at their own sizes

    def subset(self, idx: np.ndarray | Tensor) -> FileImages:
        """A view of the files at ``idx`` (nothing is read)."""
        paths = [self.paths[i] for i in _positions(idx).tolist()]
        return FileImages(self.root, paths, self.device, self.workers)

    def _decode_batch(self, blobs: list[bytes], names: list[str]) -> list[Tensor]:
        """The batch's JPEGs decoded together on ``self.device`` (nvJPEG on CUDA); anything
        else (PNG, a JPEG the batched decoder refuses, e.g. CMYK on nvJPEG) via the CPU
        decoder, then moved there."""
        if self.device.type != "cuda":
            return self._decode_batch_on_current_stream(blobs, names)
        # torchvision's nvJPEG decoder allocates its outputs on the current stream but decodes
        # on a stream of its own without waiting for it, so memory that kernels queued for the
        # training step still read could be overwritten. Decode with a side stream current
        # (its blocks are free of queued work), then hand the images to the compute stream.
        main = torch.cuda.current_stream(self.device)
        if self._stream is None:
            self._stream = torch.cuda.Stream(self.device)
        with torch.cuda.stream(self._stream):
            out = self._decode_batch_on_current_stream(blobs, names)
        main.wait_stream(self._stream)
        for img in out:
            img.record_stream(main)  # not reused until the compute stream is done with it
        return out

    def _decode_batch_on_current_stream(self, blobs: list[bytes], names: list[str]) -> list[Tensor]:
        from torchvision.io import ImageReadMode, decode_jpeg

        bufs = [torch.frombuffer(bytearray(b), dtype=torch.uint8) for b in blobs]
        jpeg = [i for i, b in enumerate(blobs) if b[:2] == b"\xff\xd8"]
        out: list[Tensor | None] = [None] * len(blobs)
        if jpeg:
            try:
                decoded = decode_jpeg(
                    [bufs[i] for i in jpeg], mode=ImageReadMode.RGB, device=self.device
                )
                for i, img in zip(jpeg, decoded):
                    out[i] = img
            except RuntimeError as e:  # e.g. a CMYK JPEG: the CPU decoder below takes them
                if self.device.type == "cuda":
                    why = (str(e).splitlines() or [type(e).__name__])[0]
                    warnings.warn(  # shown once: a rare CMYK image is normal, every batch not
                        f"the GPU JPEG decoder refused a batch ({why}); its "
                        f"images were decoded on the CPU. A few such batches are normal (CMYK "
                        f"JPEGs); if it happens for every batch, nvJPEG is not usable here and "
                        f"decoding is slow: consider data.cache_size",
                        RuntimeWarning,
                        stacklevel=2,
                    )
        for i, img in enumerate(out):
            if img is None:
                out[i] = decode_bytes(bufs[i], names[i]).to(self.device, non_blocking=True)
        return out  # type: ignore[return-value]

    def take(self, idx: Tensor) -> list[Tensor]:
        return next(iter(self.batches([idx])))

    def batches(self, idx_batches: Sequence[Tensor]) -> Iterator[list[Tensor]]:
        """Decoded batches in order, prepared ahead of the consumer."""
        plain = [_positions(i) for i in idx_batches]
        if not plain:
            return iter(())
        if self.device.type == "cuda":
            return self._read_ahead_batches(plain)
        return self._cpu_batches(plain)

    def _cpu_batches(self, idx_batches: list[np.ndarray]) -> Iterator[list[Tensor]]:
        if self.workers == 0:
            for idx in idx_batches:
                yield [decode_file(self.root / self.paths[j]) for j in idx]
            return
        loader = torch.utils.data.DataLoader(
            _DecodeBatches(self.root, self.paths, idx_batches),
            batch_size=None,
            shuffle=False,
            num_workers=min(self.workers, len(idx_batches)),
            prefetch_factor=2,
            persistent_workers=False,
        )
        it = iter(loader)
        while True:
            try:
                batch = next(it)
            except StopIteration:
                return
            except DataError as e:
                raise _unwrap_worker_error(e) from None
            yield batch

    def _read_ahead_batches(self, idx_batches: list[np.ndarray]) -> Iterator[list[Tensor]]:
        """The CUDA path: a reader thread keeps two batches of file bytes ahead while each
        batch is decoded on the device (it runs on any device, which is how the CPU tests
        exercise it)."""
        ahead: Queue = Queue(maxsize=2)
        stop = threading.Event()

        def put(item: object) -> bool:
            # a consumer that stops early (end of run, interruption) must not strand the thread
            while not stop.is_set():
                try:
                    ahead.put(item, timeout=0.1)
                    return True
                except Full:
                    continue
            return False

        def reader() -> None:
            try:
                with ThreadPoolExecutor(max_workers=max(1, self.workers)) as pool:
                    for idx in idx_batches:
                        files = [self.root / self.paths[j] for j in idx]
                        blobs = list(pool.map(read_bytes, files))
                        if not put((blobs, [str(f) for f in files])):
                            return
            except BaseException as e:  # raised in the consumer, which would otherwise wait
                put(e)
                return
            put(None)

        thread = threading.Thread(target=reader, daemon=True, name="sdclr-read-ahead")
        thread.start()
        try:
            while True:
                item = ahead.get()
                if item is None:
                    return
                if isinstance(item, BaseException):
                    raise item
                yield self._decode_batch(*item)
        finally:
            stop.set()


def resize_square(img: Tensor, size: int) -> Tensor:
    """Shorter side to ``size``, then the central square: the resized cache's storage format
    (uint8 in and out)."""
    return resize_center_crop(img, size, size)


def decode_resized(
    root: Path,
    paths: list[str],
    size: int,
    workers: int | None = None,
    desc: str = "decoding",
    progress: bool = True,
) -> np.ndarray:
    """Decode every file once into a uint8 ``[N, 3, size, size]`` array (the resized cache)."""
    out = np.empty((len(paths), 3, size, size), dtype=np.uint8)

    def one(i: int) -> None:
        out[i] = resize_square(decode_file(root / paths[i]), size).numpy()

    n_workers = min(8, os.cpu_count() or 1) if workers is None else max(1, int(workers))
    with ThreadPoolExecutor(max_workers=n_workers) as pool:
        jobs = pool.map(one, range(len(paths)))
        for _ in progress_bar(jobs, total=len(paths), desc=desc, enabled=progress):
            pass
    return out
