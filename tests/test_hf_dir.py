"""A user's own Hugging Face directory, a decoder or an encoder classifier: loaded, quantized, saved self-contained
and loaded again."""

from __future__ import annotations

import json
import shutil

import pytest
import torch
from transformers import (
    AutoTokenizer,
    BertConfig,
    BertForSequenceClassification,
    DistilBertConfig,
    DistilBertForSequenceClassification,
    LlamaConfig,
    LlamaForCausalLM,
    Qwen2Config,
    Qwen2ForCausalLM,
    RobertaConfig,
    RobertaForSequenceClassification,
)

from bayesquant.api import quantize
from bayesquant.config import QuantizeConfig
from bayesquant.data import load_bbc_news, load_dataset
from bayesquant.data.calibration import labelled_batches
from bayesquant.errors import DataError, ModelError
from bayesquant.eval import evaluate, predict_probs
from bayesquant.models import Task, load_model
from bayesquant.models.nets import segment_ids
from bayesquant.models.zoo import _minilm_dir, _segments
from tests.test_cli import assert_one_line_error, run

ARCHS = {"llama": (LlamaConfig, LlamaForCausalLM), "qwen2": (Qwen2Config, Qwen2ForCausalLM)}


@pytest.fixture(scope="module")
def tokenizer():
    return load_model("smollm2-135m").tokenizer  # a real tokenizer; the decoders below are tiny and random


def tiny_decoder(directory, arch: str, tokenizer, with_tokenizer: bool = True):
    config_cls, model_cls = ARCHS[arch]
    config = config_cls(vocab_size=tokenizer.vocab_size, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                        num_attention_heads=4, num_key_value_heads=2, tie_word_embeddings=True)  # fmt: skip
    torch.manual_seed(0)
    model_cls(config).save_pretrained(directory)
    if with_tokenizer:
        tokenizer.save_pretrained(directory)
    return directory


@pytest.mark.parametrize("arch", ["llama", "qwen2"])
def test_a_decoder_directory_quantizes_and_its_checkpoint_loads_without_the_source(tmp_path, tokenizer, arch):
    source = tiny_decoder(tmp_path / "mine", arch, tokenizer)
    loaded = load_model(source)
    assert loaded.task == Task.CAUSAL_LM and loaded.family.name == "llama"
    assert loaded.key == str(source.resolve())
    names = list(loaded.family.quantizable_modules(loaded.module))
    assert len(names) == 14 and "lm_head" not in names  # 7 projections × 2 layers; the tied head stays float
    before = loaded.module.model.layers[0].self_attn.q_proj.weight.detach().clone()
    result = quantize(loaded, QuantizeConfig(method="gptq", bits=3, nsamples=2, seq_len=32))
    packed = result.save(tmp_path / "packed")
    assert (packed / "source" / "config.json").is_file() and (packed / "source" / "tokenizer.json").is_file()
    assert json.loads((packed / "config.json").read_text())["source"] == "source"
    shutil.rmtree(source)  # the checkpoint carries what it needs
    again = load_model(packed)
    assert again.key == loaded.key and again.task == Task.CAUSAL_LM
    ids = torch.randint(0, tokenizer.vocab_size, (1, 16), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        expected = result.model.module(input_ids=ids).logits
        got = again.module(input_ids=ids).logits
    torch.testing.assert_close(got, expected, rtol=0, atol=0)
    deq = again.module.model.layers[0].self_attn.q_proj.dequantized_weight()
    assert not torch.equal(deq, before)
    assert max(row.unique().numel() for row in deq) <= 8  # 3 bits per channel: at most 2³ levels in a row


def test_cli_quantizes_and_evaluates_a_decoder_directory(tmp_path, capsys, tokenizer):
    source = tiny_decoder(tmp_path / "mine", "llama", tokenizer)
    out = tmp_path / "q"
    code, stdout, err = run(capsys, "quantize", "--model", str(source), "--method", "rtn", "--bits", "4",
                            "--out", str(out), "--eval", "bbc-news:test", "--max-windows", "1")  # fmt: skip
    assert code == 0, err
    assert "perplexity" in stdout
    code, stdout, err = run(capsys, "eval", "--model", str(out), "--data", "bbc-news:test", "--max-windows", "1",
                            "--seq-len", "32")  # fmt: skip
    assert code == 0, err
    assert "perplexity" in stdout


def test_directories_that_cannot_be_used_are_refused_by_name(tmp_path, capsys, tokenizer):
    encoder = tmp_path / "encoder"
    encoder.mkdir()
    (encoder / "config.json").write_text(json.dumps({"model_type": "bert", "architectures": ["BertForMaskedLM"]}))
    with pytest.raises(ModelError, match=r"BertForMaskedLM, neither a causal language model nor a text classifier"):
        load_model(encoder)
    bare = tiny_decoder(tmp_path / "bare", "llama", tokenizer, with_tokenizer=False)
    with pytest.raises(ModelError, match=r"no tokenizer could be read.*tokenizer.save_pretrained"):
        load_model(bare)
    other = tmp_path / "other"
    other.mkdir()
    code, _, err = run(capsys, "quantize", "--model", str(other), "--method", "rtn", "--out", str(tmp_path / "o"))
    assert_one_line_error(code, err, str(other), "Hugging Face directory (config.json)")


def test_a_checkpoint_whose_source_points_elsewhere_is_refused(tmp_path, tokenizer):
    source = tiny_decoder(tmp_path / "mine", "llama", tokenizer)
    packed = quantize(load_model(source), QuantizeConfig(method="rtn", bits=4)).save(tmp_path / "packed")
    config = json.loads((packed / "config.json").read_text())
    (packed / "config.json").write_text(json.dumps({**config, "source": "../mine"}))
    with pytest.raises(ModelError, match=r"'source' must be 'source', not '../mine'"):
        load_model(packed)


# ---------------------------------------------------------------- encoder classifiers

CLASSES = ["business", "entertainment", "politics", "sports", "tech"]  # BBC News' classes, alphabetical


@pytest.fixture(scope="module")
def wordpiece():
    return AutoTokenizer.from_pretrained(_minilm_dir())  # MiniLM's real tokenizer; the encoders below are tiny


def tiny_classifier(directory, tokenizer, arch: str = "bert", classes=CLASSES, **extra):
    common = {"vocab_size": tokenizer.vocab_size, "num_labels": len(classes), "id2label": dict(enumerate(classes)),
              "label2id": {c: i for i, c in enumerate(classes)}, **extra}  # fmt: skip
    if arch in ("bert", "roberta"):
        config_cls, model_cls = {"bert": (BertConfig, BertForSequenceClassification),
                                 "roberta": (RobertaConfig, RobertaForSequenceClassification)}[arch]  # fmt: skip
        config = config_cls(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2,
                            pad_token_id=0, max_position_embeddings=514, **common)  # fmt: skip
    else:
        config = DistilBertConfig(dim=32, hidden_dim=64, n_layers=2, n_heads=2, **common)
        model_cls = DistilBertForSequenceClassification
    torch.manual_seed(0)
    model_cls(config).save_pretrained(directory)
    tokenizer.save_pretrained(directory)
    return directory


def test_a_bert_classifier_directory_quantizes_and_reloads_without_the_source(tmp_path, wordpiece):
    source = tiny_classifier(tmp_path / "mine", wordpiece)
    loaded = load_model(source)
    assert loaded.task == Task.TEXT and loaded.classes == CLASSES and loaded.max_length == 512
    assert loaded.family.blocks == "model.bert.encoder.layer" and loaded.family.sequential  # BERT's layout
    names = list(loaded.family.quantizable_modules(loaded.module))
    assert len(names) == 6 * 2 + 2 and names[-2:] == ["model.bert.pooler.dense", "model.classifier"]
    result = quantize(loaded, QuantizeConfig(method="gptq", bits=3, nsamples=8))
    packed = result.save(tmp_path / "packed")
    shutil.rmtree(source)
    again = load_model(packed)
    assert again.task == Task.TEXT and again.classes == CLASSES and again.key == loaded.key
    data = load_bbc_news("test").subset(6)
    torch.testing.assert_close(predict_probs(again, data), predict_probs(result.model, data), rtol=0, atol=0)
    deq = again.module.model.bert.encoder.layer[1].output.dense.dequantized_weight()
    assert max(row.unique().numel() for row in deq) <= 8


def test_labels_are_matched_to_the_classifier_by_class_name(tmp_path, wordpiece):
    loaded = load_model(tiny_classifier(tmp_path / "mine", wordpiece))
    bbc = load_bbc_news("test").subset(40)  # labelled in BBC News' order: tech, business, …
    probs = predict_probs(loaded, bbc)[0]
    truth = torch.tensor([CLASSES.index(bbc.classes[i]) for i in bbc.labels.tolist()])
    expected_nll = float(torch.nn.functional.nll_loss(probs.log(), truth))
    assert abs(evaluate(loaded, bbc)["nll"] - expected_nll) < 1e-6
    by_name = tmp_path / "named.jsonl"
    by_name.write_text("".join(json.dumps({"text": t, "label": bbc.classes[y]}) + "\n"
                               for t, y in zip(bbc.texts, bbc.labels.tolist(), strict=True)))  # fmt: skip
    by_index = tmp_path / "indexed.jsonl"
    by_index.write_text("".join(json.dumps({"text": t, "label": int(y)}) + "\n"
                                for t, y in zip(bbc.texts, truth.tolist(), strict=True)))  # fmt: skip
    for path in (by_name, by_index):
        assert abs(evaluate(loaded, f"jsonl:{path}")["nll"] - expected_nll) < 1e-6
    unknown = tmp_path / "unknown.jsonl"
    unknown.write_text(json.dumps({"text": "x", "label": "weather"}) + "\n")
    with pytest.raises(DataError, match=r"'weather' are not classes of --model .*\(business, entertainment"):
        evaluate(loaded, f"jsonl:{unknown}")
    batches = labelled_batches(loaded, f"jsonl:{by_name}", nsamples=40, batch_size=40)
    drawn = torch.randperm(40, generator=torch.Generator().manual_seed(0))  # calibration's seeded draw
    assert batches.labels_valid and len(batches) == 1 and torch.equal(batches[0][2], truth[drawn])
    assert not labelled_batches(loaded, f"jsonl:{unknown}", nsamples=1).labels_valid  # calibration: unused


@pytest.mark.parametrize(
    ("arch", "blocks", "sequential", "head"),
    [
        ("distilbert", "model.distilbert.transformer.layer", False, ["model.pre_classifier", "model.classifier"]),
        ("roberta", "model.roberta.encoder.layer", True, ["model.classifier.dense", "model.classifier.out_proj"]),
    ],
)
def test_other_encoder_layouts_quantize_every_linear(tmp_path, wordpiece, arch, blocks, sequential, head):
    loaded = load_model(tiny_classifier(tmp_path / arch, wordpiece, arch=arch, classes=["neg", "pos"]))
    assert loaded.family.blocks == blocks and bool(loaded.family.sequential) == sequential  # DistilBERT: one by one
    result = quantize(loaded, QuantizeConfig(method="gptq", bits=4, nsamples=8))
    quantized = [n for n, m in result.model.module.named_modules() if hasattr(m, "dequantized_weight")]
    assert len(quantized) == 6 * 2 + 2 and quantized[-2:] == head  # 6 Linear per layer, then the head's two


def test_cli_quantizes_a_classifier_directory_with_bayesq_and_evaluates_it_on_jsonl(tmp_path, capsys, wordpiece):
    source = tiny_classifier(tmp_path / "mine", wordpiece)
    data = tmp_path / "mine.jsonl"
    bbc = load_bbc_news("test").subset(12)
    data.write_text("".join(json.dumps({"text": t, "label": bbc.classes[y]}) + "\n"
                            for t, y in zip(bbc.texts, bbc.labels.tolist(), strict=True)))  # fmt: skip
    out = tmp_path / "q"
    code, stdout, err = run(capsys, "quantize", "--model", str(source), "--method", "bayesq", "--bits", "4",
                            "--calib", f"jsonl:{data}", "--nsamples", "12", "--out", str(out),
                            "--eval", f"jsonl:{data}")  # fmt: skip
    assert code == 0, err
    assert "accuracy" in stdout
    code, stdout, err = run(capsys, "eval", "--model", str(out), "--data", f"jsonl:{data}")
    assert code == 0, err
    assert "accuracy" in stdout and "(texts cut to 512 tokens)" in stdout


def test_texts_are_cut_at_the_tokenizers_model_max_length(tmp_path, wordpiece):
    source = tiny_classifier(tmp_path / "short", wordpiece)
    settings = json.loads((source / "tokenizer_config.json").read_text())
    (source / "tokenizer_config.json").write_text(json.dumps(settings | {"model_max_length": 24}))
    loaded = load_model(source)  # fine-tuned on 24 tokens, as the saved tokenizer says
    assert loaded.max_length == 24
    batch = labelled_batches(loaded, "bbc-news:train", nsamples=4, batch_size=4)[0]
    assert batch[0].shape[1] == 24  # BBC articles are longer: every one is cut there
    assert evaluate(loaded, load_bbc_news("test").subset(4))["max_length"] == 24


def test_classifiers_that_cannot_be_used_are_refused_by_name(tmp_path, wordpiece):
    with pytest.raises(ModelError, match=r"regression .*only single-label classification"):
        load_model(tiny_classifier(tmp_path / "reg", wordpiece, classes=["score"]))
    multi = tiny_classifier(tmp_path / "multi", wordpiece, problem_type="multi_label_classification")
    with pytest.raises(ModelError, match=r"multi_label_classification"):
        load_model(multi)


# ---------------------------------------------------------------- sentence pairs

PAIRS = [("A man is playing a guitar.", "Someone plays music.", "entailment"),
         ("Stocks fell sharply on Monday.", "The market rose.", "contradiction"),
         ("The cat sleeps on the mat.", "An animal is resting.", "entailment"),
         ("Rain is expected tomorrow.", "The forecast is sunny.", "contradiction")] * 3  # fmt: skip


def pairs_file(path):
    path.write_text("".join(json.dumps({"text": a, "text_pair": b, "label": y}) + "\n" for a, b, y in PAIRS))
    return path


def test_segment_ids_mark_the_second_text_as_bert_does():
    ids = torch.tensor([[101, 7, 8, 102, 9, 102, 0], [101, 7, 102, 0, 0, 0, 0]])
    mask = (ids != 0).long()
    expected = torch.tensor([[0, 0, 0, 0, 1, 1, 0], [0, 0, 0, 0, 0, 0, 0]])
    assert torch.equal(segment_ids(ids, mask, 102), expected)


def test_sentence_pairs_reach_a_bert_classifier_with_its_tokenizers_token_types(tmp_path, wordpiece):
    classes = ["contradiction", "entailment"]
    loaded = load_model(tiny_classifier(tmp_path / "nli", wordpiece, classes=classes, initializer_range=0.5))
    assert loaded.module.sep_token_id == wordpiece.sep_token_id and loaded.module.pair_error is None
    data = load_dataset(f"jsonl:{pairs_file(tmp_path / 'pairs.jsonl')}")
    enc = wordpiece([a for a, _, _ in PAIRS], [b for _, b, _ in PAIRS], padding=True, return_tensors="pt")
    with torch.no_grad():
        inner = loaded.module.model
        expected = torch.softmax(inner(**enc).logits, -1)  # the tokenizer's own token_type_ids
        without = torch.softmax(inner(input_ids=enc["input_ids"], attention_mask=enc["attention_mask"]).logits, -1)
    assert (expected - without).abs().max() > 1e-3  # the segments matter to this model
    torch.testing.assert_close(predict_probs(loaded, data)[0], expected, rtol=0, atol=1e-6)
    batch = labelled_batches(loaded, f"jsonl:{tmp_path / 'pairs.jsonl'}", nsamples=12, batch_size=12)[0]
    assert ((batch[0] == wordpiece.sep_token_id).sum(1) == 2).all()  # both texts of every pair are calibrated on
    result = quantize(
        loaded, QuantizeConfig(method="gptq", bits=4, nsamples=12, calib=f"jsonl:{tmp_path / 'pairs.jsonl'}")
    )
    again = load_model(result.save(tmp_path / "packed"))
    assert again.module.sep_token_id == wordpiece.sep_token_id
    torch.testing.assert_close(predict_probs(again, data), predict_probs(result.model, data), rtol=0, atol=0)


@pytest.mark.parametrize(("arch", "extra"), [("roberta", {"type_vocab_size": 1}), ("distilbert", {})])
def test_encoders_without_segment_embeddings_take_pairs_as_the_tokenizer_joins_them(tmp_path, wordpiece, arch, extra):
    loaded = load_model(tiny_classifier(tmp_path / arch, wordpiece, arch=arch, classes=["a", "b"], **extra))
    assert loaded.module.sep_token_id is None and loaded.module.pair_error is None
    data = load_dataset(f"jsonl:{pairs_file(tmp_path / 'pairs.jsonl')}")
    enc = wordpiece([a for a, _, _ in PAIRS], [b for _, b, _ in PAIRS], padding=True, return_tensors="pt")
    with torch.no_grad():
        expected = torch.softmax(
            loaded.module.model(input_ids=enc["input_ids"], attention_mask=enc["attention_mask"]).logits, -1
        )
    torch.testing.assert_close(predict_probs(loaded, data)[0], expected, rtol=0, atol=1e-6)


def test_pairs_are_refused_where_they_cannot_be_read(tmp_path, wordpiece):
    pairs = pairs_file(tmp_path / "pairs.jsonl")
    with pytest.raises(DataError, match=r'--data jsonl:.*pairs.jsonl gives sentence pairs \("text_pair"\), but '
                                        r'minilm-bbc takes single texts; drop "text_pair"'):  # fmt: skip
        evaluate("minilm-bbc", f"jsonl:{pairs}")

    class Marked:  # a tokenizer whose token types are not BERT's: every token of a pair is segment 1
        model_input_names = ("input_ids", "token_type_ids", "attention_mask")
        sep_token_id = wordpiece.sep_token_id

        def __call__(self, *texts, **kwargs):
            enc = wordpiece(*texts, **kwargs)
            enc["token_type_ids"] = torch.full_like(enc["input_ids"], len(texts) - 1)
            return enc

    config = BertConfig(type_vocab_size=2)
    sep, reason = _segments(Marked(), config)
    assert sep is None and "cannot be rebuilt from the ids" in reason
    loaded = load_model(tiny_classifier(tmp_path / "nli", wordpiece, classes=["contradiction", "entailment"]))
    loaded.module.pair_error = reason
    with pytest.raises(DataError, match=r"--calib jsonl:.* gives sentence pairs .*cannot be rebuilt"):
        labelled_batches(loaded, f"jsonl:{pairs}", nsamples=4)


def test_cli_warns_when_pairs_are_evaluated_but_single_texts_calibrate(tmp_path, capsys, caplog, wordpiece):
    source = tiny_classifier(tmp_path / "nli", wordpiece, classes=["contradiction", "entailment"])
    pairs = f"jsonl:{pairs_file(tmp_path / 'pairs.jsonl')}"
    warning = "gives sentence pairs, but calibration defaults to single texts"
    for out, calib in (("q", []), ("q2", ["--calib", pairs])):
        caplog.clear()
        code, _, err = run(capsys, "quantize", "--model", str(source), "--method", "rtn", "--bits", "4", *calib,
                           "--eval", pairs, "--out", str(tmp_path / out))  # fmt: skip
        assert code == 0, err
        assert (warning in caplog.text) == (not calib)
