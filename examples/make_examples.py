"""Write the example case files shipped in examples/ (deterministic)."""

from pathlib import Path

import numpy as np

from difftest import Case

HERE = Path(__file__).parent


def main() -> None:
    rng = np.random.default_rng(2026)
    f32 = lambda *s: rng.standard_normal(s).astype(np.float32).astype(np.float64)  # noqa: E731
    # A small layer with stride 2 and padding 1, batch 2, non-square image.
    Case(f32(2, 3, 9, 7), f32(4, 3, 3, 3), f32(2, 4, 5, 4), stride=2, padding=1).save(HERE / "stride2_pad1.npz")
    # Structured cancellation: +2^24 and -2^24 next to each other among quarter-integers.
    # The spec's sequential fold cancels them at once; numpy's pairwise (8-way unrolled) sum
    # adds 2^24 to partial sums of small terms and rounds them away: beyond the TorchLean
    # bound (certified for the sequential order), within the order-free bound -> "order".
    quarters = [2, 3, 3, 3, 2, 3, 3, 2, 3, 3, 4, 4, 3, 4, 2, 2, 2, 3, 3, 3, 2, 4, 2, 2, 4, 3]
    d = np.array(quarters, dtype=np.float64) / 4
    d[5], d[6] = 2.0**24, -(2.0**24)
    n = d.size
    Case(np.ones((1, 1, 1, n)), np.ones((1, 1, 1, 1)), d.reshape(1, 1, 1, n)).save(HERE / "cancellation.npz")

if __name__ == "__main__":
    main()
