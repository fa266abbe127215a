"""CIFAR-100 data: the on-disk format, the restricted unpickler, checksums, download errors,
and the augmentation of the in-memory loader (the paper's crop + flip)."""

from __future__ import annotations

import os
import pickle
import pickletools
import socket
import urllib.error
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch

from dmlkit.cli import main
from dmlkit.config import DataConfig, load_config
from dmlkit.data import build_data
from dmlkit.data import cifar100 as c100
from dmlkit.data.core import BatchTransform, TensorLoader, channel_stats, epoch_generator
from dmlkit.engine.trainer import Trainer
from dmlkit.errors import ConfigError, UserError
from dmlkit.testing import dump_py2_pickle, write_cifar100

from helpers import QUIET

N_TRAIN, N_TEST, N_CLASSES = 120, 40, 10
PAPER_CONFIG = (
    Path(__file__).parents[1] / "configs" / "paper" / "cifar100_dml_resnet32_resnet32.yaml"
)


@pytest.fixture(scope="module")
def cifar_root(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("cifar")
    write_cifar100(root, n_train=N_TRAIN, n_test=N_TEST, num_classes=N_CLASSES, seed=3)
    return root


def quiet_load(root, **kwargs):
    """load_cifar100 with the (expected) fixture MD5 mismatch warnings silenced."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", c100.DataIntegrityWarning)
        return c100.load_cifar100(root, **kwargs)


def copy_folder(src: Path, dst: Path) -> Path:
    dst.mkdir(parents=True)
    for name in ("train", "test", "meta"):
        (dst / name).write_bytes((src / name).read_bytes())
    return dst


# ------------------------------------------------------------------------------------------------
# the format


def test_fixture_is_a_python2_protocol2_pickle(cifar_root):
    raw = (cifar_root / "cifar-100-python" / "train").read_bytes()
    assert raw[:2] == b"\x80\x02"  # protocol 2
    globals_ = [arg for op, arg, _ in pickletools.genops(raw) if op.name == "GLOBAL"]
    assert sorted(set(globals_)) == [
        "numpy dtype",
        "numpy ndarray",
        "numpy.core.multiarray _reconstruct",
    ]  # in particular no '_codecs encode' (what Python 3 writes for bytes at protocol 2)
    ops = {op.name for op, _, _ in pickletools.genops(raw)}
    assert "SHORT_BINSTRING" in ops and "BINUNICODE" not in ops  # Python 2 byte strings
    # Readable by the plain loaders people use for the real files, with bytes keys.
    with (cifar_root / "cifar-100-python" / "train").open("rb") as f:
        d = pickle.load(f, encoding="bytes")
    assert set(d) == {b"data", b"fine_labels", b"coarse_labels", b"filenames", b"batch_label"}
    assert d[b"data"].dtype == np.uint8 and d[b"data"].shape == (N_TRAIN, 3072)
    assert d[b"batch_label"] == b"training batch 1 of 1"
    assert np.bincount(d[b"fine_labels"]).tolist() == [N_TRAIN // N_CLASSES] * N_CLASSES
    with (cifar_root / "cifar-100-python" / "meta").open("rb") as f:
        meta = pickle.load(f, encoding="bytes")
    assert set(meta) == {b"fine_label_names", b"coarse_label_names"}
    assert len(meta[b"fine_label_names"]) == N_CLASSES


def test_loader_reads_chw_rows_into_uint8_images(cifar_root):
    x_train, y_train, x_test, y_test, names = quiet_load(cifar_root)
    with (cifar_root / "cifar-100-python" / "train").open("rb") as f:
        raw = pickle.load(f, encoding="bytes")
    assert x_train.dtype == torch.uint8 and x_train.shape == (N_TRAIN, 3, 32, 32)
    assert x_test.shape == (N_TEST, 3, 32, 32) and y_test.shape == (N_TEST,)
    data = raw[b"data"]
    for n, c, h, w in [(0, 0, 0, 0), (5, 1, 3, 17), (N_TRAIN - 1, 2, 31, 31), (7, 2, 30, 1)]:
        assert int(x_train[n, c, h, w]) == int(data[n, c * 1024 + h * 32 + w])
    assert y_train.tolist() == raw[b"fine_labels"]
    assert names == [f"class_{c:03d}" for c in range(N_CLASSES)]


def test_fixture_classes_differ_in_content(cifar_root):
    """Class-dependent content: the per-class mean colours are far apart (learnable)."""
    x, y, *_ = quiet_load(cifar_root)
    means = torch.stack([x[y == c].float().mean(dim=(0, 2, 3)) for c in range(N_CLASSES)])
    dist = torch.cdist(means, means) + 1e3 * torch.eye(N_CLASSES)
    assert dist.min() > 5


def test_fixture_is_learnable(tmp_path):
    """A small CNN trained through the real loader (crop + flip) learns the fixture classes."""
    write_cifar100(tmp_path, n_train=300, n_test=100, num_classes=10, seed=4)
    cfg = load_config(
        None,
        [
            "data.name=cifar100", f"data.root={tmp_path}", "data.val_fraction=0",
            "data.batch_size=32", "data.crop_padding=4", "data.hflip=true",
            "peers=[small_cnn]", "peers.0.kwargs.width=8", "method.name=independent",
            "optim.lr=0.05", "train.epochs=4", *QUIET,
        ],
    )  # fmt: skip
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # a tiny net: one thread is faster on a busy machine
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", c100.DataIntegrityWarning)
            summary = Trainer(cfg, tmp_path / "run").fit()
    finally:
        torch.set_num_threads(threads)
    assert summary["peers"][0]["metrics"]["top1"] > 0.6  # chance: 0.1


def test_build_data_gives_the_bundle(cifar_root):
    cfg = DataConfig(name="cifar100", root=str(cifar_root), val_fraction=0.0, crop_padding=4)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", c100.DataIntegrityWarning)
        bundle = build_data(cfg, seed=0)
        carved = build_data(
            DataConfig(name="cifar100", root=str(cifar_root / "cifar-100-python")), seed=0
        )
    assert bundle.num_classes == N_CLASSES and bundle.in_channels == 3
    assert bundle.image_size == (32, 32) and bundle.val is None
    assert bundle.train.x.dtype == torch.uint8  # kept as bytes in memory
    assert len(bundle.train.y) == N_TRAIN and len(bundle.test.y) == N_TEST
    x, y = next(iter(bundle.train))
    assert x.shape == (64, 3, 32, 32) and x.dtype == torch.float32
    # root may also be the cifar-100-python folder itself; val is carved from train
    assert len(carved.train.y) + len(carved.val.y) == N_TRAIN


# ------------------------------------------------------------------------------------------------
# errors a user can fix


def test_missing_root_and_files_are_one_line_errors(tmp_path):
    with pytest.raises(UserError, match="--data-root") as info:
        c100.load_cifar100(None)
    assert "\n" not in str(info.value)
    with pytest.raises(UserError) as info:
        c100.load_cifar100(tmp_path / "nowhere")
    msg = str(info.value)
    assert "\n" not in msg
    assert str(tmp_path / "nowhere" / "cifar-100-python" / "train") in msg
    assert "cifar-100-python/{train,test,meta}" in msg  # the layout
    assert "--download" in msg and c100.URL in msg  # how to get it


def test_unreadable_file_is_a_one_line_error(cifar_root, tmp_path):
    folder = copy_folder(cifar_root / "cifar-100-python", tmp_path / "cifar-100-python")
    raw = (folder / "train").read_bytes()
    (folder / "train").write_bytes(raw[: len(raw) // 2])  # truncated download
    with pytest.raises(UserError, match="unreadable") as info:
        quiet_load(tmp_path)
    assert str(folder / "train") in str(info.value) and "\n" not in str(info.value)
    (folder / "train").write_bytes(b"not a pickle at all")
    with pytest.raises(UserError, match="unreadable") as info:
        quiet_load(tmp_path)
    assert str(folder / "train") in str(info.value)


def test_wrong_content_is_refused(cifar_root, tmp_path):
    folder = copy_folder(cifar_root / "cifar-100-python", tmp_path / "cifar-100-python")
    dump_py2_pickle(
        {b"data": np.zeros((2, 100), np.uint8), b"fine_labels": [0, 1]}, folder / "test"
    )
    with pytest.raises(UserError, match="3072"):
        quiet_load(tmp_path)
    dump_py2_pickle(
        {b"data": np.zeros((2, 3072), np.uint8), b"fine_labels": [0, 99]}, folder / "test"
    )
    with pytest.raises(UserError, match="0..9"):
        quiet_load(tmp_path)


def test_md5_mismatch_warns_or_fails_when_strict(cifar_root, monkeypatch):
    folder = cifar_root / "cifar-100-python"
    monkeypatch.setattr(c100, "_WARNED", set())  # forget the warnings of earlier tests
    with pytest.warns(c100.DataIntegrityWarning) as record:
        c100.load_cifar100(cifar_root)
    messages = [str(w.message) for w in record]
    assert len(messages) == 3
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # once per file and process, not once per run
        assert c100.verify_files(folder, strict=False) == ["train", "test", "meta"]
    assert str(folder / "train") in messages[0] and c100.FILE_MD5["train"] in messages[0]
    assert c100.md5sum(folder / "train") in messages[0]
    with pytest.raises(UserError, match="MD5") as info:
        c100.load_cifar100(cifar_root, strict=True)
    assert "\n" not in str(info.value) and c100.FILE_MD5["train"] in str(info.value)
    # files that match the published checksums load silently, strict or not
    monkeypatch.setattr(
        c100, "FILE_MD5", {n: c100.md5sum(folder / n) for n in ("train", "test", "meta")}
    )
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert c100.load_cifar100(cifar_root, strict=True)[0].shape == (N_TRAIN, 3, 32, 32)


# ------------------------------------------------------------------------------------------------
# the restricted unpickler


class WritesMarker:
    """Unpickling this with a plain unpickler would run ``os.system(...)``."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


class CallsEval:
    def __reduce__(self):
        return (eval, ("__import__('os').getcwd()",))


@pytest.mark.parametrize("protocol", [0, 2, pickle.HIGHEST_PROTOCOL])
def test_malicious_pickle_is_refused_without_running_code(cifar_root, tmp_path, protocol):
    folder = copy_folder(cifar_root / "cifar-100-python", tmp_path / "cifar-100-python")
    marker = tmp_path / "PWNED"
    # str keys: at protocols < 3, bytes would be refused earlier (as a '_codecs.encode' call)
    payload = {"data": WritesMarker(marker), "fine_labels": [0]}
    (folder / "train").write_bytes(pickle.dumps(payload, protocol=protocol))
    with pytest.raises(UserError, match="not allowed") as info:
        quiet_load(tmp_path)
    assert not marker.exists()
    msg = str(info.value)
    assert "system" in msg and str(folder / "train") in msg and "\n" not in msg
    # the same file *would* run code with the standard unpickler (the test is meaningful)
    pickle.loads((folder / "train").read_bytes())
    assert marker.exists()


@pytest.mark.parametrize(
    "obj",
    [
        CallsEval(),
        np.array([1, "a"], dtype=object),  # object arrays unpickle arbitrary objects
        {"x": np.ma.masked_array([1, 2])},  # a numpy global outside the allow-list
    ],
    ids=["eval", "object-array", "other-numpy-global"],
)
def test_restricted_unpickler_refuses_other_globals(tmp_path, obj):
    path = tmp_path / "meta"
    path.write_bytes(pickle.dumps(obj, protocol=2))
    with pytest.raises(UserError, match="refused to load"):
        c100.load_pickle(path)


# ------------------------------------------------------------------------------------------------
# download


def test_download_failure_is_a_one_line_user_error(tmp_path, monkeypatch):
    calls = []

    def offline(url, root, filename, md5):
        calls.append((url, root, filename, md5, socket.getdefaulttimeout()))
        raise urllib.error.URLError("[Errno -2] Name or service not known")

    monkeypatch.setattr(c100, "DOWNLOADER", offline)
    before = socket.getdefaulttimeout()
    with pytest.raises(UserError) as info:
        c100.load_cifar100(tmp_path / "data", allow_download=True)
    msg = str(info.value)
    assert "\n" not in msg and c100.URL in msg and "Name or service not known" in msg
    assert str(tmp_path / "data") in msg and "without --download" in msg
    assert calls[0][:4] == (c100.URL, tmp_path / "data", c100.ARCHIVE, c100.ARCHIVE_MD5)
    assert calls[0][4] is not None  # a timeout while downloading: a blocked network fails
    assert socket.getdefaulttimeout() == before  # and it is restored
    assert not (tmp_path / "data").exists()  # no empty data.root left behind


def test_failed_download_removes_only_what_it_created(tmp_path, monkeypatch):
    def partial(url, root, filename, md5):  # the archive half written, then the network goes
        (root / filename).write_bytes(b"half")
        raise urllib.error.URLError("network unreachable")

    monkeypatch.setattr(c100, "DOWNLOADER", partial)
    with pytest.raises(UserError, match="could not download"):
        c100.load_cifar100(tmp_path / "a" / "b" / "data", allow_download=True)
    assert list(tmp_path.iterdir()) == []  # a/b/data and the partial archive are gone
    (tmp_path / "mine").mkdir()  # a folder the user made is kept, and what was in it
    (tmp_path / "mine" / "notes.txt").write_text("keep")
    with pytest.raises(UserError, match="could not download"):
        c100.load_cifar100(tmp_path / "mine", allow_download=True)
    assert [p.name for p in (tmp_path / "mine").iterdir()] == ["notes.txt"]


def test_download_unpacks_then_loads(tmp_path, monkeypatch):
    def fake(url, root, filename, md5):  # what torchvision's downloader leaves behind
        write_cifar100(root, n_train=20, n_test=10, num_classes=5)

    monkeypatch.setattr(c100, "DOWNLOADER", fake)
    x_train, *_, names = quiet_load(tmp_path / "new", allow_download=True)
    assert x_train.shape == (20, 3, 32, 32) and len(names) == 5
    assert (tmp_path / "new" / "cifar-100-python" / "meta").is_file()


def test_download_needs_a_root():
    with pytest.raises(ConfigError, match="data.download needs data.root"):
        load_config(None, ["data.name=cifar100", "data.download=true"])


# ------------------------------------------------------------------------------------------------
# the command line: --strict-data and --download, exit status 2 and one line


def run_cli(capsys, *argv) -> tuple[int, str]:
    rc = main(list(argv))
    return rc, capsys.readouterr().err


def test_cli_strict_data_fails_on_checksum(cifar_root, tmp_path, capsys):
    rc, err = run_cli(
        capsys, "train", "-c", str(PAPER_CONFIG), "--set", f"data.root={cifar_root}",
        "--strict-data", "--out", str(tmp_path / "run"),
    )  # fmt: skip
    assert rc == 2
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("dml: error:") and "MD5" in lines[0]
    assert not (tmp_path / "run").exists()


def test_cli_download_failure(tmp_path, capsys, monkeypatch):
    def offline(url, root, filename, md5):
        raise urllib.error.URLError("network unreachable")

    monkeypatch.setattr(c100, "DOWNLOADER", offline)
    rc, err = run_cli(
        capsys, "reproduce", "cifar100-table", "--data-root", str(tmp_path / "d"), "--download",
        "--out", str(tmp_path / "grid"), "--no-progress",
    )  # fmt: skip
    assert rc == 2
    assert err.count("\n") == 1 and "could not download" in err and "network unreachable" in err
    assert not (tmp_path / "d").exists()


def test_cli_missing_data(tmp_path, capsys):
    rc, err = run_cli(
        capsys, "train", "-c", str(PAPER_CONFIG), "--set", f"data.root={tmp_path}",
        "--out", str(tmp_path / "run"),
    )  # fmt: skip
    assert rc == 2 and err.count("\n") == 1 and "cifar-100-python" in err and "Traceback" not in err


# ------------------------------------------------------------------------------------------------
# augmentation: the paper's crop (4 px reflection padding) + flip, whole batches on the device


def reference_batch(x, idx, mean, std, gen, padding=4):
    """Per-sample numpy crop + flip + normalise, drawing the same numbers as the loader."""
    b = len(idx)
    off_y = torch.randint(0, 2 * padding + 1, (b,), generator=gen)
    off_x = torch.randint(0, 2 * padding + 1, (b,), generator=gen)
    flip = torch.rand(b, generator=gen) < 0.5
    out = []
    for j, n in enumerate(idx.tolist()):
        img = np.pad(x[n].numpy(), ((0, 0), (padding, padding), (padding, padding)), "reflect")
        oy, ox = int(off_y[j]), int(off_x[j])
        crop = img[:, oy : oy + 32, ox : ox + 32]
        if flip[j]:
            crop = crop[:, :, ::-1]
        crop = crop.astype(np.float32) / 255.0
        out.append((crop - mean.numpy()[:, None, None]) / std.numpy()[:, None, None])
    return torch.from_numpy(np.stack(out))


def test_loader_batches_equal_the_per_sample_reference(cifar_root):
    x, y, *_ = quiet_load(cifar_root)
    mean, std = channel_stats(x)
    loader = TensorLoader(x, y, 32, BatchTransform(mean, std, 4, True), train=True, seed=11)
    loader.set_epoch(2)
    batches = list(loader)
    assert len(batches) == N_TRAIN // 32  # the short last batch is dropped
    gen = epoch_generator(11, 2)
    order = torch.randperm(N_TRAIN, generator=gen)
    for i, (xb, yb) in enumerate(batches):
        idx = order[i * 32 : (i + 1) * 32]
        assert torch.equal(yb, y[idx])
        torch.testing.assert_close(xb, reference_batch(x, idx, mean, std, gen), atol=1e-6, rtol=0)
    again = list(loader)  # the same seed and epoch give the same batches
    assert all(torch.equal(a[0], b[0]) for a, b in zip(batches, again))
    loader.set_epoch(3)
    assert not torch.equal(next(iter(loader))[0], batches[0][0])


def coordinate_images(n: int) -> torch.Tensor:
    """Channel 0 holds each pixel's row index x 8, channel 1 its column index x 8."""
    rows = (torch.arange(32) * 8).to(torch.uint8)
    img = torch.stack([rows[:, None].expand(32, 32), rows[None, :].expand(32, 32)])
    return img[None].expand(n, 2, 32, 32).contiguous()


def crop_parameters(batch: torch.Tensor) -> tuple[list[int], list[int], list[bool]]:
    """Recover (offset y, offset x, flipped) of every image cropped from coordinate_images."""

    def reflect(offset: int) -> torch.Tensor:
        """Source row of each output row for a crop at ``offset`` of the 4-px padded image."""
        i = torch.arange(32) + offset - 4
        return torch.where(i < 32, i.abs(), 62 - i)

    candidates = torch.stack([reflect(o) for o in range(9)])  # [9, 32] source index per pixel
    idx = torch.round(batch * 255 / 8).long()  # [B, 2, 32, 32]
    ys, xs, flips = [], [], []
    for img in idx:
        col = img[0, :, 0]
        row = img[1, 0, :]
        ys.append(int((candidates == col).all(1).nonzero()))
        hit = (candidates == row).all(1).nonzero()
        if len(hit):
            xs.append(int(hit))
            flips.append(False)
        else:
            xs.append(int((candidates == row.flip(0)).all(1).nonzero()))
            flips.append(True)
    return ys, xs, flips


def augmentation_stats(device: str) -> tuple[np.ndarray, np.ndarray, float, list[torch.Tensor]]:
    n = 9000
    x = coordinate_images(n).to(device)
    tf = BatchTransform(torch.zeros(2), torch.ones(2), crop_padding=4, hflip=True)
    loader = TensorLoader(x, torch.zeros(n, dtype=torch.long, device=device), 1000, tf, train=True)
    ys, xs, flips, batches = [], [], [], []
    for xb, _ in loader:
        batches.append(xb.cpu())
        a, b, c = crop_parameters(xb.cpu())
        ys += a
        xs += b
        flips += c
    return (
        np.bincount(ys, minlength=9),
        np.bincount(xs, minlength=9),
        float(np.mean(flips)),
        batches,
    )


@pytest.fixture(scope="module")
def cpu_augmentation():
    return augmentation_stats("cpu")


def test_crop_offsets_uniform_and_flip_rate_half(cpu_augmentation):
    count_y, count_x, flip_rate, _ = cpu_augmentation
    expected = 9000 / 9
    for counts in (count_y, count_x):
        assert len(counts) == 9 and counts.min() > 0  # every offset 0..8 occurs
        chi2 = float(((counts - expected) ** 2 / expected).sum())
        assert chi2 < 26.1  # 8 degrees of freedom, p = 0.001
    assert abs(flip_rate - 0.5) < 0.02


def test_reflection_padding_never_shows_a_border(cpu_augmentation):
    """Reflection (not zeros): every output pixel is a pixel of the image."""
    _, _, _, batches = cpu_augmentation
    values = torch.round(torch.cat(batches) * 255 / 8)
    assert values.min() >= 0 and values.max() <= 31


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_device_loader_matches_cpu_loader(cifar_root, cpu_augmentation):
    x, y, *_ = quiet_load(cifar_root)
    mean, std = channel_stats(x)
    tf = BatchTransform(mean, std, 4, True)
    cpu = TensorLoader(x, y, 32, tf, train=True, seed=5)
    gpu = TensorLoader(x, y, 32, tf, train=True, seed=5).to(torch.device("cuda"))
    for (a, ya), (b, yb) in zip(cpu, gpu):
        assert b.device.type == "cuda"
        assert torch.equal(ya, yb.cpu())
        torch.testing.assert_close(a, b.cpu(), atol=1e-6, rtol=0)
    count_y, count_x, flip_rate, batches = augmentation_stats("cuda")
    ref_y, ref_x, ref_flip, ref_batches = cpu_augmentation
    assert np.array_equal(count_y, ref_y) and np.array_equal(count_x, ref_x)
    assert flip_rate == ref_flip
    assert all(torch.equal(a, b) for a, b in zip(batches, ref_batches))
