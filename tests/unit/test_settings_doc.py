"""docs/settings.md is generated from WorkerSettings and must not drift from it."""

from __future__ import annotations

import copy
from pathlib import Path

import pytest

from worker import settings_doc
from worker.settings import SECRET_FIELDS, WorkerSettings, env_name

PAGE = Path(__file__).resolve().parents[2] / "docs" / "settings.md"


def test_the_committed_settings_page_is_what_the_code_renders() -> None:
    committed = PAGE.read_text(encoding="utf-8")
    assert committed == settings_doc.render(), (
        "docs/settings.md differs from worker/settings.py; regenerate it with: "
        f"{settings_doc.REGENERATE}"
    )


def test_the_page_is_the_same_on_any_machine(monkeypatch: pytest.MonkeyPatch) -> None:
    # The defaults that depend on the host, pid or environment render as their rule.
    expected = settings_doc.render()
    monkeypatch.setattr("socket.gethostname", lambda: "another-host")
    monkeypatch.setenv("EMOTION_STREAM_MODEL_REPOSITORY", "/somewhere/else")
    page = settings_doc.render()
    assert page == expected
    assert "another-host" not in page
    assert "/somewhere/else" not in page
    assert "`<hostname>-<pid>`" in page


def test_every_setting_has_a_row_and_secrets_no_option() -> None:
    page = settings_doc.render()
    for name in WorkerSettings.model_fields:
        assert f"| `{name}` | `{env_name(name)}` |" in page
    for name in SECRET_FIELDS:
        assert f"--{name.replace('_', '-')}`" not in page.split(f"| `{name}` |")[1].split("\n")[0]
        assert f"`{env_name(name + '_file')}`" in page


def test_a_setting_without_a_docstring_is_refused() -> None:
    field = copy.copy(WorkerSettings.model_fields["input_topic"])
    field.description = None
    with pytest.raises(ValueError, match="input_topic: every setting needs a docstring"):
        settings_doc.row("input_topic", field)
