"""Fixtures for tests against the real thing live in tests/support; they are
registered here so any test module can ask for them by name."""

from tests.support.netns_fixtures import *  # noqa: F403
from tests.support.postgres_fixtures import *  # noqa: F403
