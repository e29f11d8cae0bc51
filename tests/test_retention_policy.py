"""The retention policy value, durations and the retention settings (no I/O)."""

from __future__ import annotations

import pytest

from wr124_session_actor import Config, ConfigError, PruneReport, RetentionPolicy
from wr124_session_actor._retention import format_duration, parse_duration


class TestParseDuration:
    @pytest.mark.parametrize(
        ("text", "seconds"),
        [("90s", 90), ("15m", 900), ("12h", 43200), ("7d", 604800), ("2w", 1209600), ("3600", 3600),
         ("1.5", 1.5), (" 30D ", 2592000), ("0", 0), (45, 45), (2.5, 2.5)],
    )
    def test_reads_units_and_plain_seconds(self, text: str | float, seconds: float) -> None:
        """Durations read as 90s, 15m, 12h, 7d (and weeks), or plain seconds."""
        assert parse_duration(text) == seconds

    @pytest.mark.parametrize("text", ["", "7x", "d", "-5", "1h30m", "inf", "nan", "7 days", True])
    def test_malformed_is_a_value_error(self, text: str) -> None:
        """Anything else is a ValueError."""
        with pytest.raises(ValueError, match="duration"):
            parse_duration(text)

    @pytest.mark.parametrize(("seconds", "text"), [(604800, "1w"), (86400 * 3, "3d"), (7200, "2h"), (90, "90s"),
                                                   (900, "15m"), (1.5, "1.5s")])
    def test_format_round_trips(self, seconds: float, text: str) -> None:
        """format_duration gives the shortest exact form, which parses back to the same seconds."""
        assert format_duration(seconds) == text
        assert parse_duration(text) == seconds


class TestRetentionPolicy:
    def test_default_is_off(self) -> None:
        """No rule is on by default."""
        policy = RetentionPolicy()
        assert not policy.enabled
        assert policy.describe() == "off"

    def test_zero_durations_mean_off(self) -> None:
        """A duration of 0 is the same as None."""
        assert RetentionPolicy(max_age=0, idle_ttl=0) == RetentionPolicy()

    def test_parse_loose_values(self) -> None:
        """parse() takes command-line text and JSON values."""
        policy = RetentionPolicy.parse(keep_last="5", max_age="7d", idle_ttl=3600)
        assert policy == RetentionPolicy(5, 604800.0, 3600.0)
        assert policy.describe() == "keep_last=5 max_age=1w idle_ttl=1h"
        assert RetentionPolicy.parse() == RetentionPolicy()
        assert RetentionPolicy.parse(keep_last=2**63 - 1).keep_last == 2**63 - 1
        assert RetentionPolicy.parse(keep_last=" 123456789012345678 ").keep_last == 123456789012345678

    @pytest.mark.parametrize(
        ("values", "field"),
        [({"keep_last": -1}, "keep_last"), ({"keep_last": "x"}, "keep_last"), ({"keep_last": 1.5}, "keep_last"),
         ({"keep_last": True}, "keep_last"), ({"max_age": "soon"}, "max_age"), ({"idle_ttl": [1]}, "idle_ttl"),
         ({"idle_ttl": -3}, "idle_ttl"),
         # Past a 64-bit count (what schemathesis sent: a huge JSON number reads as a float), or text
         # longer than the 18 digits the OpenAPI schema allows.
         ({"keep_last": 2**63}, "keep_last"), ({"keep_last": 2.385e26}, "keep_last"),
         ({"keep_last": "1" * 19}, "keep_last"), ({"keep_last": "²"}, "keep_last")],
    )
    def test_parse_names_the_bad_field(self, values: dict[str, object], field: str) -> None:
        """A malformed value is a ValueError naming the field."""
        with pytest.raises(ValueError, match=field):
            RetentionPolicy.parse(**values)

    def test_constructor_checks(self) -> None:
        """The constructor refuses negative counts and durations."""
        with pytest.raises(ValueError, match="keep_last"):
            RetentionPolicy(keep_last=-2)
        with pytest.raises(ValueError, match="max_age"):
            RetentionPolicy(max_age=float("inf"))


class TestPruneReport:
    def test_adds_and_round_trips_as_json(self) -> None:
        """Reports add up, and as_dict/from_dict are the endpoint's JSON body."""
        total = PruneReport(1, 10, 100) + PruneReport(0, 5, 50)
        assert total == PruneReport(1, 15, 150, dry_run=False)
        assert total.as_dict() == {"sessions": 1, "documents": 15, "bytes": 150, "dry_run": False}
        assert PruneReport.from_dict(total.as_dict()) == total
        with pytest.raises(ValueError, match="report"):
            PruneReport.from_dict({"sessions": -1, "documents": 0, "bytes": 0, "dry_run": False})


class TestRetentionSettings:
    def test_defaults_keep_everything(self) -> None:
        """KEEP_LAST defaults to 0 (unlimited), the durations to off."""
        config = Config.from_env({})
        assert (config.keep_last, config.max_age, config.idle_ttl) == (0, None, None)
        assert config.retention == RetentionPolicy()

    def test_reads_the_variables(self) -> None:
        """SESSION_STATE_KEEP_LAST, _MAX_AGE and _IDLE_TTL make the policy; durations take units."""
        config = Config.from_env({"SESSION_STATE_KEEP_LAST": "5", "SESSION_STATE_MAX_AGE": "7d",
                                  "SESSION_STATE_IDLE_TTL": "90", "SESSION_STATE_SWEEP_INTERVAL": "15"})
        assert config.retention == RetentionPolicy(5, 604800.0, 90.0)
        assert config.sweep_interval == 15.0

    @pytest.mark.parametrize(
        ("variable", "value"),
        [("SESSION_STATE_KEEP_LAST", "-1"), ("SESSION_STATE_KEEP_LAST", "five"), ("SESSION_STATE_MAX_AGE", "7x"),
         ("SESSION_STATE_IDLE_TTL", "-1d"), ("SESSION_STATE_SWEEP_INTERVAL", "soon")],
    )
    def test_malformed_names_the_variable(self, variable: str, value: str) -> None:
        """A malformed retention setting is a ConfigError naming the variable."""
        with pytest.raises(ConfigError, match=variable):
            Config.from_env({variable: value})

    def test_in_code(self) -> None:
        """Built in code, the fields are checked too."""
        with pytest.raises(ConfigError, match="SESSION_STATE_KEEP_LAST"):
            Config(keep_last=-1)
        assert Config(keep_last=3, max_age=60.0).retention == RetentionPolicy(3, 60.0)
