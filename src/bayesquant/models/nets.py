"""Networks defined here: the reference nets we train and wrappers that give every classifier one interface.

Every image classifier takes images in [0, 1] of shape (N, C, H, W) and returns logits; its input
normalisation is part of the module (a registered buffer), so data and model cannot disagree.
"""

from __future__ import annotations

import torch
from torch import nn


class Normalize(nn.Module):
    """(x − mean) / std per channel, with constants stored as buffers."""

    def __init__(self, mean: tuple[float, ...], std: tuple[float, ...]) -> None:
        super().__init__()
        self.register_buffer("mean", torch.tensor(mean).view(1, -1, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(std).view(1, -1, 1, 1), persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (x - self.mean) / self.std


MNIST_STATS = ((0.1307,), (0.3081,))
FASHION_STATS = ((0.2860,), (0.3530,))


class LeNet5(nn.Module):
    """LeNet-5 with 6-16-120-84 units (ReLU, max-pooling), 28×28 inputs padded as in the original."""

    def __init__(self, num_classes: int = 10) -> None:
        super().__init__()
        self.norm = Normalize(*MNIST_STATS)
        self.features = nn.Sequential(
            nn.Conv2d(1, 6, 5, padding=2),
            nn.ReLU(),
            nn.MaxPool2d(2),  # (6, 14, 14)
            nn.Conv2d(6, 16, 5),
            nn.ReLU(),
            nn.MaxPool2d(2),  # (16, 5, 5)
        )
        self.classifier = nn.Sequential(
            nn.Flatten(),
            nn.Linear(400, 120),
            nn.ReLU(),
            nn.Linear(120, 84),
            nn.ReLU(),
            nn.Linear(84, num_classes),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.features(self.norm(x)))


class DigitCNN(nn.Module):
    """The 3-conv/2-fc MNIST CNN of the `digit-recognizer-py` package (its weights load into this)."""

    def __init__(self) -> None:
        super().__init__()
        self.norm = Normalize(*MNIST_STATS)
        self.conv_layers = nn.Sequential(
            nn.Conv2d(1, 32, 3, padding=1),
            nn.ReLU(),
            nn.MaxPool2d(2, 2),
            nn.Conv2d(32, 64, 3, padding=1),
            nn.ReLU(),
            nn.MaxPool2d(2, 2),
            nn.Conv2d(64, 128, 3, padding=1),
            nn.ReLU(),
            nn.MaxPool2d(2, 2),
        )
        self.fc_layers = nn.Sequential(nn.Linear(128 * 3 * 3, 256), nn.ReLU(), nn.Linear(256, 10))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.conv_layers(self.norm(x))
        return self.fc_layers(h.flatten(1))


class MLP(nn.Module):
    """Fully connected net, 784 → hidden… → classes; SoftPlus by default (the QBNN paper's choice)."""

    def __init__(
        self,
        in_features: int = 784,
        hidden: tuple[int, ...] = (100, 100),
        num_classes: int = 10,
        activation: str = "softplus",
    ) -> None:
        super().__init__()
        acts = {"softplus": nn.Softplus, "relu": nn.ReLU}
        if activation not in acts:
            raise ValueError(f"activation {activation!r}: valid: {', '.join(acts)}")
        self.norm = Normalize(*MNIST_STATS)
        layers: list[nn.Module] = [nn.Flatten()]
        width = in_features
        for h in hidden:
            layers += [nn.Linear(width, h), acts[activation]()]
            width = h
        layers.append(nn.Linear(width, num_classes))
        self.layers = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.layers(self.norm(x))


class BasicBlock(nn.Module):
    """Two 3×3 convolutions with batch norm and an identity (or 1×1 projection) shortcut."""

    def __init__(self, cin: int, cout: int, stride: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.shortcut: nn.Module = nn.Identity()
        if stride != 1 or cin != cout:
            self.shortcut = nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = torch.relu(self.bn1(self.conv1(x)))
        return torch.relu(self.bn2(self.conv2(h)) + self.shortcut(x))


class Stem(nn.Module):
    def __init__(self, cout: int) -> None:
        super().__init__()
        self.norm = Normalize(*FASHION_STATS)
        self.conv = nn.Conv2d(1, cout, 3, 1, 1, bias=False)
        self.bn = nn.BatchNorm2d(cout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.relu(self.bn(self.conv(self.norm(x))))


class Head(nn.Module):
    def __init__(self, cin: int, num_classes: int) -> None:
        super().__init__()
        self.fc = nn.Linear(cin, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(x.mean(dim=(2, 3)))


class SmallResNet(nn.Module):
    """A ResNet for 28×28 grey images: stem, `blocks_per_stage` basic blocks at each width, pooled head.

    `self.net` is the block sequence (stem, residual blocks…, head) processed in order.
    """

    def __init__(self, widths: tuple[int, ...] = (16, 32, 64), blocks_per_stage: int = 1, num_classes: int = 10):
        super().__init__()
        layers: list[nn.Module] = [Stem(widths[0])]
        cin = widths[0]
        for i, w in enumerate(widths):
            for j in range(blocks_per_stage):
                layers.append(BasicBlock(cin, w, stride=2 if (i > 0 and j == 0) else 1))
                cin = w
        layers.append(Head(cin, num_classes))
        self.net = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


class ImageNetClassifier(nn.Module):
    """Wraps an ImageNet CNN so it takes [0, 1] RGB images and normalises them itself."""

    def __init__(self, net: nn.Module, mean: tuple[float, ...], std: tuple[float, ...]) -> None:
        super().__init__()
        self.norm = Normalize(mean, std)
        self.net = net

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(self.norm(x))


class TextClassifier(nn.Module):
    """A BERT-style encoder, attention-masked mean pooling, and a linear head: (ids, mask) → logits."""

    def __init__(self, encoder: nn.Module, num_classes: int) -> None:
        super().__init__()
        self.encoder = encoder
        self.head = nn.Linear(encoder.config.hidden_size, num_classes)

    def embed(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        hidden = self.encoder(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state  # (N, L, H)
        mask = attention_mask.unsqueeze(-1).to(hidden.dtype)
        return (hidden * mask).sum(1) / mask.sum(1).clamp_min(1.0)  # (N, H)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        return self.head(self.embed(input_ids, attention_mask))


class HFSequenceClassifier(nn.Module):
    """A transformers `…ForSequenceClassification` model as (input_ids, attention_mask) → logits, the calling
    convention of every text classifier here. `config` is the wrapped model's (a checkpoint saves it).

    Sentence pairs: a model with segment embeddings (BERT's `token_type_ids`) gets them rebuilt from the ids,
    segment 1 after the first `sep_token_id` ([CLS] A [SEP] B [SEP] → 0…0 1…1, padding 0), which is what its
    tokenizer gives (`zoo.load_hf_sequence_classifier` checks that it does); `sep_token_id=None` passes none, as
    for RoBERTa or DistilBERT. `pair_error` says why the model cannot take pairs, or is None."""

    def __init__(self, model: nn.Module, sep_token_id: int | None = None, pair_error: str | None = None) -> None:
        super().__init__()
        self.model = model
        self.sep_token_id = sep_token_id
        self.pair_error = pair_error

    @property
    def config(self):
        return self.model.config

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        if self.sep_token_id is None:
            return self.model(input_ids=input_ids, attention_mask=attention_mask).logits
        types = segment_ids(input_ids, attention_mask, self.sep_token_id)
        return self.model(input_ids=input_ids, attention_mask=attention_mask, token_type_ids=types).logits


def segment_ids(input_ids: torch.Tensor, attention_mask: torch.Tensor, sep_token_id: int) -> torch.Tensor:
    """BERT's token types of (N, L) ids: 1 from the token after the first separator on, 0 before and on padding."""
    sep = (input_ids == sep_token_id).long()
    before = sep.cumsum(1) - sep  # separators strictly before each position
    return ((before > 0) & attention_mask.bool()).long()
