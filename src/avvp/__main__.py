"""`python -m avvp` (also what `torchrun -m avvp` runs)."""

import os
import sys

from avvp.cli import main

status = main()
if int(os.environ.get("WORLD_SIZE", "1")) > 1:  # under torchrun (imported only there: it imports torch)
    from avvp.distributed import leave

    leave(status)
sys.exit(status)
