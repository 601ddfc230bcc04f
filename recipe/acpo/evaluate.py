"""``python -m recipe.acpo.evaluate``: the evaluation's command, at the path README and ``examples/`` name.

The tool lives in the validation package with the pass-rate pre-pass it shares its parts with:
:mod:`recipe.acpo.validation.evaluate` (Acc@k of a model on benchmark files through verl's validation path).
"""

from __future__ import annotations

import sys

from recipe.acpo.validation.evaluate import main

__all__ = ["main"]

if __name__ == "__main__":
    sys.exit(main())
