"""A Hugging Face text classifier of the kind users bring: all-MiniLM-L6-v2 fine-tuned end to end as a
`BertForSequenceClassification` (its [CLS] pooler and a new linear head) on `bbc-news:train`, saved with
`save_pretrained` (config, weights, tokenizer) to a directory that `--model DIR` takes. Its classes are listed in
alphabetical order, not in BBC News' order, so evaluating it on `bbc-news:test` or on a JSON Lines file goes
through the lookup by class name. Optionally writes `bbc-news:test` as a JSON Lines file (`--jsonl`), the format
of a user's own labelled texts.

    .venv/bin/python bench/hf_classifier.py --out bench/out/bbc-bert --jsonl bench/out/bbc-news-test.jsonl
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from bayesquant.data import load_bbc_news
from bayesquant.models.zoo import _hf_offline, _minilm_dir
from bayesquant.paths import atomic_dir, atomic_file


def write_jsonl(path: Path, split: str) -> None:
    data = load_bbc_news(split)
    with atomic_file(path, "w") as fh:
        for text, label in zip(data.texts, data.labels.tolist(), strict=True):
            fh.write(json.dumps({"text": text, "label": data.classes[label]}) + "\n")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("bench/out/bbc-bert"), help="directory to write")
    parser.add_argument("--jsonl", type=Path, help="also write bbc-news:test as JSON Lines to this file")
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--lr", type=float, default=1e-4)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--max-length", type=int, default=256)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    _hf_offline()
    from transformers import AutoTokenizer, BertForSequenceClassification

    train = load_bbc_news("train")
    classes = sorted(train.classes)
    labels = torch.tensor([classes.index(train.classes[i]) for i in train.labels.tolist()])
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
            enc = tokenizer([train.texts[j] for j in idx], truncation=True, max_length=args.max_length,
                            padding=True, return_tensors="pt")  # fmt: skip
            logits = model(input_ids=enc["input_ids"], attention_mask=enc["attention_mask"]).logits
            loss = F.cross_entropy(logits, labels[idx])
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            schedule.step()
            bar.update()
            bar.set_postfix(loss=f"{loss.item():.3f}")
    bar.close()
    model.eval()
    with atomic_dir(args.out) as tmp:
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
    print(f"wrote {args.out} after {time.perf_counter() - start:.0f} s of fine-tuning ({args.epochs} epochs)")
    if args.jsonl:
        write_jsonl(args.jsonl, "test")
        print(f"wrote {args.jsonl}")


if __name__ == "__main__":
    main()
