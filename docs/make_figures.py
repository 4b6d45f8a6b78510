"""Draw the README's figures with momos's own plotting: ``python docs/make_figures.py``.

``docs/mosaic.png``: an 8×16 weight matrix, s=4, k=4 motifs with motif 0 forced to zero.
"""

from pathlib import Path

import torch

from momos import MoMosConfig
from momos.figures import plot_mosaic

DOCS = Path(__file__).resolve().parent


def main() -> None:
    weight = torch.randn(8, 16, generator=torch.Generator().manual_seed(0))
    figure = plot_mosaic(weight, MoMosConfig(block_size=4, num_motifs=4, force_zero=True))
    figure.savefig(DOCS / "mosaic.png", dpi=100)
    print(f"wrote {DOCS / 'mosaic.png'}")


if __name__ == "__main__":
    main()
