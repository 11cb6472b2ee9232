"""`python -m avvp` (also what `torchrun -m avvp` runs)."""

import sys

from avvp.cli import main

sys.exit(main())
