"""`python -m avvp` (also what `torchrun -m avvp` runs)."""

import os
import sys

from avvp.cli import main

status = main()
if int(os.environ.get("WORLD_SIZE", "1")) > 1:
    # Under torchrun, leave without the interpreter's clean-up: the process group's C++ threads can abort it at
    # exit ('terminate called without an active exception'), which would replace this process's status.
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(status)
sys.exit(status)
