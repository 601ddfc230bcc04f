"""Moved: the testbed task now lives with the rest of the testbed, in ``recipe.acpo.testbed.task``.

``python -m data_prep.arithmetic_steps`` and ``import data_prep.arithmetic_steps`` stop with a message naming the
new place (``data_prep`` keeps the generic data tools and never imports the recipe).
"""

import sys

_MOVED = (
    "data_prep.arithmetic_steps moved to recipe.acpo.testbed.task: run `python -m recipe.acpo.testbed.task "
    "--output-dir DIR ...` (the same flags) or `python -m recipe.acpo.testbed data DIR`; import it from "
    "recipe.acpo.testbed.task"
)

if __name__ == "__main__":
    sys.exit(_MOVED)
raise ImportError(_MOVED)
