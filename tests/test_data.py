"""Data: batch augmentation, the in-memory loader, the digits bundle and image folders."""

from __future__ import annotations

import itertools
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from dmlkit.config import DataConfig
from dmlkit.data import TensorLoader, build_data, random_crop_flip
from dmlkit.data.core import BatchTransform
from dmlkit.errors import ConfigError, UserError

N_DIGITS = 1797
DIGITS_CLASS_COUNTS = [178, 182, 177, 183, 181, 182, 181, 179, 174, 180]
# round(0.25 * count) per class (Python rounding: 44.5 -> 44, 45.5 -> 46, 43.5 -> 44)
DIGITS_TEST_COUNTS = [44, 46, 44, 46, 45, 46, 45, 45, 44, 45]


def gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


# ---------------------------------------------------------------------------------------------
# random_crop_flip


@pytest.mark.parametrize("dtype", [torch.float32, torch.uint8])
@pytest.mark.parametrize("padding, flip", [(0, True), (2, False), (2, True)])
def test_crop_flip_shape_and_dtype(dtype, padding, flip):
    x = torch.randint(0, 256, (5, 3, 7, 9)).to(dtype)
    out = random_crop_flip(x, padding, flip, gen(0))
    assert out.shape == x.shape
    assert out.dtype == dtype


def test_crop_flip_identity_without_augmentation():
    x = torch.randn(6, 2, 5, 5)
    out = random_crop_flip(x, 0, False, gen(0))
    assert torch.equal(out, x)


def test_flip_only_mirrors_about_half():
    b = 1000
    x = torch.randn(b, 2, 4, 5)  # random: no image equals its mirror
    out = random_crop_flip(x, 0, True, gen(1))
    same = (out == x).flatten(1).all(1)
    mirrored = (out == x.flip(-1)).flatten(1).all(1)
    assert bool((same ^ mirrored).all()), "each image is either unchanged or mirrored"
    rate = mirrored.float().mean().item()
    assert 0.4 < rate < 0.6  # Binomial(1000, 0.5): sd 0.016
    assert 0 < mirrored.sum() < b


def _infer_offsets(x: torch.Tensor, out: torch.Tensor, padding: int, mode: str, flips: bool):
    """For each image, every (dy, dx, flipped) whose window of the padded input equals out."""
    b, _, h, w = x.shape
    xp = F.pad(x, (padding,) * 4, mode=mode)
    found = []
    for i in range(b):
        hits = []
        for dy, dx in itertools.product(range(2 * padding + 1), repeat=2):
            window = xp[i, :, dy : dy + h, dx : dx + w]
            if torch.equal(out[i], window):
                hits.append((dy, dx, False))
            if flips and torch.equal(out[i], window.flip(-1)):
                hits.append((dy, dx, True))
        found.append(hits)
    return found


@pytest.mark.parametrize("padding", [1, 2])
def test_crop_is_a_window_of_the_reflection_padded_input(padding):
    b = 150
    x = torch.randn(b, 2, 6, 7)
    out = random_crop_flip(x, padding, False, gen(2))
    found = _infer_offsets(x, out, padding, "reflect", flips=False)
    assert all(len(h) == 1 for h in found), "each output matches exactly one window"
    dys = {h[0][0] for h in found}
    dxs = {h[0][1] for h in found}
    assert dys == set(range(2 * padding + 1))
    assert dxs == set(range(2 * padding + 1))
    # not all crops are the identity (offset = padding)
    assert sum(h[0][:2] == (padding, padding) for h in found) < b / 2


def test_crop_and_flip_together():
    padding, b = 2, 200
    x = torch.randn(b, 1, 6, 6)
    out = random_crop_flip(x, padding, True, gen(3))
    found = _infer_offsets(x, out, padding, "reflect", flips=True)
    assert all(len(h) == 1 for h in found)
    flipped = [h[0][2] for h in found]
    assert 0.3 < sum(flipped) / b < 0.7
    assert {h[0][0] for h in found} == set(range(5))
    assert {h[0][1] for h in found} == set(range(5))


def test_crop_uint8_is_window_of_padded_input():
    padding = 1
    x = torch.randint(0, 256, (40, 3, 5, 5), dtype=torch.uint8)
    out = random_crop_flip(x, padding, False, gen(4))
    found = _infer_offsets(x.float(), out.float(), padding, "reflect", flips=False)
    assert all(len(h) >= 1 for h in found)


def test_crop_padding_at_least_image_size_uses_replicate():
    # reflection padding needs padding < size; the function falls back to replicate
    padding = 3
    x = torch.randn(60, 1, 3, 3)
    out = random_crop_flip(x, padding, False, gen(5))
    assert torch.isfinite(out).all()
    found = _infer_offsets(x, out, padding, "replicate", flips=False)
    assert all(len(h) >= 1 for h in found)


def test_crop_flip_same_seed_same_output():
    x = torch.randn(32, 3, 6, 6)
    a = random_crop_flip(x, 2, True, gen(7))
    b = random_crop_flip(x, 2, True, gen(7))
    c = random_crop_flip(x, 2, True, gen(8))
    assert torch.equal(a, b)
    assert not torch.equal(a, c)


# ---------------------------------------------------------------------------------------------
# TensorLoader


def ident_transform(**kw) -> BatchTransform:
    return BatchTransform(torch.zeros(1), torch.ones(1), **kw)


def make_loader(n: int = 10, batch_size: int = 3, *, train: bool, seed: int = 0, **kw):
    # sample i is an image filled with the value i; its label is 100 + i
    x = torch.arange(n, dtype=torch.float32)[:, None, None, None].expand(n, 1, 2, 2).clone()
    y = torch.arange(n) + 100
    return TensorLoader(x, y, batch_size, ident_transform(**kw), train=train, seed=seed)


def epoch_ids(loader: TensorLoader, epoch: int | None = None) -> list[int]:
    if epoch is not None:
        loader.set_epoch(epoch)
    ids = []
    for xb, yb in loader:
        batch = xb[:, 0, 0, 0].round().long()
        assert torch.equal(yb, batch + 100), "labels travel with their images"
        ids.extend(batch.tolist())
    return ids


def test_loader_train_order_deterministic_per_seed_and_epoch():
    a = make_loader(50, 8, train=True, seed=3)
    b = make_loader(50, 8, train=True, seed=3)
    assert epoch_ids(a, 2) == epoch_ids(b, 2)
    assert epoch_ids(a, 2) == epoch_ids(a, 2)  # iterating again repeats the epoch
    orders = [epoch_ids(a, e) for e in range(4)]
    assert len({tuple(o) for o in orders}) == 4, "different epochs, different orders"
    other_seed = make_loader(50, 8, train=True, seed=4)
    assert epoch_ids(other_seed, 2) != epoch_ids(a, 2)
    assert orders[0] != sorted(orders[0]), "train mode shuffles"


def test_loader_set_epoch_controls_order():
    a = make_loader(40, 4, train=True, seed=0)
    first = epoch_ids(a)  # epoch 0 by default
    a.set_epoch(5)
    fifth = epoch_ids(a)
    a.set_epoch(0)
    assert epoch_ids(a) == first
    assert fifth != first


def test_loader_train_drop_last_each_sample_at_most_once():
    loader = make_loader(10, 3, train=True)
    assert len(loader) == 3
    batches = list(loader)
    assert [len(yb) for _, yb in batches] == [3, 3, 3]
    ids = epoch_ids(loader, 1)
    assert len(ids) == 9
    assert len(set(ids)) == 9
    assert set(ids) <= set(range(10))


def test_loader_train_smaller_than_batch_keeps_all():
    loader = make_loader(5, 8, train=True)
    assert len(loader) == 1
    assert sorted(epoch_ids(loader)) == list(range(5))


def test_loader_eval_yields_all_in_order():
    loader = make_loader(10, 3, train=False)
    assert len(loader) == 4
    assert [len(yb) for _, yb in loader] == [3, 3, 3, 1]
    assert epoch_ids(loader) == list(range(10))
    assert epoch_ids(loader, 7) == list(range(10)), "eval order ignores the epoch"


def test_loader_train_augmentation_repeats_per_epoch():
    torch.manual_seed(0)
    x = torch.randn(32, 1, 6, 6)
    y = torch.arange(32)
    loader = TensorLoader(x, y, 8, ident_transform(crop_padding=1, hflip=True), train=True)
    loader.set_epoch(1)
    run1 = [xb for xb, _ in loader]
    run2 = [xb for xb, _ in loader]
    assert all(torch.equal(a, b) for a, b in zip(run1, run2))
    loader.set_epoch(2)
    run3 = [xb for xb, _ in loader]
    assert not all(torch.equal(a, b) for a, b in zip(run1, run3))
    # augmented batches differ from the raw images of the same samples
    loader.set_epoch(1)
    changed = sum(not torch.equal(xb, x[yb]) for xb, yb in loader)
    assert changed > 0


def test_loader_eval_does_not_augment():
    x = torch.randn(12, 1, 6, 6)
    y = torch.arange(12)
    loader = TensorLoader(x, y, 5, ident_transform(crop_padding=2, hflip=True), train=False)
    out = torch.cat([xb for xb, _ in loader])
    assert torch.equal(out, x)


def test_batch_transform_scales_uint8_and_normalises():
    x = torch.tensor([0, 51, 255], dtype=torch.uint8).view(3, 1, 1, 1)
    t = BatchTransform(torch.tensor([0.2]), torch.tensor([0.5]))
    out = t(x, None)
    assert out.dtype == torch.float32
    assert torch.allclose(out.flatten(), torch.tensor([-0.4, 0.0, 1.6]), atol=1e-6)


# ---------------------------------------------------------------------------------------------
# digits


@pytest.fixture(scope="module")
def digits():
    return build_data(DataConfig(crop_padding=0, hflip=False), seed=0)


def _rows(x: torch.Tensor, y: torch.Tensor) -> Counter:
    return Counter((xi.numpy().tobytes(), int(yi)) for xi, yi in zip(x, y))


def test_digits_bundle_metadata(digits):
    assert digits.num_classes == 10
    assert digits.in_channels == 1
    assert digits.image_size == (8, 8)
    assert digits.class_names == [str(i) for i in range(10)]
    assert digits.train.x.shape[1:] == (1, 8, 8)


def test_digits_splits_partition_the_dataset(digits):
    from sklearn.datasets import load_digits

    n_train, n_val, n_test = len(digits.train.y), len(digits.val.y), len(digits.test.y)
    assert n_train + n_val + n_test == N_DIGITS
    assert n_val > 0
    assert np.bincount(digits.test.y.numpy()).tolist() == DIGITS_TEST_COUNTS
    assert n_test == sum(DIGITS_TEST_COUNTS) == 450

    # the three splits together are exactly the dataset (as a multiset of image+label rows)
    raw = load_digits()
    x_all = torch.from_numpy((raw.images.astype(np.float32) / 16.0)[:, None])
    y_all = torch.from_numpy(raw.target.astype(np.int64))
    assert np.bincount(raw.target).tolist() == DIGITS_CLASS_COUNTS
    total = (
        _rows(digits.train.x, digits.train.y)
        + _rows(digits.val.x, digits.val.y)
        + _rows(digits.test.x, digits.test.y)
    )
    assert total == _rows(x_all, y_all)


def test_digits_val_stratified(digits):
    counts = np.bincount(digits.val.y.numpy(), minlength=10)
    trainval = np.array(DIGITS_CLASS_COUNTS) - np.array(DIGITS_TEST_COUNTS)
    expected = np.array([int(round(0.1 * c)) for c in trainval])
    assert counts.tolist() == expected.tolist()


def test_digits_test_split_fixed_across_run_seeds(digits):
    other = build_data(DataConfig(crop_padding=0, hflip=False), seed=5)
    assert torch.equal(other.test.x, digits.test.x)
    assert torch.equal(other.test.y, digits.test.y)
    assert torch.equal(other.val.y, digits.val.y)
    assert torch.equal(other.train.x, digits.train.x)  # same split, only the order differs
    assert epoch_order(other.train) != epoch_order(digits.train)


def test_digits_other_split_seed_changes_test_split(digits):
    other = build_data(DataConfig(split_seed=1), seed=0)
    assert len(other.test.y) == len(digits.test.y)
    assert not torch.equal(other.test.x, digits.test.x)


def epoch_order(loader: TensorLoader) -> list[int]:
    return torch.cat([yb for _, yb in loader]).tolist()


def test_digits_train_batches_are_normalised(digits):
    xs = torch.cat([xb for xb, _ in digits.train])
    assert abs(xs.mean().item()) < 0.02
    assert abs(xs.std().item() - 1) < 0.05
    first, _ = next(iter(digits.train))
    assert first.shape == (DataConfig().batch_size, 1, 8, 8)
    assert first.dtype == torch.float32
    # eval splits use the training statistics: close to, but not exactly, zero mean
    xt = torch.cat([xb for xb, _ in digits.test])
    assert abs(xt.mean().item()) < 0.1


def test_digits_with_default_augmentation_still_normalised():
    bundle = build_data(DataConfig(crop_padding=1, hflip=True), seed=0)
    xs = torch.cat([xb for xb, _ in bundle.train])
    assert abs(xs.mean().item()) < 0.1
    assert abs(xs.std().item() - 1) < 0.1


def test_digits_train_size(digits):
    bundle = build_data(DataConfig(train_size=100), seed=0)
    assert len(bundle.train.y) == 100
    assert len(bundle.test.y) == len(digits.test.y)
    # a subset of the full training split
    full = _rows(digits.train.x, digits.train.y)
    sub = _rows(bundle.train.x, bundle.train.y)
    assert all(full[k] >= v for k, v in sub.items())


def test_digits_train_size_too_large(digits):
    too_many = len(digits.train.y) + 1
    with pytest.raises(ConfigError, match="data.train_size"):
        build_data(DataConfig(train_size=too_many), seed=0)
    exact = build_data(DataConfig(train_size=len(digits.train.y)), seed=0)
    assert len(exact.train.y) == len(digits.train.y)


def test_digits_labelled_fraction(digits):
    bundle = build_data(DataConfig(crop_padding=0, hflip=False, labelled_fraction=0.5), seed=0)
    y_full = digits.train.y
    y_semi = bundle.train.y
    assert torch.equal(bundle.train.x, digits.train.x)
    unl = y_semi == -1
    assert torch.equal(y_semi[~unl], y_full[~unl]), "kept labels are unchanged"
    assert abs(unl.float().mean().item() - 0.5) < 0.01
    for c in range(10):
        in_class = y_full == c
        n_unl = int((unl & in_class).sum())
        assert abs(n_unl - in_class.sum().item() / 2) <= 1, f"class {c} not stratified"
    assert (bundle.val.y >= 0).all()
    assert (bundle.test.y >= 0).all()
    assert torch.equal(bundle.test.y, digits.test.y)


# ---------------------------------------------------------------------------------------------
# imagefolder

CLASSES = ["cat", "dog", "emu"]


def save_png(path: Path, cls: int, j: int, split: int, size: int = 8) -> None:
    """An RGB image whose pixels encode (class, index, split): R=40*cls, G=10*j, B=100*split."""
    path.parent.mkdir(parents=True, exist_ok=True)
    arr = np.zeros((size, size, 3), np.uint8)
    arr[..., 0] = 40 * cls
    arr[..., 1] = 10 * j
    arr[..., 2] = 100 * split
    arr[0, 0] = [255, 255, 255]  # make it non-constant
    Image.fromarray(arr).save(path)


def decode_codes(x: torch.Tensor) -> list[tuple[int, int, int]]:
    px = x[:, :, 1, 1].long()
    return [(int(r) // 40, int(g) // 10, int(b) // 100) for r, g, b in px]


def build_folder(root: Path, **kw):
    cfg = DataConfig(name="imagefolder", root=str(root), **kw)
    return build_data(cfg, seed=0)


def test_imagefolder_train_test_layout(tmp_path):
    root = tmp_path / "imgs"
    for c, name in enumerate(CLASSES):
        for j in range(3):
            save_png(root / "train" / name / f"{j}.png", c, j, 0)
        for j in range(2):
            save_png(root / "test" / name / f"{j}.png", c, j, 1)
    (root / "train" / "cat" / "notes.txt").write_text("not an image")
    bundle = build_folder(root, val_fraction=0.0)
    assert bundle.num_classes == 3
    assert bundle.class_names == CLASSES
    assert bundle.in_channels == 3
    assert bundle.image_size == (8, 8)
    assert bundle.val is None
    assert bundle.train.x.shape == (9, 3, 8, 8)
    assert bundle.train.x.dtype == torch.uint8
    assert bundle.test.x.shape == (6, 3, 8, 8)
    train_codes = decode_codes(bundle.train.x)
    test_codes = decode_codes(bundle.test.x)
    assert sorted(train_codes) == sorted((c, j, 0) for c in range(3) for j in range(3))
    assert sorted(test_codes) == sorted((c, j, 1) for c in range(3) for j in range(2))
    assert [code[0] for code in train_codes] == bundle.train.y.tolist()
    assert [code[0] for code in test_codes] == bundle.test.y.tolist()
    batch, labels = next(iter(bundle.test))
    assert batch.dtype == torch.float32 and batch.shape[1:] == (3, 8, 8)
    assert labels.tolist() == bundle.test.y[: len(labels)].tolist()


def test_imagefolder_flat_layout(tmp_path):
    root = tmp_path / "flat"
    for c, name in enumerate(CLASSES):
        for j in range(4):
            save_png(root / name / f"img{j}.png", c, j, 0)
    bundle = build_folder(root, val_fraction=0.34, test_fraction=0.25)
    assert bundle.class_names == CLASSES
    assert bundle.num_classes == 3
    # per class: 1 of 4 held out for test, then 1 of the 3 left for val
    assert len(bundle.test.y) == 3 and sorted(bundle.test.y.tolist()) == [0, 1, 2]
    assert len(bundle.val.y) == 3 and sorted(bundle.val.y.tolist()) == [0, 1, 2]
    assert len(bundle.train.y) == 6
    codes = []
    for loader in (bundle.train, bundle.val, bundle.test):
        loader_codes = decode_codes(loader.x)
        assert [c for c, _, _ in loader_codes] == loader.y.tolist()
        codes += loader_codes
    assert sorted(codes) == sorted((c, j, 0) for c in range(3) for j in range(4))


def test_imagefolder_flat_layout_no_val(tmp_path):
    root = tmp_path / "flat"
    for c, name in enumerate(CLASSES[:2]):
        for j in range(4):
            save_png(root / name / f"{j}.png", c, j, 0)
    bundle = build_folder(root, val_fraction=0.0)
    assert bundle.val is None
    assert bundle.num_classes == 2
    assert len(bundle.train.y) + len(bundle.test.y) == 8


def test_imagefolder_missing_root(tmp_path):
    missing = tmp_path / "does_not_exist"
    with pytest.raises(UserError) as info:
        build_folder(missing)
    assert str(missing) in str(info.value)


def test_imagefolder_root_not_set():
    with pytest.raises(UserError, match="data.root"):
        build_data(DataConfig(name="imagefolder"), seed=0)


def test_imagefolder_train_without_test(tmp_path):
    root = tmp_path / "imgs"
    save_png(root / "train" / "cat" / "0.png", 0, 0, 0)
    with pytest.raises(UserError, match="test"):
        build_folder(root)


def test_imagefolder_no_class_folders(tmp_path):
    root = tmp_path / "empty"
    root.mkdir()
    with pytest.raises(UserError, match="class folders"):
        build_folder(root)


def test_imagefolder_corrupt_png(tmp_path):
    root = tmp_path / "imgs"
    for c, name in enumerate(CLASSES[:2]):
        for j in range(3):
            save_png(root / name / f"{j}.png", c, j, 0)
    bad = root / "dog" / "broken.png"
    bad.write_bytes(np.random.default_rng(0).integers(0, 256, 300, dtype=np.uint8).tobytes())
    with pytest.raises(UserError) as info:
        build_folder(root, val_fraction=0.0)
    assert "broken.png" in str(info.value)
    assert str(bad) in str(info.value)


def test_imagefolder_truncated_png(tmp_path):
    root = tmp_path / "imgs"
    for c, name in enumerate(CLASSES[:2]):
        for j in range(3):
            save_png(root / name / f"{j}.png", c, j, 0)
    good = (root / "cat" / "0.png").read_bytes()
    (root / "cat" / "0.png").write_bytes(good[: len(good) // 2])
    with pytest.raises(UserError, match="0.png"):
        build_folder(root, val_fraction=0.0)


def test_imagefolder_mixed_sizes(tmp_path):
    root = tmp_path / "imgs"
    for c, name in enumerate(CLASSES[:2]):
        for j in range(3):
            save_png(root / name / f"{j}.png", c, j, 0, size=8 if j < 2 else 12)
    with pytest.raises(UserError, match="data.image_size"):
        build_folder(root, val_fraction=0.0)
    bundle = build_folder(root, val_fraction=0.0, image_size=8)
    assert bundle.image_size == (8, 8)
    assert bundle.train.x.shape[1:] == (3, 8, 8)
    assert bundle.test.x.shape[1:] == (3, 8, 8)
    assert len(bundle.train.y) + len(bundle.test.y) == 6


def test_imagefolder_image_size_resizes(tmp_path):
    root = tmp_path / "imgs"
    for c, name in enumerate(CLASSES[:2]):
        for j in range(3):
            save_png(root / name / f"{j}.png", c, j, 0)
    bundle = build_folder(root, val_fraction=0.0, image_size=4)
    assert bundle.image_size == (4, 4)
    assert bundle.train.x.shape[1:] == (3, 4, 4)


def test_imagefolder_one_image_per_class_is_a_user_error(tmp_path):
    root = tmp_path / "tiny"
    for c, name in enumerate(CLASSES[:2]):
        save_png(root / name / "0.png", c, 0, 0)
    with pytest.raises(UserError):
        build_folder(root, val_fraction=0.0)


def test_imagefolder_bmp_listed_extension_decodes(tmp_path):
    root = tmp_path / "imgs"
    for c, name in enumerate(CLASSES[:2]):
        for j in range(3):
            save_png(root / name / f"{j}.png", c, j, 0)
    Image.fromarray(np.full((8, 8, 3), 7, np.uint8)).save(root / "cat" / "extra.bmp")
    bundle = build_folder(root, val_fraction=0.0)
    assert len(bundle.train.y) + len(bundle.test.y) == 7
