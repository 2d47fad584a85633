"""A sparsity as text that never claims more than it is.

Tables show a sparsity next to thresholds ("best certified at >= 95 %"), so rounding
0.94995 up to "95.00%" would put a candidate visibly on the wrong side of one. Here the
percentage is cut, never rounded up. A value within ``LEVEL_TOLERANCE`` below a level
counts as reaching it, as in ``certevo.search.loop.best_at_levels``: both absorb the last-bit
error of ``1 - kept / total``.
"""

from __future__ import annotations

import math

#: How far below a sparsity level a value may be (float error) and still count as at it.
LEVEL_TOLERANCE = 1e-12


def format_sparsity(sparsity: float | None, decimals: int = 2) -> str:
    """``sparsity`` (a share in [0, 1]) as a percentage with ``decimals`` places, cut
    rather than rounded: 0.94995 -> ``"94.99%"``, 0.95 -> ``"95.00%"``; None -> ``"n/a"``."""
    if sparsity is None:
        return "n/a"
    scale = 10 ** (decimals + 2)
    cut = math.floor((float(sparsity) + LEVEL_TOLERANCE) * scale)
    return f"{cut / 10 ** decimals:.{decimals}f}%"


__all__ = ["LEVEL_TOLERANCE", "format_sparsity"]
