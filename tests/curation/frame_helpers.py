"""Plain helpers shared by the curation tests (pytest puts this folder on sys.path)."""

import numpy as np


def random_frames(seed: int, n: int = 3) -> list[np.ndarray]:
    """n random RGB frames of 128x72."""
    rng = np.random.default_rng(seed)
    return [rng.integers(0, 256, (72, 128, 3), dtype=np.uint8) for _ in range(n)]
