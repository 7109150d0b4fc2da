"""``python -m selhn`` (and ``torchrun -m selhn``) runs the command line."""

import sys

from selhn.cli import main

sys.exit(main())
