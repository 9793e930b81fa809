"""Shared pieces of both architectures: input normalisation, the two output heads, backbone freezing."""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
# Age is predicted around the UTKFace mean and spread, so the ReLU head starts in its active range and
# the last layer learns offsets of order one instead of climbing from zero to ~33 years.
AGE_MEAN, AGE_STD = 33.0, 20.0


def mean_probability_logit(logits: torch.Tensor) -> torch.Tensor:
    """The logit of the mean sigmoid probability over dim 0: log(mean p) − log(mean(1 − p)), computed in log space
    so that confident logits do not saturate. Flip test-time augmentation and ensembles average P(female) with it."""
    logits = logits.float()
    return torch.logsumexp(-F.softplus(-logits), 0) - torch.logsumexp(-F.softplus(logits), 0)


class Normalize(nn.Module):
    """Maps RGB in [0, 1] to ImageNet-normalised input; part of the model so exports need no extra step."""

    def __init__(self):
        super().__init__()
        self.register_buffer("mean", torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1))
        self.register_buffer("std", torch.tensor(IMAGENET_STD).view(1, 3, 1, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (x - self.mean) / self.std


AGE_HEADS = ("regression", "distribution")
# distribution head: one bin per year of age, 0..MAX_AGE (UTKFace's oldest face is 116)
MAX_AGE = 116


class AgeGenderHeads(nn.Module):
    """Gender logit (sigmoid gives P(female)) and age in years, both shape (B,), plus the age bins' logits
    (B × (MAX_AGE + 1)) for the distribution head, None for the regression head.

    ``regression``: a ReLU unit around the UTKFace mean and spread. ``distribution`` (DLDL-v2): a softmax over
    one-year bins whose expectation is the age; it is trained towards a Gaussian label distribution.
    """

    def __init__(self, width: int, age_head: str = "regression"):
        super().__init__()
        if age_head not in AGE_HEADS:
            raise ValueError(f"unknown age_head {age_head!r}; valid: {', '.join(AGE_HEADS)}")
        self.age_head = age_head
        self.gender = nn.Linear(width, 1)
        if age_head == "regression":
            self.age = nn.Linear(width, 1)
        else:
            self.age = nn.Linear(width, MAX_AGE + 1)
            self.register_buffer("bins", torch.arange(MAX_AGE + 1, dtype=torch.float32), persistent=False)
            # start from the UTKFace age prior rather than a uniform 0-116, so the first expectation is ~33
            with torch.no_grad():
                self.age.bias.copy_(-0.5 * ((self.bins - AGE_MEAN) / AGE_STD) ** 2)

    def forward(self, h: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
        gender = self.gender(h).squeeze(1)
        if self.age_head == "regression":
            return torch.relu(AGE_MEAN + AGE_STD * self.age(h).squeeze(1)), gender, None
        logits = self.age(h).float()
        return torch.softmax(logits, dim=1) @ self.bins, gender, logits


# architecture → the tta_zoom a config without one gets. Measured with experiments/benchmarks/tta_views.py on the
# validation split, 64 px, each model scored without and with zoomed views (flips in both), paired by model: 8
# pretrained search trials of 8 epochs gained +0.9 points of gender accuracy (95% interval +0.2 to +1.6, 7 of 8
# models better) and −0.55 years of MAE (−0.67 to −0.43, all 8) at 0.1 (0.05 and 0.15 did as well); 6 scratch
# trials gained nothing (+0.2 points, −0.4 to +0.8; +0.02 years), so scratch models score one view and its mirror
TTA_ZOOM = {"pretrained": 0.1, "scratch": 0.0}


def resolved_tta_zoom(config) -> float:
    """The config's ``tta_zoom``, or its architecture's measured choice (``TTA_ZOOM``) where it gives none."""
    return config.tta_zoom if config.tta_zoom is not None else TTA_ZOOM.get(config.arch, 0.0)


def zoom_views(x: torch.Tensor, zoom: float) -> list[torch.Tensor]:
    """A square batch zoomed in (its centre, ``1 − zoom`` of the side) and out (its edges repeated over ``zoom`` of
    the side), each resized back to the batch's size: the scale jitter training augments with, as two fixed views."""
    size = int(x.shape[-1])  # (a traced export records it as a constant: an export's image size is fixed)
    margin = max(1, round(size * zoom / 2))
    inner = x[..., margin:size - margin, margin:size - margin]
    outer = F.pad(x, (margin, margin, margin, margin), mode="replicate")
    return [F.interpolate(v, size=(size, size), mode="bilinear", align_corners=False) for v in (inner, outer)]


class AgeGenderNet(nn.Module):
    """Normalise → ``backbone`` → ``neck`` → ``heads``. Freezing acts on the submodule named ``backbone``.

    ``forward`` returns (age in years, gender logit) — the interface of training, export and predict.
    Test-time augmentation: in eval mode, ``tta_zoom`` > 0 adds the face zoomed in and out by that fraction
    (``zoom_views``) and ``tta_flip`` the mirror of every view; the forward averages the views' ages, and their
    P(female) through its logit. Validation, test scores, exported graphs and predictions all see the same views.

    While the backbone is frozen its parameters get no gradient and its BatchNorm layers stay in eval
    mode, using their stored running statistics, even when the model is in training mode: the frozen
    features must not drift with small-batch statistics.
    """

    def __init__(self, backbone: nn.Module, neck: nn.Module, width: int, age_head: str = "regression",
                 tta_flip: bool = False, tta_zoom: float = 0.0):
        super().__init__()
        self.normalize = Normalize()
        self.backbone = backbone
        self.neck = neck
        self.heads = AgeGenderHeads(width, age_head)
        self.tta_flip = tta_flip
        self.tta_zoom = tta_zoom
        self.backbone_frozen = False

    def outputs(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
        """(age, gender logit, age-bin logits or None) of one view, for the training loss."""
        return self.heads(self.neck(self.backbone(self.normalize(x))))

    def views(self, x: torch.Tensor) -> list[torch.Tensor]:
        """The views an eval-mode forward averages (``x`` alone without test-time augmentation)."""
        views = [x, *zoom_views(x, self.tta_zoom)] if self.tta_zoom > 0 else [x]
        return views + [v.flip(3) for v in views] if self.tta_flip else views

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        views = [x] if self.training else self.views(x)
        if len(views) > 1:
            # one forward per view, so that a batch costs the cache what one view does (experiments.device)
            ages, logits = zip(*(self.outputs(v)[:2] for v in views))
            return torch.stack(ages).float().mean(0), mean_probability_logit(torch.stack(logits))
        age, logit, _ = self.outputs(x)
        return age, logit

    def forward_with_spread(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """``forward``'s (age, gender logit) and the spread of the views' ages (their standard deviation; 0 for one
        view): how far the answer moves between the face, its mirror and its zooms. A face unlike the training's
        moves more, so the age interval scales with it (``experiments.calibration``)."""
        views = [x] if self.training else self.views(x)
        ages, logits = zip(*(self.outputs(v)[:2] for v in views))
        if len(views) == 1:
            return ages[0], logits[0], torch.zeros_like(ages[0], dtype=torch.float32)
        ages = torch.stack(ages).float()
        return ages.mean(0), mean_probability_logit(torch.stack(logits)), ages.std(0)

    def freeze_backbone(self, frozen: bool = True) -> None:
        self.backbone_frozen = frozen
        self.backbone.requires_grad_(not frozen)
        self.train(self.training)

    def train(self, mode: bool = True) -> "AgeGenderNet":
        super().train(mode)
        if self.backbone_frozen:
            self.backbone.eval()
        return self
