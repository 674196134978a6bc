"""settings.py: defaults, CELLSERVE_* over KG_*, explicit values over both, validation."""

from __future__ import annotations

from dataclasses import FrozenInstanceError, fields
from pathlib import Path
from typing import Any

import pytest

from cellserve.exceptions import SettingsError
from cellserve.settings import DEFAULT_PORT, Settings, env_names


def test_defaults() -> None:
    settings = Settings.load({})
    assert settings == Settings()
    assert (settings.host, settings.port, settings.base_url) == ("127.0.0.1", DEFAULT_PORT, "/")
    assert DEFAULT_PORT == 9090
    assert settings.kernels == 1  # Kernel Gateway's prespawn_count None → one kernel
    assert settings.auth_token is None
    assert settings.static_path is None
    assert settings.allow_notebook_download is False
    assert settings.execution == "fast"
    assert settings.mount_prefix == ""


def test_settings_are_frozen_and_with_changes_revalidates() -> None:
    settings = Settings()
    with pytest.raises(FrozenInstanceError):
        settings.port = 1  # type: ignore[misc]
    assert settings.with_changes(port=1234).port == 1234
    with pytest.raises(SettingsError, match="kernels"):
        settings.with_changes(kernels=0)


def test_load_reads_os_environ_when_no_mapping_is_given(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CELLSERVE_PORT", "9191")
    assert Settings.load().port == 9191


@pytest.mark.parametrize(
    ("variable", "option", "value"),
    [
        ("KG_IP", "host", "0.0.0.0"),
        ("KG_PORT", "port", 8888),
        ("KG_BASE_URL", "base_url", "/fake/path"),
        ("KG_PRESPAWN_COUNT", "kernels", 3),
        ("KG_FORCE_KERNEL_NAME", "kernel_name", "python3"),
        ("KG_AUTH_TOKEN", "auth_token", "s3cret"),
        ("KG_ALLOW_ORIGIN", "allow_origin", "*"),
        ("KG_ALLOW_CREDENTIALS", "allow_credentials", True),
        ("KG_MAX_AGE", "max_age", 30),
        ("KG_ALLOW_NOTEBOOK_DOWNLOAD", "allow_notebook_download", True),
        ("KG_STATIC_PATH", "static_path", Path("/srv/public")),
        ("CELLSERVE_TIMEOUT", "timeout", 2.5),
        ("CELLSERVE_TIMEOUT", "timeout", None),
        ("CELLSERVE_MAX_QUEUE", "max_queue", 7),
        ("CELLSERVE_EXECUTION", "execution", "execute"),
    ],
)
def test_environment_variables(variable: str, option: str, value: Any) -> None:
    raw = "none" if value is None else str(value)
    assert getattr(Settings.load({variable: raw}), option) == value


def test_cellserve_variable_beats_kernel_gateway_variable() -> None:
    settings = Settings.load({"KG_PORT": "8888", "CELLSERVE_PORT": "7777"})
    assert settings.port == 7777
    assert Settings.load({"KG_PRESPAWN_COUNT": "4", "CELLSERVE_KERNELS": "2"}).kernels == 2


def test_explicit_value_beats_every_variable() -> None:
    environ = {"KG_PORT": "8888", "CELLSERVE_PORT": "7777", "KG_PRESPAWN_COUNT": "4"}
    settings = Settings.load(environ, port=1234, kernels=2)
    assert (settings.port, settings.kernels) == (1234, 2)


def test_explicit_none_means_unset() -> None:
    assert Settings.load({"KG_PORT": "8888"}, port=None).port == 8888


def test_env_names_strongest_first() -> None:
    assert env_names("kernels") == ("CELLSERVE_KERNELS", "KG_PRESPAWN_COUNT")
    assert env_names("queue_timeout") == ("CELLSERVE_QUEUE_TIMEOUT",)


def test_every_option_has_a_cellserve_variable() -> None:
    for f in fields(Settings):
        assert env_names(f.name)[0] == "CELLSERVE_" + f.name.upper()


@pytest.mark.parametrize(
    ("raw", "value"),
    [
        ("1", True),
        ("true", True),
        ("True", True),
        ("YES", True),
        ("on", True),
        (" true ", True),
        ("0", False),
        ("false", False),
        ("no", False),
        ("off", False),
        ("", False),
    ],
)
def test_bool_parsing(raw: str, value: bool) -> None:
    assert Settings.load({"CELLSERVE_RELOAD": raw}).reload is value


@pytest.mark.parametrize(
    ("environ", "fragment"),
    [
        ({"CELLSERVE_RELOAD": "maybe"}, "CELLSERVE_RELOAD='maybe'"),
        ({"KG_ALLOW_CREDENTIALS": "2"}, "KG_ALLOW_CREDENTIALS"),
        ({"KG_PORT": "eighty"}, "KG_PORT='eighty'"),
        ({"KG_PRESPAWN_COUNT": "two"}, "KG_PRESPAWN_COUNT"),
        ({"KG_PRESPAWN_COUNT": "0"}, "kernels must be at least 1"),
        ({"CELLSERVE_TIMEOUT": "soon"}, "CELLSERVE_TIMEOUT"),
        ({"CELLSERVE_TIMEOUT": "0"}, "timeout must be a positive number"),
        ({"CELLSERVE_QUEUE_TIMEOUT": "-1"}, "queue_timeout must be a positive number"),
        ({"CELLSERVE_MAX_BODY_SIZE": "0"}, "max_body_size must be a positive number"),
        ({"CELLSERVE_EXECUTION": "slow"}, "execution must be"),
        ({"KG_BASE_URL": "api"}, "base_url must start with '/'"),
    ],
)
def test_bad_values_are_settings_errors(environ: dict[str, str], fragment: str) -> None:
    with pytest.raises(SettingsError, match=fragment.replace("(", r"\(")) as caught:
        Settings.load(environ)
    assert fragment in str(caught.value)


def test_bad_explicit_values_are_settings_errors() -> None:
    with pytest.raises(SettingsError, match="kernels"):
        Settings.load({}, kernels=0)
    with pytest.raises(SettingsError, match="execution"):
        Settings(execution="threads")


def test_unknown_option_is_a_settings_error() -> None:
    with pytest.raises(SettingsError, match=r"unknown option.*kernal, prot"):
        Settings.load({}, prot=80, kernal=2)


@pytest.mark.parametrize(
    ("variable", "raw"),
    [
        ("KG_PRESPAWN_COUNT", ""),
        ("CELLSERVE_KERNELS", "none"),
        ("KG_PORT", ""),
        ("CELLSERVE_MAX_BODY_SIZE", "off"),
        ("CELLSERVE_QUEUE_TIMEOUT", "none"),
    ],
)
def test_empty_value_for_a_required_number_is_a_settings_error(variable: str, raw: str) -> None:
    with pytest.raises(SettingsError, match=variable):
        Settings.load({variable: raw})


def test_empty_kg_auth_token_means_no_auth() -> None:
    assert Settings.load({"KG_AUTH_TOKEN": ""}).auth_token is None


def test_empty_static_path_means_no_static_files() -> None:
    assert Settings.load({"KG_STATIC_PATH": ""}).static_path is None


def test_auth_token_file_is_read_once_and_stripped(tmp_path: Path) -> None:
    token_file = tmp_path / "token"
    token_file.write_text("  s3cret\n")
    settings = Settings.load({"CELLSERVE_AUTH_TOKEN_FILE": str(token_file)})
    assert (settings.auth_token, settings.auth_token_file) == ("s3cret", None)
    assert settings.with_changes(port=1).auth_token == "s3cret"


def test_explicit_token_or_file_beats_the_environments(tmp_path: Path) -> None:
    token_file = tmp_path / "token"
    token_file.write_text("from-file")
    env = {"KG_AUTH_TOKEN": "from-env"}
    assert Settings.load(env, auth_token_file=token_file).auth_token == "from-file"
    file_env = {"CELLSERVE_AUTH_TOKEN_FILE": str(token_file)}
    assert Settings.load(file_env, auth_token="explicit").auth_token == "explicit"


@pytest.mark.parametrize(
    ("content", "message"), [(None, "cannot read the auth token file"), ("\n", "is empty")]
)
def test_unusable_auth_token_file_is_a_settings_error(
    tmp_path: Path, content: str | None, message: str
) -> None:
    token_file = tmp_path / "token"
    if content is not None:
        token_file.write_text(content)
    with pytest.raises(SettingsError, match=message):
        Settings(auth_token_file=token_file)


def test_token_and_token_file_together_are_a_settings_error(tmp_path: Path) -> None:
    (tmp_path / "token").write_text("a")
    with pytest.raises(SettingsError, match="not both"):
        Settings(auth_token="b", auth_token_file=tmp_path / "token")
