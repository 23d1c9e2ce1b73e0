"""docs/configuration.md names every setting the service reads, and none it does not."""

from __future__ import annotations

import re

from pydantic import AliasChoices

from app.settings import Settings
from tests.support.server import ROOT

CONFIGURATION = ROOT / "docs" / "configuration.md"
# Named there on purpose although not Settings fields: Compose reads the first three; the
# last chooses the settings file itself, before Settings exists.
NOT_SETTINGS = {
    "SLEEPWELL_PUBLISH_ADDR", "SLEEPWELL_IMAGE", "SLEEPWELL_CPU_IMAGE", "SLEEPWELL_ENV_FILE",
}
VARIABLE = re.compile(r"\bSLEEPWELL_[A-Z0-9_]*[A-Z0-9]\b")


def env_names(field_name: str) -> list[str]:
    """The environment variables that set one Settings field (its aliases, or the prefixed
    field name)."""
    alias = Settings.model_fields[field_name].validation_alias
    if isinstance(alias, AliasChoices):
        return [str(choice) for choice in alias.choices]
    if isinstance(alias, str):
        return [alias]
    return [f"{Settings.model_config.get('env_prefix', '')}{field_name}".upper()]


def test_configuration_doc_every_settings_field_is_named() -> None:
    text = CONFIGURATION.read_text(encoding="utf-8")
    missing = [name for name in Settings.model_fields
               if not any(f"`{env}`" in text for env in env_names(name))]
    assert not missing, f"add these to docs/configuration.md: {missing}"


def test_configuration_doc_names_no_setting_the_app_does_not_have() -> None:
    known = {env for name in Settings.model_fields for env in env_names(name)}
    named = set(VARIABLE.findall(CONFIGURATION.read_text(encoding="utf-8")))
    stale = sorted(named - known - NOT_SETTINGS)
    assert not stale, f"remove or rename in docs/configuration.md: {stale}"
