"""``python -m momos`` is ``momos``; ``torchrun --nproc_per_node N -m momos train ...`` needs it."""

import sys

from momos.cli import main

sys.exit(main())
