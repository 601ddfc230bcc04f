"""Start-up objects kept out of the garbage collector's full passes (``gc.freeze``) in the recipe's processes.

A long-lived process of a run (the trainer's task runner, an agent-loop worker, the training worker) holds about half a
million objects from its start-up, from torch, transformers, verl, Ray and the model, that live as long as it does.
Python's full collection of its oldest generation walks every one of them. On the 2-core testbed each took 0.25-0.36 s
(in 30 s of training: two in the training worker, one in the task runner, one in an agent-loop worker), stalling
whatever the step was waiting on. A process that calls :func:`freeze_startup_objects` once it is built moves
everything alive at that moment into a permanent generation that collections skip. Objects created later are
collected as before. Serving engines do the same after start-up (vLLM, SGLang).

Where it is called: the task runner (``recipe.acpo.main_acpo``) in every run, the training worker when the trainer is
ACPO's (``recipe.acpo.acpo_worker``), and the agent-loop workers where ``ACPOAgentLoopManager`` starts them (the CPU
preset; ``recipe.acpo.agent_loop_worker``). verl's own processes (TransferQueue, the load balancer, the reward workers)
and the CPU rollout server are left as they are.

What it costs: a start-up object that later becomes unreachable cyclic garbage is never freed, with what it refers to
then (objects freed by reference counting are freed as before): a one-off amount, since later objects are not frozen.

``ACPO_GC_FREEZE=0`` in the launcher's environment turns it off (``1``, the default, on); the entry point checks the
value before Ray starts and passes it on to every worker (docs/speed/README.md has the measurement).
"""

from __future__ import annotations

import gc
import logging
import os
from collections.abc import Mapping

__all__ = ["GC_FREEZE_ENV", "freeze_startup_objects", "gc_freeze_enabled"]

GC_FREEZE_ENV = "ACPO_GC_FREEZE"

logger = logging.getLogger(__name__)
logger.setLevel(os.getenv("VERL_LOGGING_LEVEL", "INFO"))


def gc_freeze_enabled(environ: Mapping[str, str] = os.environ) -> bool:
    """Whether ``ACPO_GC_FREEZE`` (default ``1``) asks for :func:`freeze_startup_objects`.

    Raises:
        ValueError: a value other than ``0`` or ``1``, naming the variable.
    """
    value = environ.get(GC_FREEZE_ENV, "1").strip()
    if value not in ("0", "1"):
        raise ValueError(f"{GC_FREEZE_ENV}={value!r}: set 0 (off) or 1 (on, the default)")
    return value == "1"


def freeze_startup_objects(process: str, environ: Mapping[str, str] = os.environ) -> bool:
    """Collect the start-up's garbage, then freeze every object still alive (``gc.freeze``); returns whether it froze.

    ``process`` names the caller in the log line. Off with ``ACPO_GC_FREEZE=0``.
    """
    if not gc_freeze_enabled(environ):
        return False
    gc.collect()
    gc.freeze()
    logger.info("%s: %d start-up objects frozen out of garbage collection", process, gc.get_freeze_count())
    return True
