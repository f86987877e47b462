"""Settings: every out-of-range value is refused with one line naming the option or variable."""

from __future__ import annotations

import pytest

from sidecar.config import OPTIONS, Config, ConfigError, env_name, flag_name, from_env, load


@pytest.mark.parametrize(
    ("field", "value", "message"),
    [
        ("queue_size", 0, "--queue-size must be at least 1, got 0"),
        ("queue_size", -1, "--queue-size must be at least 1, got -1"),
        ("port", -1, "--port must be at least 0, got -1"),
        ("port", 65536, "--port must be at most 65535, got 65536"),
        ("ping_interval", -1.0, "--ping-interval must be at least 0, got -1.0"),
        ("ping_interval", float("nan"), "--ping-interval must be a finite number, got nan"),
        ("ping_timeout", float("inf"), "--ping-timeout must be a finite number, got inf"),
        ("write_deadline", 0.0, "--write-deadline must be more than 0, got 0.0"),
        ("handshake_timeout", 0.0, "--handshake-timeout must be more than 0, got 0.0"),
        ("history_size", -5, "--history-size must be at least 0, got -5"),
        ("max_clients", 0, "--max-clients must be at least 1, got 0"),
        ("max_message_size", 0, "--max-message-size must be at least 1, got 0"),
        ("log_level", "loud", "--log-level must be one of debug, info, warning, error"),
    ],
)
def test_out_of_range_settings_are_refused(field, value, message):
    with pytest.raises(ConfigError) as caught:
        Config(**{field: value})
    assert str(caught.value).startswith(message)
    assert caught.value.field == field


def test_the_edges_that_mean_off_or_pick_are_accepted():
    config = Config(port=0, ping_interval=0, ping_timeout=0, history_size=0, history_bytes=0)
    assert config.port == 0 and config.history_size == 0


def test_environment_errors_name_the_variable():
    with pytest.raises(ValueError, match=r"^SIDECAR_QUEUE_SIZE must be at least 1, got 0$"):
        from_env({"SIDECAR_QUEUE_SIZE": "0"})
    with pytest.raises(ValueError, match=r"^SIDECAR_PORT='http' is not a valid int$"):
        from_env({"SIDECAR_PORT": "http"})


def test_environment_values_are_parsed():
    config = from_env(
        {
            "SIDECAR_PING_TIMEOUT": "60",
            "SIDECAR_LOG_LEVEL": "DEBUG",
            "SIDECAR_COMPRESSION": "yes",
            "SIDECAR_ALLOWED_ORIGINS": "http://a.test, http://b.test",
        }
    )
    assert config.ping_timeout == 60.0
    assert config.log_level == "debug"
    assert config.compression is True
    assert config.allowed_origins == ("http://a.test", "http://b.test")


# -- an empty value is refused, for every option, from every source (issue 19 item 2) ----------

FIELDS = sorted(OPTIONS)


@pytest.mark.parametrize("blank", ["", "  "], ids=["empty", "blank"])
@pytest.mark.parametrize("field", FIELDS)
def test_an_empty_variable_is_refused_for_every_option(field: str, blank: str) -> None:
    """``SIDECAR_AUTH=`` (an env-file line, a compose ``${AUTH}``) turned authentication off."""
    var = env_name(field)
    with pytest.raises(ConfigError) as caught:
        load(environ={var: blank})
    assert str(caught.value).startswith(f"{var} is empty: ")
    assert "unset it" in str(caught.value) and caught.value.field == field


@pytest.mark.parametrize("field", FIELDS)
def test_an_empty_app_config_value_or_keyword_is_refused_for_every_option(field: str) -> None:
    var = env_name(field)
    with pytest.raises(ConfigError, match=rf'^app\.config\["{var}"\] is empty: '):
        load(app_config={var: ""}, environ={})
    with pytest.raises(ConfigError, match=rf"^{flag_name(field)} is empty: "):
        load({field: " "}, environ={})


def test_booleans_mean_what_they_say_and_nothing_else() -> None:
    for text, value in [("1", True), ("on", True), ("YES", True), ("0", False), ("off", False)]:
        assert load(environ={"SIDECAR_AUTH": text, "SIDECAR_TOKEN": "t" * 16}).auth is value
    with pytest.raises(ConfigError, match=r"^SIDECAR_AUTH='of' is not a boolean"):
        load(environ={"SIDECAR_AUTH": "of"})
    with pytest.raises(ConfigError, match=r"^--allowed-origins is empty: .*built-in list"):
        load({"allowed_origins": []}, environ={})


# -- a broker URL without a scheme (issue 19 item 13) ------------------------------------------


@pytest.mark.parametrize(
    ("url", "detail"),
    [
        ("localhost:6379", "must be a Redis URL"),
        ("127.0.0.1:6379/0", "must be a Redis URL"),
        ("http://localhost:6379", "must be a Redis URL"),
        ("redis//localhost", "must be a Redis URL"),
        ("redis://localhost:99999", "has a bad port"),
        ("redis://localhost:port", "has a bad port"),
        ("unix://", "names no socket path"),
    ],
)
def test_a_broker_url_the_driver_cannot_take_is_refused(url: str, detail: str) -> None:
    with pytest.raises(ConfigError) as caught:
        load(environ={"SIDECAR_BROKER": url})
    assert str(caught.value).startswith(f"SIDECAR_BROKER {detail}")
    assert repr(url) in str(caught.value)


@pytest.mark.parametrize(
    "url", ["redis://127.0.0.1:6379/0", "rediss://user:pw@cache:6380", "unix:///run/redis.sock"]
)
def test_broker_urls_of_every_scheme_are_accepted(url: str) -> None:
    assert load(environ={"SIDECAR_BROKER": url}).broker == url


# -- sizes written as the option table shows them (issue 19) ---------------------------------------


@pytest.mark.parametrize(
    ("text", "size"),
    [
        ("16MiB", 16 << 20),
        ("16 MiB", 16 << 20),
        ("64 KiB", 64 << 10),
        ("64kib", 64 << 10),
        ("1GiB", 1 << 30),
        ("1.5 MiB", 3 << 19),
        ("65536", 65536),
        ("4096 B", 4096),
    ],
)
def test_sizes_take_the_units_the_option_table_shows(text: str, size: int) -> None:
    assert load(environ={"SIDECAR_MAX_PENDING_BYTES": text}).max_pending_bytes == size
    assert load({"history_bytes": text}, environ={}).history_bytes == size
    assert load(app_config={"SIDECAR_REPLAY_RATE": text}, environ={}).replay_rate == size


def test_every_size_option_takes_its_own_default_as_shown() -> None:
    shown = {name: meta.shown for name, meta in OPTIONS.items() if meta.size}
    assert set(shown) == {
        "max_pending_bytes",
        "max_message_size",
        "max_event_bytes",
        "history_bytes",
        "replay_rate",
    }
    environ = {env_name(name): str(text) for name, text in shown.items()}
    config = load(environ=environ)
    assert all(getattr(config, name) == getattr(Config(), name) for name in shown)


@pytest.mark.parametrize(
    ("text", "detail"),
    [
        ("16MB", "is not a size"),
        ("lots", "is not a size"),
        ("1.5 B", "not a whole number"),
        ("-1MiB", "must be at least 1"),
    ],
)
def test_a_size_that_is_not_one_is_refused_naming_the_forms(text: str, detail: str) -> None:
    with pytest.raises(ConfigError) as caught:
        load(environ={"SIDECAR_MAX_MESSAGE_SIZE": text})
    assert str(caught.value).startswith("SIDECAR_MAX_MESSAGE_SIZE") and detail in str(caught.value)


def test_the_cli_takes_sizes_with_units() -> None:
    from sidecar.cli import build_serve_parser

    args = build_serve_parser().parse_args(["--max-event-bytes", "2MiB"])
    assert args.max_event_bytes == 2 << 20
