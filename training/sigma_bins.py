"""Loss per noise level: which log-spaced sigma bin each training sample fell in (a reporting helper).

The stage report logs ``loss_sigma_<lo>_<hi>``, the mean loss of a step's samples in each bin, so a user sees
where in the noise range a model is still learning (Karras et al. 2022, Fig. 5a plots the same).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

__all__ = ["DEFAULT_SIGMA_EDGES", "sigma_bin_names", "sigma_bins"]

# Log-spaced bin edges 0.01 ... 100 (9 edges -> 10 bins incl. the two open-ended ones); covers EDM's and SVD's
# log-normal training noise within about +-3 P_std.
DEFAULT_SIGMA_EDGES: Tensor = torch.logspace(-2, 2, 9, dtype=torch.float64)


def sigma_bins(sigma: Tensor, edges: Tensor | Sequence[float] | None = None) -> Tensor:
    """Bin index per sample for a "loss per sigma bin" metric.

    Bin i holds edges[i-1] <= sigma < edges[i]; bin 0 is below edges[0], bin len(edges) at or above edges[-1].
    ``edges`` must be increasing; default ``DEFAULT_SIGMA_EDGES`` (log-spaced). Returns int64 of sigma's shape.
    """
    edges = DEFAULT_SIGMA_EDGES if edges is None else torch.as_tensor(edges, dtype=torch.float64)
    if edges.ndim != 1 or (edges.numel() > 1 and not bool((edges[1:] > edges[:-1]).all())):
        raise ValueError("edges must be a strictly increasing 1-D sequence")
    sigma = torch.as_tensor(sigma)
    return torch.bucketize(sigma.to(torch.float64), edges.to(sigma.device), right=True)


def sigma_bin_names(edges: Tensor | None = None) -> list[str]:
    """Metric names of the bins, ``loss_sigma_<lo>_<hi>`` (open ends ``0`` and ``inf``)."""
    e = [f"{v:g}" for v in (DEFAULT_SIGMA_EDGES if edges is None else edges).tolist()]
    return [f"loss_sigma_0_{e[0]}"] + [f"loss_sigma_{a}_{b}" for a, b in zip(e, e[1:])] + [f"loss_sigma_{e[-1]}_inf"]
