from __future__ import annotations

import gzip
import json
import random
from pathlib import Path

import pytest
import torch

from bayesquant.data import DataSpec, calibration_windows, eval_windows, load_bbc_news, load_dataset
from bayesquant.errors import DataError


def test_bbc_split_sizes_labels_and_hash():
    test, train = load_bbc_news("test"), load_bbc_news("train")  # the content hash is verified on load
    assert (len(test), len(train)) == (223, 2002)
    assert test.classes == ["tech", "business", "politics", "sports", "entertainment"]
    assert set(train.labels.tolist()) == set(range(5))
    order = json.loads((Path(__file__).parents[2] / "shared/data/bbc-news-order.json").read_text())["order"]
    expected = [test.classes.index(rel.split("/")[0]) for rel in order[::10]]
    assert test.labels.tolist() == expected


def test_bbc_changed_content_is_detected(monkeypatch):
    monkeypatch.setitem(__import__("bayesquant.data.text", fromlist=["x"]).BBC_SHA256_PREFIX, "test", "0000")
    with pytest.raises(DataError, match="content hash"):
        load_bbc_news("test")


def test_text_file_plain_and_gz(tmp_path):
    (tmp_path / "a.txt").write_text("héllo world\n", encoding="utf-8")
    (tmp_path / "a.txt.gz").write_bytes(gzip.compress("héllo world\n".encode()))
    for name in ("a.txt", "a.txt.gz"):
        data = load_dataset(f"text:{tmp_path / name}")
        assert data.joined() == "héllo world\n" and data.labels is None


def test_text_file_errors(tmp_path):
    (tmp_path / "latin1.txt").write_bytes("caf\xe9".encode("latin-1"))
    (tmp_path / "empty.txt").write_text("  \n")
    with pytest.raises(DataError, match="not UTF-8"):
        load_dataset(f"text:{tmp_path / 'latin1.txt'}")
    with pytest.raises(DataError, match="is empty"):
        load_dataset(f"text:{tmp_path / 'empty.txt'}")
    with pytest.raises(DataError, match="no such file"):
        load_dataset(f"text:{tmp_path / 'missing.txt'}")


@pytest.mark.parametrize(
    "spec, message",
    [
        ("mnist", "unknown SPEC"),
        ("imagenet:test", "unknown SPEC"),
        ("mnist:val", "unknown split 'val'"),
        ("text:", "unknown SPEC"),
    ],
)
def test_bad_specs(spec, message):
    with pytest.raises(DataError, match=message):
        DataSpec.parse(spec)


def test_eval_windows_drop_the_partial_window():
    ids = torch.arange(1030)
    w = eval_windows(ids, 512)
    assert w.shape == (2, 512) and w[1, 0] == 512
    assert eval_windows(ids, 512, max_windows=1).shape == (1, 512)
    with pytest.raises(DataError, match="fewer than one window"):
        eval_windows(torch.arange(100), 512)


def test_calibration_windows_follow_the_gptq_sampling():
    ids = torch.arange(10_000)
    random.seed(0)  # the reference: seed once, then one randint per window
    starts = [random.randint(0, 10_000 - 64 - 1) for _ in range(8)]
    w = calibration_windows(ids, n_windows=8, seq_len=64, seed=0)
    assert w[:, 0].tolist() == starts
    assert (w[:, 1:] - w[:, :-1] == 1).all()


def _fake_fortunes(root):
    from bayesquant.data import fortunes

    d = root / "fortunes"
    d.mkdir()
    for k, name in enumerate(fortunes.FILES):
        body = "\n%\n".join(f"{name} entry {i}: _\bb_\bo_\bl_\bd text." for i in range(3 + k % 2))
        (d / name).write_text(body + "\n%\n")
    return d


def test_fortunes_split_and_cleaning(tmp_path, monkeypatch):
    from bayesquant.data.specs import load_dataset

    _fake_fortunes(tmp_path)
    monkeypatch.setenv("BAYESQUANT_DATA", str(tmp_path))
    train, test, every = (load_dataset(f"fortunes:{s}") for s in ("train", "test", "all"))
    assert len(train) + len(test) == len(every) > 0
    assert test.texts == every.texts[::10]  # entry i is test when i % 10 == 0
    assert every.texts[0] == "art entry 0: bold text."  # overstriking reduced to the printed letters
    assert all("%" not in t and "\b" not in t for t in every.texts)


def test_missing_fortunes_say_how_to_fetch_them(tmp_path, monkeypatch):
    from bayesquant.data import fortunes
    from bayesquant.errors import DataError

    monkeypatch.setenv("BAYESQUANT_DATA", str(tmp_path))
    monkeypatch.setenv("BAYESQUANT_CACHE", str(tmp_path / "cache"))
    monkeypatch.setattr(fortunes, "SYSTEM_DIR", tmp_path / "none")
    with pytest.raises(DataError, match="bayesquant data fetch fortunes"):
        fortunes.load_fortunes("test")


def _write_jsonl(path: Path, rows: list, gz: bool = False) -> Path:
    text = "\n".join(r if isinstance(r, str) else json.dumps(r) for r in rows) + "\n"
    path.write_bytes(gzip.compress(text.encode()) if gz else text.encode())
    return path


def test_jsonl_with_class_names_and_with_indices(tmp_path):
    rows = [{"text": "a cat", "label": "pets"}, {"text": "stocks fell", "label": "business"}, "",
            {"text": "a dog", "label": "pets", "id": 7}]  # fmt: skip
    named = load_dataset(f"jsonl:{_write_jsonl(tmp_path / 'n.jsonl.gz', rows, gz=True)}")
    assert named.texts == ["a cat", "stocks fell", "a dog"]  # the blank line is skipped, extra fields ignored
    assert named.classes == ["business", "pets"] and named.labels.tolist() == [1, 0, 1] and not named.indexed
    indexed = load_dataset(f"jsonl:{_write_jsonl(tmp_path / 'i.jsonl', [{'text': 'x', 'label': 3}])}")
    assert indexed.indexed and indexed.labels.tolist() == [3] and indexed.classes == ["0", "1", "2", "3"]
    assert indexed.subset(1).indexed  # subsets keep the kind of label
    assert named.pairs is None


def test_jsonl_sentence_pairs(tmp_path):
    rows = [{"text": "A man plays.", "text_pair": "Someone plays.", "label": "entailment"}, "",
            {"text": "A cat sleeps.", "text_pair": "A dog runs.", "label": "contradiction"},
            {"text": "It rains.", "text_pair": "It is wet.", "label": "entailment"}]  # fmt: skip
    data = load_dataset(f"jsonl:{_write_jsonl(tmp_path / 'p.jsonl', rows)}")
    assert data.pairs == ["Someone plays.", "A dog runs.", "It is wet."] and data.labels.tolist() == [1, 0, 1]
    assert data.subset(2).pairs == data.pairs[:2] and data.subset(2).texts == data.texts[:2]
    assert data.batch([2, 0]) == (["It rains.", "A man plays."], ["It is wet.", "Someone plays."])
    assert data.joined().startswith("A man plays.\nSomeone plays.\n\nA cat sleeps.")  # language models: running text


@pytest.mark.parametrize(
    ("rows", "message"),
    [
        ([{"text": "x", "text_pair": "y", "label": 0}, "", {"text": "z", "label": 1}],
         r"line 1 has a \"text_pair\" and line 3 has none; give a second text on every line"),
        ([{"text": "x", "text_pair": 5, "label": 0}], r"line 1: \"text_pair\" is 5; give the second text as a string"),
    ],
)  # fmt: skip
def test_jsonl_pairs_on_every_line_or_none(tmp_path, rows, message):
    with pytest.raises(DataError, match=message):
        load_dataset(f"jsonl:{_write_jsonl(tmp_path / 'bad.jsonl', rows)}")


@pytest.mark.parametrize(
    ("rows", "message"),
    [
        (["{not json"], r"line 1: not JSON"),
        ([{"label": "a"}], r"line 1: needs a string field \"text\" \(found 'label'\)"),
        ([{"text": "x", "label": "a"}, {"text": "y"}], r"line 2: \"label\" is None"),
        ([{"text": "x", "label": -1}], r"\"label\" is -1; give a class name .* or a class index"),
        ([{"text": "x", "label": True}], r"\"label\" is True"),
        ([{"text": "x", "label": "a"}, {"text": "y", "label": 0}], r"mixes class names \('a'\) and class indices"),
        (["", "  "], r"no lines"),
    ],
)
def test_jsonl_errors_name_the_line_and_the_fix(tmp_path, rows, message):
    path = _write_jsonl(tmp_path / "bad.jsonl", rows)
    with pytest.raises(DataError, match=message):
        load_dataset(f"jsonl:{path}")
    with pytest.raises(DataError, match=r"jsonl:.*missing.jsonl: no such file"):
        load_dataset(f"jsonl:{tmp_path / 'missing.jsonl'}")
