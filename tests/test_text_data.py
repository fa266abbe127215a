"""Text data: tokenizers, dict batches, users' text files, the stdlib task, HF datasets.

The data half of issue 26 (dmlkit.data.text, tokenize, text_files, stdlib_text, hf_datasets).
Mistakes are checked through ``dml train``: one line, exit 2, nothing written (docs/errors.md,
section "Text data").
"""

from __future__ import annotations

import json
import os
import re
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from dmlkit.cli import main
from dmlkit.config import build_config
from dmlkit.data import build_data, stdlib_text, tokenize
from dmlkit.data.hf_datasets import hf_loader, hf_text_bundle
from dmlkit.data.text import (
    IGNORE,
    TextLoader,
    blocks,
    collate,
    load_text_state,
    pack,
    save_text_state,
    texts_batch,
)
from dmlkit.data.text_files import assign_by_size
from dmlkit.errors import ConfigError, UserError

from helpers import sets

pytest.importorskip("transformers")  # the optional extra: text needs it


def data_cfg(**data):
    text = data.pop("text", {})
    return build_config({"data": {**data, "text": text}}).data


def write(path: Path, text: str | bytes) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    if isinstance(text, bytes):
        path.write_bytes(text)
    else:
        path.write_text(text, encoding="utf-8")
    return path


def class_folders(root: Path, per_class: int = 5) -> Path:
    words = {"pos": "good happy great", "neg": "bad sad awful", "mid": "fine okay plain"}
    for name, w in words.items():
        for i in range(per_class):
            write(root / name / f"{i}.txt", f"{w} number {i}\n")
    return root


# -- tokenizers ---------------------------------------------------------------------------------


def test_byte_tokenizer_ids_are_the_utf8_bytes():
    tok = tokenize.byte_tokenizer()
    text = "héllo\tworld  ∑ \n"
    ids = tok(text, add_special_tokens=True)["input_ids"]
    assert ids == list(text.encode("utf-8"))
    assert len(tok) == tokenize.BYTE_VOCAB == 258
    assert (tok.pad_token_id, tok.eos_token_id) == (256, 257)
    assert tok.decode(ids) == text


def test_bpe_is_deterministic_and_round_trips_through_its_folder(tmp_path):
    texts = [f"def function_{i % 7}(value):\n    return value + {i}\n" for i in range(200)]
    a = tokenize.train_bpe(texts, 320)
    b = tokenize.train_bpe(texts, 320)
    assert a.get_vocab() == b.get_vocab()
    assert 258 < len(a) <= 320
    assert (a.pad_token_id, a.eos_token_id) == (0, 1)
    tokenize.save_tokenizer(a, tmp_path / "tok")
    again = tokenize.load_tokenizer(tmp_path / "tok")
    sample = "def function_3(value):\n    return value + 12\n"
    assert again(sample)["input_ids"] == a(sample)["input_ids"]
    assert len(a(sample)["input_ids"]) < len(sample.encode())  # merges were learnt
    assert again.decode(again(sample)["input_ids"]) == sample


def test_tokenizer_that_is_not_a_folder_is_one_line(tmp_path):
    with pytest.raises(UserError, match="is not a folder; give byte, bpe or the path"):
        tokenize.load_tokenizer(tmp_path / "nope")
    write(tmp_path / "empty" / "README", "x")
    with pytest.raises(UserError, match="cannot load a tokenizer from"):
        tokenize.load_tokenizer(tmp_path / "empty")


def test_save_tokenizer_replaces_only_a_tokenizer_folder(tmp_path):
    write(tmp_path / "tok" / "precious.txt", "keep")
    with pytest.raises(UserError, match="is not a tokenizer folder"):
        tokenize.save_tokenizer(tokenize.byte_tokenizer(), tmp_path / "tok")
    assert (tmp_path / "tok" / "precious.txt").read_text() == "keep"
    assert [p.name for p in tmp_path.iterdir()] == ["tok"]  # no temporary left behind


def wordpiece_folder(folder: Path) -> Path:
    """A tiny BERT-style tokenizer folder ([CLS] text [SEP]), as a user would have one."""
    from tokenizers import Tokenizer, models, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    vocab = {t: i for i, t in enumerate(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "good", "bad"])}
    tok = Tokenizer(models.WordPiece(vocab, unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    tok.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]", special_tokens=[("[CLS]", 2), ("[SEP]", 3)]
    )
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok, pad_token="[PAD]", unk_token="[UNK]", cls_token="[CLS]"
    )
    fast.save_pretrained(str(folder))
    return folder


def test_a_local_hf_tokenizer_folder_adds_its_special_tokens(tmp_path):
    folder = wordpiece_folder(tmp_path / "wp")
    root = class_folders(tmp_path / "data")
    cfg = data_cfg(name="text", root=str(root), text={"tokenizer": str(folder)})
    bundle = build_data(cfg, seed=0)
    batch = next(iter(bundle.test))
    first = batch["input_ids"][:, 0]
    last = batch["input_ids"].gather(1, batch["attention_mask"].sum(1, keepdim=True) - 1)
    assert (first == 2).all() and (last == 3).all()  # [CLS] ... [SEP]
    assert bundle.text.vocab_size == 6 and bundle.text.pad_id == 0
    assert bundle.text.tokenizer_kind == "folder"
    short = data_cfg(name="text", root=str(root), text={"tokenizer": str(folder), "max_length": 3})
    cut = next(iter(build_data(short, seed=0).test))["input_ids"]
    assert cut[:, 0].eq(2).all() and cut[:, 2].eq(3).all()  # cut inside: [CLS] x [SEP]


# -- batches ------------------------------------------------------------------------------------


def test_collate_pads_masks_and_ignores_padding_in_lm_labels():
    ids, lengths = pack([[5, 6, 7], [8], [1, 2, 3, 4, 9, 9]], pad=0, max_length=4)
    assert lengths.tolist() == [3, 1, 4]  # the third cut to max_length
    lm = collate(ids, lengths, None)
    assert lm["input_ids"].tolist() == [[5, 6, 7, 0], [8, 0, 0, 0], [1, 2, 3, 4]]
    assert lm["attention_mask"].tolist() == [[1, 1, 1, 0], [1, 0, 0, 0], [1, 1, 1, 1]]
    assert lm["labels"].tolist() == [[5, 6, 7, IGNORE], [8] + [IGNORE] * 3, [1, 2, 3, 4]]
    cls = collate(ids[:2], lengths[:2], torch.tensor([1, 0]))
    assert cls["input_ids"].shape == (2, 3)  # the batch's longest, not the stored width
    assert cls["labels"].tolist() == [1, 0]
    fixed = collate(
        ids[:2], lengths[:2], torch.tensor([1, 0]), padding="max_length", max_length=6, pad_id=0
    )
    assert fixed["input_ids"].shape == (2, 6) and fixed["attention_mask"].sum().item() == 4
    for batch in (lm, cls, fixed):
        assert all(t.dtype == torch.int64 for t in batch.values())


def loader(n=23, batch=4, seed=0, **kw):
    seqs = [[i + 1] * (1 + i % 5) for i in range(n)]
    ids, lengths = pack(seqs, 0, 8)
    return TextLoader(ids, lengths, torch.arange(n), batch, pad_id=0, train=True, seed=seed, **kw)


def test_batch_order_is_a_pure_function_of_seed_and_epoch():
    def labels(ld, epoch, start=0):
        ld.set_epoch(epoch, start)
        return [b["labels"].tolist() for b in ld]

    a, b = loader(), loader()
    assert labels(a, 0) == labels(b, 0)
    assert labels(a, 1) != labels(a, 0)
    assert labels(a, 0) != labels(loader(seed=1), 0)
    assert labels(a, 2, start=3) == labels(b, 2)[3:]  # a run resumed mid-epoch
    seen = sorted(x for batch in labels(a, 0) for x in batch)
    assert len(seen) == 20 == len(a) * 4 and len(set(seen)) == 20  # drop_last, no repeat
    evaluation = TextLoader(*pack([[1]] * 5, 0, 4), torch.arange(5), 2, pad_id=0)
    assert [b["labels"].tolist() for b in evaluation] == [[0, 1], [2, 3], [4]]


def test_shards_of_a_batch_make_the_batch():
    whole = loader()
    parts = [loader().shard(r, 2) for r in range(2)]
    assert whole.sharded is False and parts[0].sharded
    for full, p0, p1 in zip(whole, *parts):
        assert torch.equal(torch.cat([p0["labels"], p1["labels"]]), full["labels"])
        assert len(p0["labels"]) == 2


def test_fixed_length_padding():
    ld = loader(padding="max_length", max_length=8)
    for batch in ld:
        assert batch["input_ids"].shape == (4, 8)
        valid = batch["attention_mask"].bool()
        assert (batch["input_ids"][~valid] == 0).all()


def test_views_are_refused_for_text():
    with pytest.raises(ConfigError, match="text data has none"):
        loader().set_views(2)


def test_blocks_join_documents_with_eos_and_cut():
    got = blocks([[1, 2, 3], [4, 5]], eos=9, length=3)
    assert got == [[1, 2, 3], [9, 4, 5], [9]]


# -- users' files: classification ---------------------------------------------------------------


def test_class_folders_flat_layout(tmp_path):
    root = class_folders(tmp_path / "data", per_class=8)
    cfg = data_cfg(name="text", root=str(root), batch_size=4, val_fraction=0.25)
    bundle = build_data(cfg, seed=0)
    assert bundle.class_names == ["mid", "neg", "pos"] and bundle.num_classes == 3
    assert bundle.task == "classification" and bundle.in_channels == 0
    splits = [bundle.train.origins, bundle.val.origins, bundle.test.origins]
    assert sum(map(len, splits)) == 24
    assert not (set(splits[0]) & set(splits[1]) or set(splits[0]) & set(splits[2]))
    tok = bundle.text.tokenizer
    for split, ld in zip(splits, (bundle.train, bundle.val, bundle.test)):
        ld.set_epoch(0)
        order = ld.order().tolist()
        batch = next(iter(ld))
        for row in range(len(batch["labels"])):
            where = split[order[row]]
            n = int(batch["attention_mask"][row].sum())
            text = tok.decode(batch["input_ids"][row, :n].tolist())
            assert text == Path(where).read_text()
            assert bundle.class_names[int(batch["labels"][row])] == Path(where).parent.name


def test_train_test_folders_and_truncation(tmp_path):
    for split in ("train", "test"):
        for cls in ("a", "b"):
            for i in range(3):
                write(tmp_path / split / cls / f"{i}.txt", cls * 50)
    cfg = data_cfg(name="text", root=str(tmp_path), text={"max_length": 16}, val_fraction=0)
    bundle = build_data(cfg, seed=0)
    assert bundle.val is None
    assert len(bundle.test.lengths) == 6 and bundle.test.lengths.max() == 16
    assert all("/test/" in w for w in bundle.test.origins)


def test_jsonl_and_csv_with_named_fields(tmp_path):
    rows = [{"body": f"text {i} " + ("up" if i % 2 else "down"), "y": i % 2} for i in range(12)]
    write(tmp_path / "d.jsonl", "\n".join(json.dumps(r) for r in rows) + "\n\n")
    csv_text = "y,body\n" + "".join(f'{r["y"]},"{r["body"]}, quoted"\n' for r in rows)
    write(tmp_path / "d.csv", csv_text)
    fields = {"text_field": "body", "label_field": "y"}
    got = {}
    for ext in ("jsonl", "csv"):
        cfg = data_cfg(name="text", root=str(tmp_path / f"d.{ext}"), text=fields)
        bundle = build_data(cfg, seed=0)
        assert bundle.class_names == ["0", "1"]
        got[ext] = bundle
        where = bundle.test.origins[0]
        assert re.fullmatch(rf".*d\.{ext}:\d+", where)
    # the same rows, the same stratified test split (by position in the file)
    lines = [int(w.rsplit(":", 1)[1]) for w in got["jsonl"].test.origins]
    assert [n + 1 for n in lines] == [int(w.rsplit(":", 1)[1]) for w in got["csv"].test.origins]


def test_jsonl_text_may_hold_unicode_line_separators(tmp_path):
    rows = [{"text": f"a\u2028b {i}", "label": i % 2} for i in range(8)]
    path = write(tmp_path / "d.jsonl", "\n".join(json.dumps(r, ensure_ascii=False) for r in rows))
    assert "\u2028" in path.read_text()
    bundle = build_data(data_cfg(name="text", root=str(path)), seed=0)
    splits = [bundle.train, bundle.val, bundle.test]
    assert sum(len(ld.lengths) for ld in splits if ld is not None) == 8  # 8 lines, not 16


def test_integer_labels_sort_numerically(tmp_path):
    rows = [{"text": f"t{i}", "label": label} for i, label in enumerate([2, 10, 1] * 4)]
    write(tmp_path / "train.jsonl", "\n".join(json.dumps(r) for r in rows))
    write(tmp_path / "test.jsonl", "\n".join(json.dumps(r) for r in rows[:3]))
    bundle = build_data(data_cfg(name="text", root=str(tmp_path)), seed=0)
    assert bundle.class_names == ["1", "2", "10"]
    assert bundle.test.labels.tolist() == [1, 2, 0]


def test_bpe_is_trained_on_the_training_split_only(tmp_path, monkeypatch):
    """From the construction indices (what train_bpe received) and from its vocabulary."""
    for cls in ("a", "b"):
        for i in range(10):
            write(tmp_path / "train" / cls / f"{i}.txt", f"trainword{cls} " * 20)
        write(tmp_path / "test" / cls / "0.txt", "testonlyword " * 200)
    seen: list[list[str]] = []
    real = tokenize.train_bpe

    def spy(texts, vocab_size):
        seen.append(list(texts))
        return real(texts, vocab_size)

    monkeypatch.setattr(tokenize, "train_bpe", spy)
    cfg = data_cfg(
        name="text",
        root=str(tmp_path),
        val_fraction=0.2,
        text={"tokenizer": "bpe", "vocab_size": 400},
    )
    bundle = build_data(cfg, seed=0)
    (texts,) = seen
    assert sorted(texts) == sorted(Path(w).read_text() for w in bundle.train.origins)
    assert len(bundle.val.origins) == 4 and not set(bundle.val.origins) & set(bundle.train.origins)
    tok = bundle.text.tokenizer
    assert len(tok("trainworda")["input_ids"]) == 1  # learnt
    assert len(tok("testonlyword")["input_ids"]) > 3  # never seen: left in pieces


@pytest.mark.parametrize("kind", ["byte", "bpe"])
def test_run_tokenizer_is_reloaded_not_rebuilt(tmp_path, monkeypatch, kind):
    root = class_folders(tmp_path / "data")
    cfg = data_cfg(name="text", root=str(root), text={"tokenizer": kind, "vocab_size": 300})
    first = build_data(cfg, seed=0)
    run = tmp_path / "run"
    run.mkdir()
    save_text_state(first.text, run)
    state = load_text_state(run)
    assert state["fingerprint"] == first.text.fingerprint and state["tokenizer"] == kind
    assert (run / "tokenizer" / "tokenizer.json").is_file()

    def refuse(*args, **kwargs):
        raise AssertionError("the run's tokenizer must be loaded, not built")

    monkeypatch.setattr(tokenize, "build_tokenizer", refuse)
    again = build_data(cfg, seed=0, run_dir=run)
    assert again.text.tokenizer.get_vocab() == first.text.tokenizer.get_vocab()
    for a, b in zip(first.test, again.test):
        assert all(torch.equal(a[k], b[k]) for k in a)
    write(root / "pos" / "0.txt", "changed since the run\n")
    with pytest.raises(UserError, match="the data files changed since"):
        build_data(cfg, seed=0, run_dir=run)


def test_semi_supervised_marks_unlabelled_training_rows(tmp_path):
    root = class_folders(tmp_path / "data", per_class=10)
    bundle = build_data(data_cfg(name="text", root=str(root), labelled_fraction=0.5), seed=0)
    labels = bundle.train.labels
    assert (labels == -1).sum() > 0 and (labels >= 0).sum() > 0
    assert (bundle.test.labels >= 0).all()


# -- users' files: causal LM --------------------------------------------------------------------


def test_text_lm_splits_by_file(tmp_path):
    for i in range(8):
        write(tmp_path / "corpus" / f"doc{i}.txt", f"document {i} " * (20 + 10 * i))
    cfg = data_cfg(name="text-lm", root=str(tmp_path / "corpus"), text={"max_length": 32})
    bundle = build_data(cfg, seed=0)
    assert bundle.task == "causal-lm" and bundle.num_classes == 258 == bundle.text.vocab_size
    files = [set(ld.origins) for ld in (bundle.train, bundle.val, bundle.test)]
    assert files[0] and files[1] and files[2]
    assert not (files[0] & files[1] or files[0] & files[2] or files[1] & files[2])
    batch = next(iter(bundle.train))
    valid = batch["attention_mask"].bool()
    assert torch.equal(batch["labels"][valid], batch["input_ids"][valid])
    assert (batch["labels"][~valid] == IGNORE).all()
    assert batch["input_ids"].shape[1] <= 32


def test_text_lm_one_file_is_cut_by_block_ranges(tmp_path):
    text = "".join(f"line {i:04d}\n" for i in range(400))
    write(tmp_path / "one.txt", text)
    cfg = data_cfg(name="text-lm", root=str(tmp_path / "one.txt"), text={"max_length": 64})
    bundle = build_data(cfg, seed=0)

    def stream(ld):
        return [t for ids, n in zip(ld.ids.tolist(), ld.lengths.tolist()) for t in ids[:n]]

    train, val, test = (stream(x) for x in (bundle.train, bundle.val, bundle.test))
    whole = list(text.encode()) + [257]  # the document, then <eos>
    assert train + val + test == whole  # contiguous ranges, in order, nothing lost
    assert len(test) == pytest.approx(0.25 * len(whole), abs=64)


# -- mistakes: one line, exit 2, nothing written (docs/errors.md "Text data") -----------------


def _empty_class(tmp: Path) -> dict:
    root = class_folders(tmp / "data")
    (root / "empty").mkdir()
    write(root / "empty" / "notes.md", "not a .txt")
    return {"root": str(root)}


def _undecodable(tmp: Path) -> dict:
    root = class_folders(tmp / "data")
    write(root / "pos" / "latin1.txt", "caf\xe9".encode("latin-1"))
    return {"root": str(root)}


def _missing_field(tmp: Path) -> dict:
    write(tmp / "d.jsonl", '{"text": "a", "label": 1}\n{"text": "b"}\n')
    return {"root": str(tmp / "d.jsonl")}


def _missing_column(tmp: Path) -> dict:
    write(tmp / "d.csv", "text,klass\nhello,1\n")
    return {"root": str(tmp / "d.csv")}


def _bad_json(tmp: Path) -> dict:
    write(tmp / "d.jsonl", '{"text": "a", "label": 1}\n{"text": "b", label: 2}\n')
    return {"root": str(tmp / "d.jsonl")}


def _no_files(tmp: Path) -> dict:
    (tmp / "corpus" / "sub").mkdir(parents=True)
    write(tmp / "corpus" / "readme.md", "no .txt here")
    return {"root": str(tmp / "corpus")}


def _no_classes(tmp: Path) -> dict:
    write(tmp / "data" / "loose.txt", "a file, but no class folder")
    return {"root": str(tmp / "data")}


def _unknown_test_class(tmp: Path) -> dict:
    write(tmp / "train.jsonl", '{"text": "a", "label": "x"}\n{"text": "b", "label": "y"}\n')
    write(tmp / "test.jsonl", '{"text": "c", "label": "z"}\n')
    return {"root": str(tmp)}


def _fifo(tmp: Path) -> dict:
    root = class_folders(tmp / "data")
    os.mkfifo(root / "pos" / "pipe.txt")
    return {"root": str(root)}


def _empty_text(tmp: Path) -> dict:
    root = class_folders(tmp / "data")
    write(root / "neg" / "blank.txt", "  \n")
    return {"root": str(root)}


TEXT_CASES = [
    (
        "text-empty-class",
        _empty_class,
        "text",
        "data.root: the class folder {root}/empty holds no .txt files; add text files or remove "
        "the folder",
    ),
    (
        "text-undecodable",
        _undecodable,
        "text",
        "{root}/pos/latin1.txt: not UTF-8 text (byte 3: b'\\xe9'); convert it to UTF-8 "
        "(e.g. iconv -t utf-8) or remove it",
    ),
    (
        "text-missing-field",
        _missing_field,
        "text",
        "{root}:2: no field 'label' (fields: text); add it or set data.text.label_field",
    ),
    (
        "text-missing-column",
        _missing_column,
        "text",
        "{root}:1: no column 'label' in the header (columns: text, klass); add it or set "
        "data.text.label_field",
    ),
    ("text-bad-json", _bad_json, "text", "{root}:2: not valid JSON (Expecting property name"),
    (
        "text-no-files",
        _no_files,
        "text-lm",
        "data.root: no .txt files under {root}; save your text as UTF-8 .txt files, or give "
        "one file",
    ),
    (
        "text-no-classes",
        _no_classes,
        "text",
        "data.root: no class folders in {root} (expected ROOT/train/<class>/*.txt and "
        "ROOT/test/<class>/*.txt, or ROOT/<class>/*.txt, or a .jsonl / .csv file)",
    ),
    (
        "text-unknown-test-class",
        _unknown_test_class,
        "text",
        "{root}/test.jsonl:1: the class 'z' does not occur in the training data; add training "
        "examples of it or remove this one",
    ),
    (
        "text-fifo",
        _fifo,
        "text",
        "data.root: {root}/pos/pipe.txt is not a regular file; remove it (only regular files are "
        "read)",
    ),
    (
        "text-empty-text",
        _empty_text,
        "text",
        "{root}/neg/blank.txt: the text is empty; remove the example or fill it",
    ),
]


@pytest.mark.parametrize("case", TEXT_CASES, ids=[c[0] for c in TEXT_CASES])
def test_text_mistakes_are_one_line(case, tmp_path, capsys):
    _, setup, name, message = case
    names = setup(tmp_path)
    out = tmp_path / "run"
    argv = [
        "train",
        "--out",
        str(out),
        *sets("train.progress=false", f"data.name={name}", f"data.root={names['root']}"),
    ]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "Traceback" not in err
    assert err.startswith("dml: error: " + message.format(**names)), err
    assert not out.exists()


def test_every_text_case_is_in_the_docs_table():
    doc = (Path(__file__).parents[1] / "docs" / "errors.md").read_text()
    section = doc.split("## Text data", 1)[1]
    rows = {line.split("|")[1].strip() for line in section.splitlines() if line.startswith("| ")}
    assert {c[0] for c in TEXT_CASES} <= rows


def test_text_config_keys_are_checked():
    with pytest.raises(ConfigError, match="data.text.max_length must be in"):
        build_config({"data": {"text": {"max_length": 1}}})
    with pytest.raises(ConfigError, match="data.text.vocab_size must be in"):
        build_config({"data": {"text": {"vocab_size": 100}}})
    with pytest.raises(ConfigError, match="unknown config key 'data.text.tokeniser'"):
        build_config({"data": {"text": {"tokeniser": "bpe"}}})
    with pytest.raises(ConfigError, match="data.text.padding: must be one of"):
        build_config({}, overrides=["data.text.padding=left"])


# -- the standard library task ------------------------------------------------------------------


def fake_stdlib(root: Path) -> Path:
    """A tiny stand-in for the stdlib: 3 packages of 4 files (tests only read it)."""
    for p, pkg in enumerate(("alpha", "beta", "gamma")):
        write(root / pkg / "__init__.py", f'"""The {pkg} package."""\n')
        for f in range(3):
            body = "".join(
                f"{pkg}_value_{f}_{i} = {i} * {p + 1}  # a line\n" for i in range(40 + 30 * f)
            )
            write(root / pkg / f"mod{f}.py", body)
        write(root / pkg / "tests" / "test_x.py", "left out\n" * 50)
    write(root / "lonely" / "__init__.py", "x = 1\n")
    return root


@pytest.fixture
def small_stdlib(tmp_path, monkeypatch):
    root = fake_stdlib(tmp_path / "stdlib")
    monkeypatch.setattr(stdlib_text, "stdlib_root", lambda: root)
    monkeypatch.setattr(stdlib_text, "DEFAULT_PACKAGES", ("alpha", "lonely", "beta", "gamma"))
    return root


def test_stdlib_modules_are_disjoint_by_file(small_stdlib):
    cfg = data_cfg(
        name="stdlib-modules",
        text={"stdlib_classes": 3, "snippets_per_class": 30, "snippet_lines": 3},
    )
    bundle = build_data(cfg, seed=0)
    assert bundle.class_names == ["alpha", "beta", "gamma"]  # lonely: too few files
    files = [
        {w.rsplit(":", 1)[0] for w in ld.origins} for ld in (bundle.train, bundle.val, bundle.test)
    ]
    assert all(files) and not (files[0] & files[1] or files[0] & files[2] or files[1] & files[2])
    assert not any("tests/" in f for fs in files for f in fs)
    assert len(bundle.train.origins) <= 3 * 30
    # every snippet is the lines of its file at its line number, labelled by its package
    tok = bundle.text.tokenizer
    for row, where in enumerate(bundle.test.origins):
        name, line = where.rsplit(":", 1)
        lines = (small_stdlib / name).read_text().splitlines()
        n = int(bundle.test.lengths[row])
        text = tok.decode(bundle.test.ids[row, :n].tolist())
        expected = "\n".join(lines[int(line) - 1 : int(line) - 1 + 3])
        assert expected.startswith(text)
        assert bundle.class_names[int(bundle.test.labels[row])] == name.split("/")[0]
    source = bundle.text.source
    assert sorted(sum(source["files"].values(), [])) == sorted(
        f.relative_to(small_stdlib).as_posix()
        for pkg in ("alpha", "beta", "gamma")
        for f in (small_stdlib / pkg).glob("*.py")
    )


def test_stdlib_fingerprint_follows_files_and_python(small_stdlib, monkeypatch, tmp_path):
    cfg = data_cfg(name="stdlib-lm", text={"stdlib_classes": 3, "max_length": 64})
    first = build_data(cfg, seed=0)
    assert build_data(cfg, seed=0).text.fingerprint == first.text.fingerprint
    run = tmp_path / "run"
    run.mkdir()
    save_text_state(first.text, run)
    assert build_data(cfg, seed=0, run_dir=run).text.fingerprint == first.text.fingerprint
    monkeypatch.setattr(stdlib_text, "python_version", lambda: "3.99.0")
    refusal = r"Python 3\.\d+\.\d+ then, 3\.99\.0 now: .*; use Python 3\.\d+\.\d+\)$"
    with pytest.raises(UserError, match=refusal):
        build_data(cfg, seed=0, run_dir=run)
    monkeypatch.undo()
    monkeypatch.setattr(stdlib_text, "stdlib_root", lambda: small_stdlib)
    monkeypatch.setattr(stdlib_text, "DEFAULT_PACKAGES", ("alpha", "beta", "gamma"))
    write(small_stdlib / "beta" / "mod1.py", "changed = True\n" * 30)
    assert build_data(cfg, seed=0).text.fingerprint != first.text.fingerprint


def test_stdlib_lm_is_bytes_disjoint_by_file(small_stdlib):
    cfg = data_cfg(name="stdlib-lm", text={"stdlib_classes": 3, "max_length": 64, "lm_blocks": 40})
    bundle = build_data(cfg, seed=0)
    assert bundle.task == "causal-lm" and bundle.num_classes == 258
    files = [set(ld.origins) for ld in (bundle.train, bundle.val, bundle.test)]
    assert not (files[0] & files[1] or files[0] & files[2] or files[1] & files[2])
    assert len(bundle.train.lengths) == 40
    row = bundle.train.ids[0, : int(bundle.train.lengths[0])].tolist()
    text = bytes(t for t in row if t < 256).decode()
    assert text in (small_stdlib / bundle.train.origins[0]).read_text()


def test_stdlib_packages_named_and_refused(small_stdlib):
    cfg = data_cfg(
        name="stdlib-modules", text={"stdlib_packages": ["gamma", "alpha"], "snippets_per_class": 5}
    )
    assert build_data(cfg, seed=0).class_names == ["gamma", "alpha"]
    bad = data_cfg(name="stdlib-modules", text={"stdlib_packages": ["alpha", "lonely"]})
    with pytest.raises(ConfigError, match="'lonely' has 1 files"):
        build_data(bad, seed=0)
    many = data_cfg(name="stdlib-modules", text={"stdlib_classes": 9})
    with pytest.raises(ConfigError, match="has 3 of the packages it draws from; lower it to 3"):
        build_data(many, seed=0)


def test_real_stdlib_task_is_small_and_disjoint():
    """This Python's own files: the default classes, a few thousand short snippets."""
    cfg = data_cfg(name="stdlib-modules", text={"stdlib_classes": 4, "snippets_per_class": 50})
    bundle = build_data(cfg, seed=0)
    assert bundle.class_names == list(stdlib_text.DEFAULT_PACKAGES[:4])
    assert len(bundle.train.lengths) == 4 * 50 and bundle.train.ids.shape[1] <= 128
    files = [
        {w.rsplit(":", 1)[0] for w in ld.origins} for ld in (bundle.train, bundle.val, bundle.test)
    ]
    assert not (files[0] & files[1] or files[0] & files[2] or files[1] & files[2])
    assert bundle.text.source["python"].count(".") == 2


def test_assign_by_size_hits_the_shares():
    rng = np.random.default_rng(0)
    sizes = rng.integers(10, 1000, size=60).tolist()
    names = [f"f{i}" for i in range(60)]
    split = assign_by_size(sizes, names, test=0.25, val=0.1)
    total = sum(sizes)
    share = [sum(s for s, k in zip(sizes, split) if k == i) / total for i in range(3)]
    assert share == pytest.approx([0.65, 0.1, 0.25], abs=0.03)
    assert (assign_by_size(sizes, names, 0.25, 0.1) == split).all()  # no seed: always the same
    three = assign_by_size([5, 500, 50], ["a", "b", "c"], 0.25, 0.1)
    assert sorted(three.tolist()) == [0, 1, 2]


# -- Hugging Face datasets ----------------------------------------------------------------------


def test_hf_dataset_with_text_and_class_labels():
    datasets = pytest.importorskip("datasets")
    ds = datasets.Dataset.from_dict(
        {"text": ["good", "bad movie", "great", "awful", "fine", "meh"], "label": [0, 1] * 3}
    ).cast_column("label", datasets.ClassLabel(names=["pos", "neg"]))
    tok = tokenize.byte_tokenizer()
    bundle = hf_text_bundle(ds, test=ds, tokenizer=tok, eval_batch_size=2, max_length=4)
    assert bundle.class_names == ["pos", "neg"] and bundle.num_classes == 2
    assert bundle.task == "classification" and bundle.text.vocab_size == 258
    batch = next(iter(bundle.test))
    assert batch["input_ids"].tolist() == [list(b"good"), list(b"bad ")]
    assert batch["labels"].tolist() == [0, 1]
    with pytest.raises(UserError, match="pass a tokenizer"):
        hf_text_bundle(ds)


def test_hf_dataset_of_token_ids_is_a_causal_lm():
    datasets = pytest.importorskip("datasets")
    ds = datasets.Dataset.from_dict(
        {"input_ids": [[3, 4, 5, 0], [6, 7, 0, 0]], "attention_mask": [[1, 1, 1, 0], [1, 1, 0, 0]]}
    )
    bundle = hf_text_bundle(ds, test=ds)
    batch = next(iter(bundle.test))
    assert bundle.task == "causal-lm" and bundle.num_classes == 8
    assert batch["labels"].tolist() == [[3, 4, 5], [6, 7, IGNORE]]
    left = datasets.Dataset.from_dict({"input_ids": [[0, 3]], "attention_mask": [[0, 1]]})
    with pytest.raises(UserError, match="pad on the right"):
        hf_loader(left, "train")
    tokens = datasets.Dataset.from_dict({"input_ids": [[1, 2, 3]], "labels": [[IGNORE, 2, 3]]})
    loader, task = hf_loader(tokens, "train")
    assert task == "causal-lm"
    assert next(iter(loader))["labels"].tolist() == [[IGNORE, 2, 3]]
    with pytest.raises(UserError, match="neither input_ids nor a 'text' column"):
        hf_loader(datasets.Dataset.from_dict({"x": [1]}), "val")


def test_hf_labels_must_be_class_indices():
    datasets = pytest.importorskip("datasets")
    ds = datasets.Dataset.from_dict({"input_ids": [[1], [2]], "label": ["a", "b"]})
    with pytest.raises(UserError, match="labels are class indices"):
        hf_loader(ds, "train")
    ok = datasets.Dataset.from_dict({"input_ids": [[1], [2]], "label": [0, 3]})
    with pytest.raises(UserError, match="label 3 is outside 0..1"):
        hf_text_bundle(ok, test=ok, num_classes=2)


def test_data_sources_need_no_copy_of_the_repo(tmp_path):
    """Nothing here writes beside the data it reads (the run writes its own files)."""
    root = class_folders(tmp_path / "data")
    before = sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*"))
    build_data(
        data_cfg(name="text", root=str(root), text={"tokenizer": "bpe", "vocab_size": 300}), seed=0
    )
    assert sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*")) == before
    shutil.rmtree(root)


def test_texts_batch_encodes_new_text_as_the_data_was(tmp_path):
    root = class_folders(tmp_path / "data")
    bundle = build_data(data_cfg(name="text", root=str(root), text={"max_length": 8}), seed=0)
    text = (root / "pos" / "1.txt").read_text()
    batch = texts_batch(bundle.text.tokenizer, [text, "ok"], max_length=8)
    assert set(batch) == {"input_ids", "attention_mask"}
    assert batch["input_ids"][0].tolist() == list(text.encode())[:8]
    assert batch["attention_mask"].tolist() == [[1] * 8, [1, 1] + [0] * 6]
    origins = [*bundle.train.origins, *bundle.val.origins, *bundle.test.origins]
    ids = torch.cat([bundle.train.ids, bundle.val.ids, bundle.test.ids])
    row = origins.index(str(root / "pos" / "1.txt"))
    assert ids[row, :8].tolist() == batch["input_ids"][0].tolist()


def test_hf_dataset_dict_gives_its_splits():
    datasets = pytest.importorskip("datasets")

    def part(n, start):
        return datasets.Dataset.from_dict(
            {"input_ids": [[start + i, 1] for i in range(n)], "label": [i % 2 for i in range(n)]}
        )

    splits = datasets.DatasetDict(
        {"train": part(6, 10), "validation": part(2, 30), "test": part(3, 40)}
    )
    bundle = hf_text_bundle(splits, batch_size=2)
    assert [len(ld.lengths) for ld in (bundle.train, bundle.val, bundle.test)] == [6, 2, 3]
    assert bundle.test.ids[:, 0].tolist() == [40, 41, 42]
    assert bundle.num_classes == 2


def test_hugging_face_models_take_the_batches_as_they_are(small_stdlib):
    """A tiny GPT-2 LM and a tiny BERT classifier (random weights) on the batches unchanged:
    HF's own loss equals the per-valid-token cross-entropy of the shifted labels."""
    from transformers import BertConfig, BertForSequenceClassification, GPT2Config, GPT2LMHeadModel

    lm_cfg = data_cfg(name="stdlib-lm", batch_size=4, text={"stdlib_classes": 3, "max_length": 32})
    lm_data = build_data(lm_cfg, seed=0)
    loader = lm_data.test  # its last batch has a short block: padding to ignore
    batch = list(loader)[-1]
    assert (batch["labels"] == IGNORE).any()
    torch.manual_seed(0)
    gpt = GPT2LMHeadModel(
        GPT2Config(vocab_size=lm_data.num_classes, n_positions=32, n_embd=16, n_layer=1, n_head=2)
    ).eval()
    out = gpt(**batch)
    logits, labels = out.logits[:, :-1], batch["labels"][:, 1:]
    valid = labels != IGNORE
    by_hand = torch.nn.functional.cross_entropy(logits[valid], labels[valid])
    assert out.loss.item() == pytest.approx(by_hand.item(), rel=1e-5)

    cls_cfg = data_cfg(
        name="stdlib-modules", text={"stdlib_classes": 3, "snippets_per_class": 8, "max_length": 32}
    )
    cls_data = build_data(cls_cfg, seed=0)
    bert = BertForSequenceClassification(
        BertConfig(
            vocab_size=cls_data.text.vocab_size,
            hidden_size=16,
            num_hidden_layers=1,
            num_attention_heads=2,
            intermediate_size=32,
            max_position_embeddings=32,
            num_labels=cls_data.num_classes,
            pad_token_id=cls_data.text.pad_id,
        )
    ).eval()
    batch = next(iter(cls_data.test))
    out = bert(**batch)
    assert out.logits.shape == (len(batch["labels"]), 3)
    by_hand = torch.nn.functional.cross_entropy(out.logits, batch["labels"])
    assert out.loss.item() == pytest.approx(by_hand.item(), rel=1e-5)


def test_a_run_tokenizer_of_ours_is_read_as_data(tmp_path):
    """byte / bpe: tokenizer.json only; the config's class name is never looked up."""
    root = class_folders(tmp_path / "data")
    cfg = data_cfg(name="text", root=str(root), text={"tokenizer": "bpe", "vocab_size": 300})
    first = build_data(cfg, seed=0)
    run = tmp_path / "run"
    run.mkdir()
    save_text_state(first.text, run)
    config = run / "tokenizer" / "tokenizer_config.json"
    config.write_text(json.dumps({"tokenizer_class": "EvilTokenizer", "auto_map": {"x": "y"}}))
    again = build_data(cfg, seed=0, run_dir=run)
    assert again.text.tokenizer.get_vocab() == first.text.tokenizer.get_vocab()
    (run / "tokenizer" / "tokenizer.json").write_text("{not json")
    with pytest.raises(UserError, match="not a readable tokenizer .*the run folder is damaged"):
        build_data(cfg, seed=0, run_dir=run)


def test_hidden_and_other_files_are_skipped(tmp_path):
    root = class_folders(tmp_path / "data")
    write(root / "pos" / ".hidden.txt", "not an example")
    write(root / "pos" / "notes.md", "not an example")
    write(root / ".ipynb_checkpoints" / "x.txt", "not a class")
    write(root / "neg" / "deeper" / "more.txt", "an example in a sub-folder")
    bundle = build_data(data_cfg(name="text", root=str(root), val_fraction=0), seed=0)
    names = [*bundle.train.origins, *bundle.test.origins]
    assert bundle.class_names == ["mid", "neg", "pos"] and len(names) == 16
    assert str(root / "neg" / "deeper" / "more.txt") in names


def test_csv_row_with_too_few_columns_names_its_line(tmp_path):
    write(tmp_path / "d.csv", "text,label\nfine,1\nno label here\n")
    with pytest.raises(UserError, match=r"d\.csv:3: the row has no 'label' value"):
        build_data(data_cfg(name="text", root=str(tmp_path / "d.csv")), seed=0)
