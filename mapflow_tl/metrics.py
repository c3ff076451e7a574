"""The paper's knockout metrics."""

from __future__ import annotations

import torch
from jaxtyping import Float

__all__ = ["relative_change"]


def relative_change(
    p_knockout: Float[torch.Tensor, "..."] | float, p_base: Float[torch.Tensor, "..."] | float
) -> Float[torch.Tensor, "..."] | float:
    """Relative change of probability in percent (Map the Flow §2, "Metric"):
    ``(p_knockout − p_base) / p_base × 100``."""
    return (p_knockout - p_base) / p_base * 100.0
