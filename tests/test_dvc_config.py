"""The committed .dvc/config keeps DVC from phoning home: no usage analytics, no update check
(both would reach the network on every `dvc` command, and the machines here have none)."""

import configparser
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def _core() -> configparser.SectionProxy:
    config = configparser.ConfigParser()
    config.read(REPO / ".dvc/config", encoding="utf-8")
    assert config.has_section("core"), ".dvc/config has no [core] section"
    return config["core"]


def test_update_check_is_off():
    assert _core().getboolean("check_update") is False


def test_analytics_is_off():
    assert _core().getboolean("analytics") is False
