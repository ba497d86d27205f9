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
    # Structured cancellation: large terms that cancel early in the spec's fold order,
    # followed by many small ones. Sequential order keeps the small terms; blocked orders may not.
    x = np.ones((1, 1, 16, 16))
    d = np.full((1, 1, 16, 16), 2.0**-20)
    d[0, 0, 0, 0], d[0, 0, 0, 1] = 2.0**20, -(2.0**20)
    Case(x, np.ones((1, 1, 1, 1)), d, stride=1, padding=0).save(HERE / "cancellation.npz")


if __name__ == "__main__":
    main()
