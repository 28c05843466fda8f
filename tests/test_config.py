from pathlib import Path

import pytest

from cli.main import main
from musegate.config import FIELDS, ConfigError, describe, load_config


def test_defaults_file_and_env_layering(tmp_path: Path) -> None:
    cfg_file = tmp_path / "musegate.toml"
    cfg_file.write_text('workers = 3\nanalysis_mode = "full"\ndata_dir = "/tmp/x"\n')
    cfg = load_config(cfg_file, env={"MUSEGATE_WORKERS": "5"})
    assert cfg.workers == 5  # environment beats the file
    assert cfg.analysis_mode == "full"  # the file beats the default
    assert cfg.data_dir == "/tmp/x"
    assert cfg.model_threads == 1  # default
    assert cfg.db_path == Path("/tmp/x/musegate.db")


def test_timeouts_are_seconds_with_decimals(tmp_path: Path) -> None:
    cfg_file = tmp_path / "m.toml"
    cfg_file.write_text("upstream_timeout = 7\n")
    cfg = load_config(cfg_file, env={"MUSEGATE_UPSTREAM_CONNECT_TIMEOUT": "2.5"})
    assert (cfg.upstream_timeout, cfg.upstream_connect_timeout) == (7.0, 2.5)
    assert load_config(None, env={}).upstream_timeout == 30.0


def test_section_table_is_accepted(tmp_path: Path) -> None:
    cfg_file = tmp_path / "m.toml"
    cfg_file.write_text('[musegate]\nworkers = 2\n')
    assert load_config(cfg_file, env={}).workers == 2


@pytest.mark.parametrize(
    ("env", "fragment"),
    [
        ({"MUSEGATE_WORKERS": "many"}, "workers = 'many' (from environment MUSEGATE_WORKERS)"),
        ({"MUSEGATE_WORKERS": "0"}, "must be at least 1"),
        ({"MUSEGATE_ANALYSIS_MODE": "quick"}, "analysis_mode = 'quick'"),
        ({"MUSEGATE_COLOUR": "blue"}, "colour (from environment MUSEGATE_COLOUR): unknown"),
        ({"MUSEGATE_UPSTREAM_TIMEOUT": "soon"}, "expected a number of seconds"),
        ({"MUSEGATE_UPSTREAM_TIMEOUT": "0"}, "must be a positive number of seconds"),
        ({"MUSEGATE_UPSTREAM_CONNECT_TIMEOUT": "-1"}, "must be a positive number of seconds"),
        ({"MUSEGATE_UPSTREAM_TIMEOUT": "nan"}, "must be a positive number of seconds"),
        ({"MUSEGATE_UPSTREAM_TIMEOUT": "inf"}, "must be a positive number of seconds"),
    ],
)
def test_bad_values_name_key_and_value(env: dict[str, str], fragment: str) -> None:
    with pytest.raises(ConfigError) as err:
        load_config(None, env=env)
    assert fragment in str(err.value)


def test_bad_file(tmp_path: Path) -> None:
    bad = tmp_path / "bad.toml"
    bad.write_text("workers = [")
    with pytest.raises(ConfigError, match="not valid TOML"):
        load_config(bad, env={})
    with pytest.raises(ConfigError, match="does not exist"):
        load_config(tmp_path / "missing.toml", env={})


def test_secret_fields_are_masked(capsys: pytest.CaptureFixture[str]) -> None:
    env = {"MUSEGATE_UPSTREAM_PASSWORD": "hunter2", "MUSEGATE_LLM_API_KEY": "sk-secret",
           "MUSEGATE_UPSTREAM_USER": "musegate"}
    shown = describe(load_config(None, env=env))
    assert shown["upstream_password"] == "***" and shown["llm_api_key"] == "***"
    assert shown["upstream_api_key"] == ""  # unset secrets show as unset
    assert shown["upstream_user"] == "musegate"  # not a secret
    secret_names = {f.name for f in FIELDS if f.secret}
    assert secret_names == {"upstream_password", "upstream_api_key", "llm_api_key", "api_key"}


def test_cli_config_reports_errors(capsys: pytest.CaptureFixture[str],
                                   monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MUSEGATE_WRITE_BATCH", "-4")
    assert main(["config"]) == 2
    assert "write_batch = '-4'" in capsys.readouterr().err
    monkeypatch.delenv("MUSEGATE_WRITE_BATCH")
    monkeypatch.setenv("MUSEGATE_WORKERS", "7")
    assert main(["config", "--json"]) == 0
    assert '"workers": 7' in capsys.readouterr().out
