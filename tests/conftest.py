"""Fixtures shared by several test modules."""

from __future__ import annotations

from collections.abc import AsyncIterator

import aiohttp
import pytest


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    """An aiohttp client session for talking to the stack's local ports."""
    async with aiohttp.ClientSession() as session:
        yield session
