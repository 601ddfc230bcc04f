"""``python -m recipe.acpo.pass_rate``: the pass-rate pre-pass's command (§6), at the path its users name.

The tool lives in the validation package with the evaluation it shares its parts with:
:mod:`recipe.acpo.validation.pass_rate` (p(q) of each training prompt through verl's validation path, written to
``extra_info.pass_rate``).
"""

from __future__ import annotations

import sys

from recipe.acpo.validation.pass_rate import main

__all__ = ["main"]

if __name__ == "__main__":
    sys.exit(main())
