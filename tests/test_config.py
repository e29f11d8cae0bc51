"""Configuration from the environment."""

from __future__ import annotations

import dataclasses
from typing import Any

import pytest

from wr124_session_actor import ActorSystem, Config, ConfigError, SessionStateManager


class TestFromEnv:
    def test_defaults_follow_the_original(self) -> None:
        """With no variables set: disabled, localhost:8000, project 'default', 10 s timeout."""
        config = Config.from_env({})
        assert config.enabled is False
        assert config.api_url == "http://localhost:8000"
        assert config.project_id == "default"
        assert config.timeout == 10.0
        assert config.api_key is None

    def test_reads_the_original_variables(self) -> None:
        """The original variables and our SESSION_STATE_* knobs are read."""
        config = Config.from_env({
            "ENABLE_SESSION_STATE_UPLOAD": "true",
            "SESSION_API_URL": "sqlite:///x.db",
            "DEFAULT_PROJECT_ID": "p1",
            "SESSION_STATE_TIMEOUT": "2.5",
            "SESSION_API_KEY": "k",
            "SESSION_STATE_DEBOUNCE": "0.2",
            "SESSION_STATE_MAX_BATCH": "7",
            "SESSION_STATE_KEEP": "all",
            "SESSION_STATE_HTTP_CLIENTS": "httpx, urllib",
        })
        assert (config.enabled, config.api_url, config.project_id, config.timeout, config.api_key) == (
            True, "sqlite:///x.db", "p1", 2.5, "k")
        assert (config.debounce, config.max_batch, config.keep) == (0.2, 7, "all")
        assert config.http_clients == ("httpx", "urllib")

    @pytest.mark.parametrize(
        ("variable", "value"),
        [
            ("ENABLE_SESSION_STATE_UPLOAD", "maybe"),
            ("SESSION_STATE_TIMEOUT", "ten"),
            ("SESSION_STATE_TIMEOUT", "0"),
            ("SESSION_STATE_TIMEOUT", "-1"),
            ("SESSION_STATE_TIMEOUT", "inf"),
            ("SESSION_API_URL", "ftp://host"),
            ("SESSION_API_URL", "sqlite://relative.db"),
            ("SESSION_STATE_MAX_BATCH", "0"),
            ("SESSION_STATE_MAX_BATCH", "1.5"),
            ("SESSION_STATE_KEEP", "some"),
            ("SESSION_STATE_HTTP_CLIENTS", "requests"),
            ("DEFAULT_PROJECT_ID", "a/b"),
            # A dot segment: aiohttp's URL normalising takes it out of the path (every call was a 404).
            ("DEFAULT_PROJECT_ID", "."),
            ("DEFAULT_PROJECT_ID", ".."),
            ("SESSION_STATE_DEBOUNCE", "nan"),
            # URLs without a host or with a bad port: every call FAILED (under trio with a traceback).
            ("SESSION_API_URL", "http://"),
            ("SESSION_API_URL", "https:///path"),
            ("SESSION_API_URL", "http://127.0.0.1:notaport"),
            ("SESSION_API_URL", "http://127.0.0.1:70000"),
            ("SESSION_API_URL", "http://127.0.0.1:0"),
            ("SESSION_API_URL", "http://[::1"),
            # The API's paths go after the URL: a query or fragment made every call a 404.
            ("SESSION_API_URL", "http://127.0.0.1:8000/?tenant=1"),
            ("SESSION_API_URL", "http://127.0.0.1:8000/api#x"),
            ("SESSION_API_URL", "http://127.0.0.1:8000/?"),
            # Tabs and newlines, which urlsplit drops before it looks, and spaces: every call failed.
            ("SESSION_API_URL", "http://127.0.0.1:8000/a\tb"),
            ("SESSION_API_URL", "http://127.0.\n0.1:8000"),
            ("SESSION_API_URL", "http://127.0.0.1:8000/ x"),
            # Header values: a control character failed every call ("unexpected error: ValueError").
            ("SESSION_API_KEY", "sec\nret"),
            ("SESSION_API_KEY", "sec\x7fret"),
            ("DEFAULT_PROJECT_ID", "p\x01"),
        ],
    )
    def test_malformed_value_names_the_variable(self, variable: str, value: str) -> None:
        """A malformed value raises ConfigError (a ValueError) whose message names the variable."""
        with pytest.raises(ConfigError, match=variable):
            Config.from_env({variable: value})

    @pytest.mark.parametrize(
        ("variable", "value", "expected"),
        [
            # The range a variable takes, not another one: "0" is no more a timeout than "-1".
            ("SESSION_STATE_TIMEOUT", "-1", "SESSION_STATE_TIMEOUT must be a positive number"),
            ("SESSION_STATE_TIMEOUT", "0", "SESSION_STATE_TIMEOUT must be a positive number"),
            ("SESSION_STATE_DEBOUNCE", "-0.5", "SESSION_STATE_DEBOUNCE must be a number >= 0"),
            ("SESSION_STATE_DEBOUNCE", "inf", "SESSION_STATE_DEBOUNCE must be a finite number of seconds"),
            # More than a 64-bit column holds: retention logged an OverflowError at every write, and never ran.
            ("SESSION_STATE_KEEP_LAST", "99999999999999999999", "SESSION_STATE_KEEP_LAST must be a whole number"),
        ],
    )
    def test_out_of_range_message_states_the_range(self, variable: str, value: str, expected: str) -> None:
        """An out-of-range value's message states the range that variable takes."""
        with pytest.raises(ConfigError) as caught:
            Config.from_env({variable: value})
        assert str(caught.value).startswith(expected)

    def test_numbers_past_what_a_float_holds_are_config_errors(self) -> None:
        """A duration given in code as an int too large for a float is a ConfigError naming the setting
        (it was an OverflowError)."""
        with pytest.raises(ConfigError, match="SESSION_STATE_IDLE_TTL"):
            Config(idle_ttl=10**400)
        with pytest.raises(ConfigError, match="SESSION_STATE_TIMEOUT"):
            Config(timeout=10**400)

    def test_a_switch_set_to_nothing_is_its_default(self) -> None:
        """An empty switch is its default: upload stays off (as in the original), and the two switches that are
        on by default stay on (an empty SKIP_UNCHANGED or MIGRATE turned them off silently)."""
        config = Config.from_env({"ENABLE_SESSION_STATE_UPLOAD": "", "SESSION_STATE_SKIP_UNCHANGED": " ",
                                  "SESSION_STATE_MIGRATE": ""})
        assert (config.enabled, config.skip_unchanged, config.migrate) == (False, True, True)

    def test_every_variable_set_to_nothing_is_its_default(self) -> None:
        """A variable set to nothing (or blanks) is unset, whatever its kind (an empty SESSION_API_URL, TIMEOUT or
        KEEP was a ConfigError, an empty PG_PREPARE_THRESHOLD meant "never prepare")."""
        variables = ["ENABLE_SESSION_STATE_UPLOAD", "SESSION_API_URL", "DEFAULT_PROJECT_ID", "SESSION_STATE_TIMEOUT",
                     "SESSION_API_KEY", "SESSION_STATE_SPOOL", "SESSION_STATE_KEEP", "SESSION_STATE_HTTP_CLIENTS",
                     "SESSION_STATE_MAX_AGE", "SESSION_STATE_IDLE_TTL", "SESSION_STATE_PG_PREPARE_THRESHOLD"]
        variables += ["SESSION_STATE_" + f.name.upper() for f in dataclasses.fields(Config)
                      if f.type in ("int", "float") and f.name != "timeout"]
        for blank in ("", "  "):
            assert Config.from_env(dict.fromkeys(variables, blank)) == Config(enabled=False)

    def test_a_key_may_hold_a_tab(self) -> None:
        """A header value may hold a tab (HTTP allows it): such a key is taken."""
        assert Config.from_env({"SESSION_API_KEY": "a\tb"}).api_key == "a\tb"

    @pytest.mark.parametrize("key", [" lead", "trail ", "trail\t", "\tlead"])
    def test_a_key_with_whitespace_at_its_ends_is_refused(self, key: str) -> None:
        """No header value keeps whitespace at its ends: such a key given in code is a ConfigError (it was taken,
        and every call was 401); from the environment it is stripped, as every value is."""
        with pytest.raises(ConfigError, match="SESSION_API_KEY"):
            Config(api_key=key)
        assert Config.from_env({"SESSION_API_KEY": key}).api_key == key.strip()

    def test_keep_takes_any_case(self) -> None:
        """``SESSION_STATE_KEEP=ALL`` is ``all``, as the switches take ``TRUE``."""
        assert Config.from_env({"SESSION_STATE_KEEP": "ALL"}).keep == "all"

    def test_an_override_replaces_its_variable(self) -> None:
        """A setting given to ``from_env`` is not read from the environment, so a malformed variable it replaces
        is no error (the command line's ``--url`` failed on a malformed SESSION_API_URL)."""
        config = Config.from_env({"SESSION_API_URL": "localhost:8000", "SESSION_STATE_TIMEOUT": "soon"},
                                 api_url="memory://", timeout=3.0)
        assert (config.api_url, config.timeout) == ("memory://", 3.0)

    def test_manager_fails_fast_at_construction(self, monkeypatch: pytest.MonkeyPatch) -> None:
        """A bare manager reads the environment in its constructor and fails there."""
        monkeypatch.setenv("SESSION_STATE_TIMEOUT", "soon")
        with pytest.raises(ConfigError, match="SESSION_STATE_TIMEOUT"):
            SessionStateManager("s")
        assert issubclass(ConfigError, ValueError)

    @pytest.mark.parametrize("url", ["http://localhost:8000", "https://api.example.com/v1/", "http://[::1]:8080",
                                     "http://user:secret@127.0.0.1:80/base"])
    def test_http_urls_with_a_host_are_taken(self, url: str) -> None:
        """A host, an optional port and path: as before."""
        assert Config.from_env({"SESSION_API_URL": url}).api_url == url

    def test_store_kind(self) -> None:
        """The URL scheme picks the store."""
        assert Config(api_url="http://h:1").store_kind == "http"
        assert Config(api_url="sqlite:////tmp/a.db").store_kind == "sqlite"
        assert Config(api_url="memory://").store_kind == "memory"


class TestInCode:
    def test_code_config_is_enabled(self) -> None:
        """A Config built in code opts in."""
        assert Config().enabled is True

    def test_replace_validates(self) -> None:
        """``replace`` validates like the constructor."""
        with pytest.raises(ConfigError, match="SESSION_STATE_MAX_BATCH"):
            Config().replace(max_batch=0)

    @pytest.mark.parametrize(("changes", "variable"), [
        ({"timeout": "5"}, "SESSION_STATE_TIMEOUT"),
        ({"debounce": None}, "SESSION_STATE_DEBOUNCE"),
        ({"max_batch": 2.5}, "SESSION_STATE_MAX_BATCH"),
        ({"max_batch": True}, "SESSION_STATE_MAX_BATCH"),
        ({"retries": "4"}, "SESSION_STATE_RETRIES"),
        ({"keep_last": 1.5}, "SESSION_STATE_KEEP_LAST"),
        ({"pg_max_lifetime": "1h"}, "SESSION_STATE_PG_MAX_LIFETIME"),
        ({"project_id": 5}, "DEFAULT_PROJECT_ID"),
        ({"api_url": None}, "SESSION_API_URL"),
        ({"http_clients": "aiohttp"}, "SESSION_STATE_HTTP_CLIENTS"),
    ])
    def test_a_value_of_the_wrong_type_names_its_variable(self, changes: dict[str, Any], variable: str) -> None:
        """A value of the wrong type given in code is a ConfigError naming the variable, like a malformed
        one from the environment (text for a number raised TypeError from a comparison; 2.5 documents a batch,
        and a string of client names, were taken)."""
        with pytest.raises(ConfigError, match=variable):
            Config(**changes)

    def test_numbers_of_other_kinds_are_taken(self) -> None:
        """An int where seconds are asked, or a float subclass (numpy's), is a number."""

        class Seconds(float):
            pass

        assert Config(timeout=5, debounce=Seconds(0.01)).debounce == 0.01

    def test_a_url_given_for_the_config_is_a_type_error(self) -> None:
        """The store's URL given where the Config goes says how to make one (it raised AttributeError:
        'str' object has no attribute 'max_batch')."""
        with pytest.raises(TypeError, match=r"config must be a Config or None, got str .*Config\(api_url="):
            ActorSystem("memory://")  # type: ignore[arg-type]
        with pytest.raises(TypeError, match="config must be a Config or None, got str"):
            SessionStateManager("s", "memory://")  # type: ignore[arg-type]
