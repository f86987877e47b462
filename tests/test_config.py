"""Settings: every out-of-range value is refused with one line naming the option or variable."""

from __future__ import annotations

import pytest

from sidecar.config import Config, ConfigError, from_env


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
