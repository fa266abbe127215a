"""Market-1501 data: name parsing, folder layout, counts, junk/distractors, splits, transforms."""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import pytest
import torch

from dmlkit.config import DataConfig, load_config
from dmlkit.data import build_data
from dmlkit.data.market1501 import FOLDER, index_market, parse_market_name
from dmlkit.data.reid import ReidTransform, RetrievalSplit, reid_input_size
from dmlkit.errors import ConfigError, UserError
from dmlkit.testing import write_market_fixture

pytestmark = pytest.mark.filterwarnings("ignore:.*counts differ from the published")

SMALL = {"image_height": 32, "image_width": 16}


def cfg(root: Path, **kw) -> DataConfig:
    return DataConfig(name="market1501", root=str(root), **{**SMALL, **kw})


def test_parse_market_name():
    assert parse_market_name("0002_c1s1_000451_03.jpg") == (2, 1)
    assert parse_market_name("-1_c3s2_012345_00.jpg") == (-1, 3)
    assert parse_market_name("0000_c6s4_002202_04.jpg") == (0, 6)
    assert parse_market_name("1501_c2s3_000101_01.JPG") == (1501, 2)
    for bad in ("Thumbs.db", "0002_c1_000451_03.jpg", "img_0002.jpg", "0002_c1s1_000451_03.txt"):
        assert parse_market_name(bad) is None


def test_bundle_splits_counts_and_labels(market):
    data = build_data(cfg(market.path.parent, val_fraction=0.25), seed=0)
    assert data.task == "reid"
    assert data.num_classes == len(market.train_ids) == 8
    assert data.class_names == [f"{p:04d}" for p in market.train_ids]  # relabelled in order
    y = torch.cat([data.train.y, data.val.y])
    assert sorted(set(y.tolist())) == list(range(8))
    assert len(y) == market.train_images
    # validation: a quarter of every training identity's images
    counts = np.bincount(data.val.y.numpy(), minlength=8)
    assert (counts == round(0.25 * market.train_images / 8)).all()

    test = data.test
    assert isinstance(test, RetrievalSplit)
    assert len(test.query.y) == market.query_images
    assert len(test.gallery.y) == market.gallery_images  # junk (-1) dropped
    g_pids = set(test.gallery.y.tolist())
    assert -1 not in g_pids and 0 in g_pids  # distractors kept
    assert (test.gallery.y == 0).sum() == market.distractors
    assert set(test.query.y.tolist()) == set(market.test_ids)
    assert not set(test.query.y.tolist()) & set(market.train_ids)
    assert test.query_cams.shape == test.query.y.shape
    assert set(test.query_cams.tolist()) <= set(range(1, 7))


def test_cameras_come_from_the_file_names(market):
    index = index_market(market.path)
    for path, pid, cam in zip(index.query.paths, index.query.pids, index.query.camids):
        assert path.name.startswith(f"{pid:04d}_c{cam}s")


def test_root_may_be_the_dataset_folder_or_its_parent(market):
    a = index_market(market.path.parent)
    b = index_market(market.path)
    assert a.root == b.root == market.path
    assert market.path.name == FOLDER


def test_published_counts_checked_with_the_numbers(market):
    with pytest.warns(UserWarning) as record:
        warnings.simplefilter("always")
        index_market(market.path)
    message = " ".join(str(w.message) for w in record)
    assert "8 training identities (published 751)" in message
    assert f"{market.query_images} query images (published 3,368)" in message
    assert "15,913" in message and "12,936" in message


def test_unmatched_names_reported_with_count_and_example(tmp_path):
    fx = write_market_fixture(tmp_path, bad_names=3, train_ids=3, test_ids=2, nested=False)
    with pytest.warns(UserWarning, match=r"3 image file\(s\) do not match .*not_market_0\.jpg"):
        index = index_market(fx.path)
    assert len(index.train) == fx.train_images  # the bad files (and Thumbs.db) are not used
    assert all(parse_market_name(p.name) for p in index.train.paths)


def test_missing_folders_are_one_line_errors(tmp_path):
    with pytest.raises(UserError, match="is not a folder"):
        index_market(tmp_path / "nowhere")
    (tmp_path / "bounding_box_train").mkdir()
    with pytest.raises(UserError) as info:
        index_market(tmp_path)
    msg = str(info.value)
    assert "bounding_box_test" in msg and "query" in msg and str(tmp_path) in msg
    assert "\n" not in msg
    with pytest.raises(UserError, match="needs the Market-1501 folder"):
        build_data(DataConfig(name="market1501"), seed=0)


def test_empty_split_is_an_error(tmp_path):
    for name in ("bounding_box_train", "bounding_box_test", "query"):
        (tmp_path / name).mkdir()
    with pytest.raises(UserError, match="no usable training images"):
        index_market(tmp_path)


def test_unreadable_image_names_the_file(tmp_path):
    fx = write_market_fixture(tmp_path, train_ids=2, test_ids=2, nested=False)
    bad = fx.path / "query" / "0999_c1s1_000001_00.jpg"
    bad.write_bytes(b"not a jpeg")
    with pytest.raises(UserError, match="0999_c1s1_000001_00.jpg"):
        build_data(cfg(fx.path), seed=0)


def test_input_size_config():
    assert reid_input_size(DataConfig()) == (256, 128)  # the default
    assert reid_input_size(DataConfig(image_size=224)) == (224, 224)  # the authors' code
    assert reid_input_size(DataConfig(image_height=64, image_width=32, image_size=8)) == (64, 32)
    with pytest.raises(ConfigError, match="image_height and data.image_width"):
        load_config(None, ["data.image_height=64"])


def test_images_stored_small_and_resized_per_batch(market):
    data = build_data(cfg(market.path, image_height=64, image_width=32, val_fraction=0), seed=0)
    assert tuple(data.train.x.shape[1:]) == (3, 32, 16)  # stored at the files' size, uint8
    assert data.train.x.dtype == torch.uint8
    assert data.image_size == (64, 32)
    x, _ = next(iter(data.train))
    assert x.shape[1:] == (3, 64, 32)
    assert x.dtype == torch.float32 and x.min() >= -1.0 and x.max() <= 1.0
    xq, _ = next(iter(data.test.query))
    assert xq.shape[1:] == (3, 64, 32)


def test_transform_flips_half_the_batch():
    x = torch.randint(0, 256, (64, 3, 8, 4), dtype=torch.uint8)
    plain = ReidTransform((8, 4))(x, None)
    aug = ReidTransform((8, 4), hflip=True)(x, torch.Generator().manual_seed(0))
    same = (aug == plain).flatten(1).all(1)
    flipped = (aug == plain.flip(-1)).flatten(1).all(1)
    assert bool((same | flipped).all())
    assert 16 < int(flipped.sum()) < 48
    torch.testing.assert_close(plain, x.float() / 255 * 2 - 1)  # scaled to [-1, 1]


def test_fraction_keeps_every_identity_and_whole_test_identities(market):
    full = build_data(cfg(market.path, val_fraction=0), seed=0)
    part = build_data(cfg(market.path, val_fraction=0, fraction=0.5, split_seed=1), seed=0)
    again = build_data(cfg(market.path, val_fraction=0, fraction=0.5, split_seed=1), seed=0)
    other = build_data(cfg(market.path, val_fraction=0, fraction=0.5, split_seed=2), seed=0)
    assert part.num_classes == full.num_classes  # 751-way stays 751-way
    assert set(part.train.y.tolist()) == set(full.train.y.tolist())
    assert len(part.train.y) == pytest.approx(len(full.train.y) / 2, abs=8)
    q_ids = set(part.test.query.y.tolist())
    assert len(q_ids) == 3  # half of the 6 test identities, with all their images
    full_g = full.test.gallery.y
    for pid in q_ids:
        assert (part.test.gallery.y == pid).sum() == (full_g == pid).sum()
    assert torch.equal(part.test.query.y, again.test.query.y)
    assert not torch.equal(part.train.x, other.train.x) or q_ids != set(other.test.query.y.tolist())


def test_multi_query_reads_gt_bbox(market):
    data = build_data(cfg(market.path, multi_query=True), seed=0)
    extra = data.test.extra_query
    assert extra is not None
    assert len(extra.y) == 2 * market.query_images  # the query images themselves excluded
    assert set(extra.y.tolist()) == set(market.test_ids)


def test_multi_query_without_gt_bbox_warns(tmp_path):
    fx = write_market_fixture(tmp_path, train_ids=2, test_ids=2)
    with pytest.warns(UserWarning, match="gt_bbox not found"):
        data = build_data(cfg(fx.path, multi_query=True), seed=0)
    assert data.test.multi_query and data.test.extra_query is None


def test_labelled_fraction_marks_unlabelled_training_images(market):
    data = build_data(cfg(market.path, val_fraction=0, labelled_fraction=0.5), seed=0)
    unlabelled = (data.train.y == -1).sum().item()
    assert unlabelled == pytest.approx(len(data.train.y) / 2, abs=8)
