"""A Hugging Face text classifier of the kind users bring: all-MiniLM-L6-v2 fine-tuned end to end as a
`BertForSequenceClassification` (its [CLS] pooler and a new linear head), saved with `save_pretrained` (config,
weights, tokenizer) to a directory that `--model DIR` takes. Two tasks from BBC News:

- `--task topic` (default): the article's category. Its classes are listed in alphabetical order, not in BBC
  News' order, so evaluating it on `bbc-news:test` or on a JSON Lines file goes through the lookup by class name.
- `--task headline`: a sentence-pair task (the kind of GLUE's QNLI or MRPC). Text: a headline; second text: an
  article body; label `match` if the headline is the article's own, `mismatch` if it is another article's of the
  same category (one of each per article, drawn with a fixed seed). The model reads the pair as BERT does, two
  segments with their `token_type_ids`.

`--jsonl PATH` / `--train-jsonl PATH` write the task's test / training split as JSON Lines (the format of a user's
own labelled texts, `"text_pair"` for the pairs); the script prints the fine-tuned model's test accuracy as
transformers computes it, to compare with `bayesquant eval`.

    .venv/bin/python bench/hf_classifier.py --out bench/out/bbc-bert --jsonl bench/out/bbc-news-test.jsonl
    .venv/bin/python bench/hf_classifier.py --task headline --epochs 1 --max-length 128 --out bench/out/bbc-pairs \
        --jsonl bench/out/bbc-pairs-test.jsonl --train-jsonl bench/out/bbc-pairs-train.jsonl
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from bayesquant.data import TextData, load_bbc_news
from bayesquant.models.zoo import _hf_offline, _minilm_dir
from bayesquant.paths import atomic_dir, atomic_file

MATCH = ["match", "mismatch"]


def topic_task(split: str) -> TextData:
    """BBC News with its classes in alphabetical order."""
    data = load_bbc_news(split)
    classes = sorted(data.classes)
    labels = torch.tensor([classes.index(data.classes[i]) for i in data.labels.tolist()])
    return TextData(data.name, split, data.texts, labels, classes)


def headline_task(split: str, seed: int = 0) -> TextData:
    """(headline, body) pairs of `bbc-news:SPLIT`: each article's own (`match`) and, for each article, its headline
    with the body of another article of its category drawn at random (`mismatch`)."""
    data = load_bbc_news(split)
    heads, bodies = zip(*(text.split("\n\n", 1) for text in data.texts), strict=True)
    generator = torch.Generator().manual_seed(seed)
    by_class: dict[int, list[int]] = {}
    for i, y in enumerate(data.labels.tolist()):
        by_class.setdefault(y, []).append(i)
    texts, pairs, labels = [], [], []
    for i, y in enumerate(data.labels.tolist()):
        same = [j for j in by_class[y] if j != i]
        other = same[int(torch.randint(len(same), (1,), generator=generator))]
        texts += [heads[i], heads[i]]
        pairs += [bodies[i], bodies[other]]
        labels += [0, 1]
    return TextData("bbc-headlines", split, texts, torch.tensor(labels), MATCH, pairs=pairs)


def write_jsonl(path: Path, data: TextData) -> None:
    with atomic_file(path, "w") as fh:
        for i, label in enumerate(data.labels.tolist()):
            pair = {} if data.pairs is None else {"text_pair": data.pairs[i]}
            row = {"text": data.texts[i], **pair, "label": data.classes[label]}
            fh.write(json.dumps(row) + "\n")


def encoded(tokenizer, data: TextData, idx: list[int], max_length: int) -> dict:
    texts, pairs = data.batch(idx)
    return tokenizer(texts, pairs, truncation=True, max_length=max_length, padding=True, return_tensors="pt")


@torch.no_grad()
def accuracy(model, tokenizer, data: TextData, max_length: int, batch_size: int = 32) -> float:
    right = 0
    for i in range(0, len(data), batch_size):
        idx = list(range(i, min(i + batch_size, len(data))))
        right += int((model(**encoded(tokenizer, data, idx, max_length)).logits.argmax(-1) == data.labels[idx]).sum())
    return right / len(data)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("bench/out/bbc-bert"), help="directory to write")
    parser.add_argument("--task", choices=("topic", "headline"), default="topic", help="see the module docstring")
    parser.add_argument("--jsonl", type=Path, help="also write the task's test split as JSON Lines to this file")
    parser.add_argument("--train-jsonl", type=Path, help="also write the task's training split as JSON Lines")
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--lr", type=float, default=1e-4)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--max-length", type=int, default=256)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    _hf_offline()
    from transformers import AutoTokenizer, BertForSequenceClassification

    make = topic_task if args.task == "topic" else headline_task
    train, test = make("train"), make("test")
    classes = train.classes
    tokenizer = AutoTokenizer.from_pretrained(_minilm_dir())
    torch.manual_seed(args.seed)
    model = BertForSequenceClassification.from_pretrained(
        _minilm_dir(),
        num_labels=len(classes),
        id2label=dict(enumerate(classes)),
        label2id={name: i for i, name in enumerate(classes)},
        dtype=torch.float32,
    )
    optimizer = torch.optim.AdamW(model.parameters(), lr=args.lr, weight_decay=0.01)
    steps = args.epochs * -(-len(train) // args.batch_size)
    schedule = torch.optim.lr_scheduler.OneCycleLR(optimizer, args.lr, total_steps=steps, pct_start=0.1)
    generator = torch.Generator().manual_seed(args.seed)
    start = time.perf_counter()
    model.train()
    bar = tqdm(total=steps, desc="fine-tuning", unit="batch", mininterval=1.0)
    for _ in range(args.epochs):
        order = torch.randperm(len(train), generator=generator).tolist()
        for i in range(0, len(order), args.batch_size):
            idx = order[i : i + args.batch_size]
            logits = model(**encoded(tokenizer, train, idx, args.max_length)).logits  # token types for pairs
            loss = F.cross_entropy(logits, train.labels[idx])
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            schedule.step()
            bar.update()
            bar.set_postfix(loss=f"{loss.item():.3f}")
    bar.close()
    model.eval()
    seconds = time.perf_counter() - start
    tokenizer.model_max_length = args.max_length  # the length it was fine-tuned at: `--model DIR` truncates there
    with atomic_dir(args.out) as tmp:
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
    print(f"wrote {args.out} after {seconds:.0f} s of fine-tuning ({args.epochs} epochs, task {args.task})")
    score = accuracy(model, tokenizer, test, args.max_length)
    print(f"test accuracy (transformers, {len(test)} examples, {args.max_length} tokens): {100 * score:.2f}%")
    for path, data in ((args.jsonl, test), (args.train_jsonl, train)):
        if path:
            write_jsonl(path, data)
            print(f"wrote {path} ({len(data)} lines)")


if __name__ == "__main__":
    main()
