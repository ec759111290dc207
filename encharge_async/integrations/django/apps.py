"""The Django app: `"encharge_async.integrations.django"` in `INSTALLED_APPS`.

It adds system checks of `settings.ENCHARGE` (`manage.py check`), so that a bad
configuration shows at deploy time rather than at the first event.
"""

from __future__ import annotations

from typing import Any

from django.apps import AppConfig
from django.core import checks
from django.core.exceptions import ImproperlyConfigured

from ..._exceptions import ConfigurationError
from ..._sync import Encharge
from . import SETTING, encharge_options

__all__ = ["check_settings"]


# Private: Django finds it by its base class, and Django's lack of type information would
# make it the one untyped name of this package's public interface.
class _EnchargeConfig(AppConfig):  # type: ignore[misc]  # Django ships no types
    """Registers `check_settings` with Django's system checks."""

    name = "encharge_async.integrations.django"
    label = "encharge_async"
    verbose_name = "Encharge"

    def ready(self) -> None:
        checks.register(check_settings)


def check_settings(app_configs: Any = None, **kwargs: Any) -> list[checks.CheckMessage]:
    """Check that `settings.ENCHARGE` and the environment make a valid client.

    `encharge_async.E001`: the setting is malformed; `encharge_async.E002`: the client
    refuses the configuration (no write key, a bad value). Silence E002 with
    `SILENCED_SYSTEM_CHECKS` where no key is set on purpose (a CI job that runs
    `migrate`).
    """
    try:
        options = encharge_options()
    except ImproperlyConfigured as exc:
        return [checks.Error(str(exc), id="encharge_async.E001")]
    try:
        Encharge(**options)  # starts nothing: only validates
    except ConfigurationError as exc:
        return [
            checks.Error(
                f"the Encharge client refuses its configuration: {exc}",
                hint=f"see settings.{SETTING} and the ENCHARGE_* environment variables",
                id="encharge_async.E002",
            )
        ]
    return []
