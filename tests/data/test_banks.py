"""Images decoded per batch from files (sdclr.data.banks): in worker processes, by the
read-ahead batch path and by nvJPEG (CUDA only), the same pixels as in-process decoding,
and corrupt files named; on conftest's small ImageNet-style ``tree``."""

from __future__ import annotations

import threading

import numpy as np
import pytest
import torch

from sdclr.data.banks import FileImages, decode_file
from sdclr.data.files import scan_folder
from sdclr.errors import DataError


def test_decoding_in_workers_equals_decoding_in_process(tree, tmp_path):
    scan = scan_folder(tree, "train", "val")
    paths = [p for p, _ in scan.train[:24]]
    assert any(p.endswith(".png") for p in paths)
    idx = [torch.arange(0, 10), torch.arange(10, 24)]
    inline = list(FileImages(tree, paths, torch.device("cpu"), workers=0).batches(idx))
    workers = list(FileImages(tree, paths, torch.device("cpu"), workers=2).batches(idx))
    assert [len(b) for b in workers] == [10, 14]
    for a, b in zip(inline, workers):
        for x, y in zip(a, b):
            assert x.dtype == torch.uint8 and x.shape[0] == 3 and torch.equal(x, y)
    sizes = {tuple(x.shape[1:]) for b in inline for x in b}
    assert len(sizes) > 5  # varied sizes
    broken = tmp_path / "broken.JPEG"
    broken.write_bytes((tree / paths[0]).read_bytes()[:50])
    with pytest.raises(DataError, match="broken.JPEG is corrupt or truncated"):
        decode_file(broken)
    bank = FileImages(tmp_path, ["broken.JPEG", "broken.JPEG"], torch.device("cpu"), workers=2)
    with pytest.raises(DataError, match="broken.JPEG is corrupt"):
        list(bank.batches([torch.arange(2)]))


def test_read_ahead_batch_decoding_equals_the_worker_path(tree, tmp_path):
    """The CUDA path (reader thread + one batched decode_jpeg call on the device) run on the
    CPU: same pixels as the worker path (PNGs through the fallback decoder, a CMYK JPEG), the same
    errors, and a consumer that stops early does not strand the reader."""
    from PIL import Image

    scan = scan_folder(tree, "train", "val")
    paths = [p for p, _ in scan.train[:20]]
    with Image.open(tree / paths[0]) as im:
        im.convert("CMYK").save(tmp_path / "cmyk.jpg")
    (tmp_path / "sub").symlink_to(tree, target_is_directory=True)
    names = ["cmyk.jpg"] + [f"sub/{p}" for p in paths]
    idx = [torch.arange(0, 7), torch.arange(7, 21)]
    bank = FileImages(tmp_path, names, torch.device("cpu"), workers=2)
    ahead = list(bank._read_ahead_batches([i.numpy() for i in idx]))
    workers = list(bank.batches(idx))
    assert [len(b) for b in ahead] == [7, 14]
    for a, b in zip(ahead, workers):
        for x, y in zip(a, b):
            assert x.dtype == torch.uint8 and torch.equal(x, y)
    many = [np.arange(i, i + 1) for i in range(21)]
    pending = bank._read_ahead_batches(many)
    assert len(next(pending)) == 1
    readers = [t for t in threading.enumerate() if t.name == "sdclr-read-ahead"]
    assert len(readers) == 1 and readers[0].is_alive()  # blocked on its full queue
    pending.close()  # the consumer stops after one batch
    readers[0].join(timeout=5)
    assert not readers[0].is_alive()
    broken = tmp_path / "broken.JPEG"
    broken.write_bytes((tree / paths[0]).read_bytes()[:50])
    bad = FileImages(tmp_path, ["cmyk.jpg", "broken.JPEG"], torch.device("cpu"), workers=1)
    with pytest.raises(DataError, match="broken.JPEG is corrupt"):
        list(bad._read_ahead_batches([np.arange(2)]))
    missing = FileImages(tmp_path, ["cmyk.jpg", "gone.jpg"], torch.device("cpu"), workers=1)
    with pytest.raises(DataError, match="cannot read image .*gone.jpg"):
        list(missing._read_ahead_batches([np.arange(1), np.arange(2)]))


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_nvjpeg_decoding_matches_the_cpu_decoder(tree):
    """Batches decoded on the GPU (nvJPEG; PNGs through the CPU decoder) have the CPU
    decoder's sizes and, up to the decoders' IDCT rounding, its pixels."""
    scan = scan_folder(tree, "train", "val")
    paths = [p for p, _ in scan.train[:24]]
    idx = [torch.arange(0, 10), torch.arange(10, 24)]
    gpu = list(FileImages(tree, paths, torch.device("cuda"), workers=2).batches(idx))
    cpu = list(FileImages(tree, paths, torch.device("cpu"), workers=0).batches(idx))
    for a, b in zip(gpu, cpu):
        for x, y in zip(a, b):
            assert x.device.type == "cuda" and x.dtype == torch.uint8 and x.shape == y.shape
            assert (x.cpu().float() - y.float()).abs().mean() < 2.0
