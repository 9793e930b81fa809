"""Test-time views: the zoomed and mirrored copies of a face that evaluation averages, and how their answers
are combined."""
from __future__ import annotations

import torch
import torch.nn.functional as F


def mean_probability_logit(logits: torch.Tensor) -> torch.Tensor:
    """The logit of the mean sigmoid probability over dim 0: log(mean p) − log(mean(1 − p)), computed in log space
    so that confident logits do not saturate. Flip test-time augmentation and ensembles average P(female) with it."""
    logits = logits.float()
    return torch.logsumexp(-F.softplus(-logits), 0) - torch.logsumexp(-F.softplus(logits), 0)


# architecture → the tta_zoom a config without one gets: zoomed views help the pretrained model and leave the
# scratch CNN where it was (experiments/benchmarks/tta_views.py), so scratch models score one view and its mirror
TTA_ZOOM = {"pretrained": 0.1, "scratch": 0.0}


def resolved_tta_zoom(config) -> float:
    """The config's ``tta_zoom``, or its architecture's choice (``TTA_ZOOM``) where it gives none."""
    return config.tta_zoom if config.tta_zoom is not None else TTA_ZOOM.get(config.arch, 0.0)


def zoom_views(x: torch.Tensor, zoom: float) -> list[torch.Tensor]:
    """A square batch zoomed in (its centre, ``1 − zoom`` of the side) and out (its edges repeated over ``zoom`` of
    the side), each resized back to the batch's size: the scale jitter training augments with, as two fixed views."""
    size = int(x.shape[-1])  # (a traced export records it as a constant: an export's image size is fixed)
    margin = max(1, round(size * zoom / 2))
    inner = x[..., margin:size - margin, margin:size - margin]
    outer = F.pad(x, (margin, margin, margin, margin), mode="replicate")
    return [F.interpolate(v, size=(size, size), mode="bilinear", align_corners=False) for v in (inner, outer)]
