"""Where Hydra finds the recipe's configs: ``recipe/acpo/config`` and, below them, verl's packaged trainer configs.

The recipe's configs build on verl 0.9.1's packaged ``ppo_trainer`` (``pkg://verl.trainer.config``). A
``hydra.searchpath`` line in a YAML file is honoured only in the primary config, which would forbid one recipe config
(the CPU preset) from including another; so verl's configs are put on the search path by a Hydra search-path plugin,
registered when this module is imported, and it applies to every config composed in this process.

Whoever composes a recipe config imports this module first: the entry point (``recipe.acpo.main_acpo``), the
validation pass (``recipe.acpo.validation.command``) and the tests that compose configs, without importing the trainer.
"""

from __future__ import annotations

from pathlib import Path

from hydra.core.config_search_path import ConfigSearchPath
from hydra.core.plugins import Plugins
from hydra.plugins.search_path_plugin import SearchPathPlugin

__all__ = ["CONFIG_DIR", "VERL_CONFIG_SEARCH_PATH", "VerlConfigSearchPath"]

CONFIG_DIR = Path(__file__).resolve().parent / "config"
VERL_CONFIG_SEARCH_PATH = "pkg://verl.trainer.config"


class VerlConfigSearchPath(SearchPathPlugin):
    """Puts verl's packaged trainer configs on Hydra's search path, so the recipe's configs can build on them."""

    def manipulate_search_path(self, search_path: ConfigSearchPath) -> None:
        search_path.append(provider="verl", path=VERL_CONFIG_SEARCH_PATH)


Plugins.instance().register(VerlConfigSearchPath)
