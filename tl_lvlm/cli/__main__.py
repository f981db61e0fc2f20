"""``python -m tl_lvlm.cli``."""

import sys

from tl_lvlm.cli.main import main

sys.exit(main())
