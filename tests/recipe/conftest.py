"""Fixtures shared by the recipe's tests."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest


class _ServerClient:
    """What verl's ``LLMServerClient`` does for one server: drop the arguments the server's signature has not."""

    def __init__(self, server: Any) -> None:
        self.server = server

    async def generate(self, request_id: str, *, prompt_ids: list[int], sampling_params: dict, **kwargs: Any) -> Any:
        return await self.server.generate(prompt_ids=prompt_ids, sampling_params=sampling_params, request_id=request_id)


@pytest.fixture(scope="session")
def server_client() -> Callable[[Any], Any]:
    """``server -> client``: the client an agent loop talks to (its ``server_manager``), for an in-process server."""
    return _ServerClient
