"""`python -m wan_nvfp4` is the `wan-nvfp4` command."""

import sys

from .cli import main

sys.exit(main())
