"""``AgeGenderNet``: normalise → backbone → neck → heads, with backbone freezing and test-time views."""
from __future__ import annotations

import torch
from torch import nn

from models.heads import AgeGenderHeads
from models.views import mean_probability_logit, zoom_views

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


class Normalize(nn.Module):
    """Maps RGB in [0, 1] to ImageNet-normalised input; part of the model so exports need no extra step."""

    def __init__(self):
        super().__init__()
        self.register_buffer("mean", torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1))
        self.register_buffer("std", torch.tensor(IMAGENET_STD).view(1, 3, 1, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (x - self.mean) / self.std


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
        # one forward per view, so that a batch costs the cache what one view does (experiments.device)
        age, logit, _ = self.forward_with_spread(x)
        return age, logit

    def forward_with_spread(self, x: torch.Tensor, batched: bool = False
                            ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """``forward``'s (age, gender logit) and the spread of the views' ages (their standard deviation; 0 for one
        view): how far the answer moves between the face, its mirror and its zooms. A face unlike the training's
        moves more, so the age interval scales with it (``experiments.evaluation.calibration``).

        ``batched`` runs the views as one batch instead of one forward each: the same function, whose traced graph
        holds one copy of the network rather than one per view (the exports trace it so)."""
        views = [x] if self.training else self.views(x)
        if batched and len(views) > 1:
            age, logit, _ = self.outputs(torch.cat(views))
            ages, logits = age.float().reshape(len(views), -1), logit.reshape(len(views), -1)
        else:
            ages, logits = zip(*(self.outputs(v)[:2] for v in views))
            if len(views) == 1:
                return ages[0], logits[0], torch.zeros_like(ages[0], dtype=torch.float32)
            ages, logits = torch.stack(ages).float(), torch.stack(logits)
        return ages.mean(0), mean_probability_logit(logits), ages.std(0)

    def freeze_backbone(self, frozen: bool = True) -> None:
        self.backbone_frozen = frozen
        self.backbone.requires_grad_(not frozen)
        self.train(self.training)

    def train(self, mode: bool = True) -> "AgeGenderNet":
        super().train(mode)
        if self.backbone_frozen:
            self.backbone.eval()
        return self
