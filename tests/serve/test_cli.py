"""``medisee serve``: arguments to settings, the key from the environment, no model loaded
before the server starts."""

from __future__ import annotations

import pytest

from medisee.cli import main


def test_serve_builds_the_app_without_loading_and_reads_the_key_from_env(
    saved_tiny_model, monkeypatch
):
    import uvicorn

    started = {}

    def fake_run(app, host, port, log_level):
        started.update(app=app, host=host, port=port)

    monkeypatch.setattr(uvicorn, "run", fake_run)
    monkeypatch.setenv("MEDISEE_TEST_KEY", "k3y")
    code = main(
        [
            "serve",
            "--model",
            str(saved_tiny_model),
            "--port",
            "8123",
            "--queue-size",
            "5",
            "--api-key-env",
            "MEDISEE_TEST_KEY",
            "--max-upload-mb",
            "1",
        ]  # fmt: skip
    )
    assert code == 0 and started["host"] == "127.0.0.1" and started["port"] == 8123
    settings = started["app"].state.settings
    assert settings.api_key == "k3y" and settings.queue_size == 5
    assert settings.max_upload_bytes == 2**20
    assert "k3y" not in repr(settings)  # never logged


def test_serve_refuses_an_unset_key_variable_and_a_missing_model(tmp_path, monkeypatch):
    monkeypatch.delenv("MEDISEE_NO_SUCH_KEY", raising=False)
    assert main(["serve", "--model", str(tmp_path), "--api-key-env", "MEDISEE_NO_SUCH_KEY"]) == 2
    assert main(["serve", "--model", str(tmp_path / "missing")]) == 2


@pytest.fixture(scope="module")
def saved_tiny_model(tmp_path_factory):
    from tests.inference.helpers import make_tiny_model

    path = tmp_path_factory.mktemp("model") / "tiny"
    make_tiny_model().save_pretrained(path)
    return path


def test_serve_no_knowledge_flag_reaches_the_settings():
    from medisee.cli import build_parser
    from medisee.serve.cli import settings_from_args

    parser = build_parser()
    assert settings_from_args(parser.parse_args(["serve", "--model", "m"])).knowledge is True
    off = parser.parse_args(["serve", "--model", "m", "--no-knowledge"])
    assert settings_from_args(off).knowledge is False
