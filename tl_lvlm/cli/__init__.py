"""``tl-lvlm``, the command line: the commands, shared parsing, run directories, model and
image sources, and the report. The top layer: nothing below imports it.

No torch / transformers import at module level: ``--help`` answers at once.
"""

from tl_lvlm.cli.main import build_parser, main

__all__ = ["build_parser", "main"]
