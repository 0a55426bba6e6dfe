"""The service's retention settings (pipelines/retention.py ``RetentionSettings.from_env``), pure."""

from __future__ import annotations

import pytest

from pipelines.retention import DAY, RetentionConfigError, RetentionSettings


@pytest.mark.parametrize(("env", "field", "seconds"), [
    ({}, "deliveries_s", 30 * DAY),
    ({}, "statuses_s", 30 * DAY),
    ({}, "sources_s", 7 * DAY),
    ({}, "mirror_idle_s", 30 * DAY),
    ({}, "service_logs_s", 7 * DAY),
    ({}, "every_s", 600.0),
    ({"SANDPIT_DELIVERY_RETENTION": "7d"}, "deliveries_s", 7 * DAY),
    ({"SANDPIT_DELIVERY_RETENTION": "0"}, "deliveries_s", 0.0),
    ({"SANDPIT_STATUS_RETENTION": "12h"}, "statuses_s", 12 * 3600.0),
    ({"SANDPIT_SOURCE_RETENTION": "1 day"}, "sources_s", DAY),
    ({"SANDPIT_MIRROR_IDLE": "0"}, "mirror_idle_s", 0.0),
    ({"SANDPIT_SERVICE_LOG_RETENTION": "3600"}, "service_logs_s", 3600.0),
    ({"SANDPIT_GC_EVERY": "1m"}, "every_s", 60.0),
])
def test_settings_from_the_environment(env: dict[str, str], field: str, seconds: float) -> None:
    """Defaults, durations in any of the language's forms, and 0 (keep for good)."""
    assert getattr(RetentionSettings.from_env(env), field) == seconds


@pytest.mark.parametrize(("env", "message"), [
    ({"SANDPIT_DELIVERY_RETENTION": "3d"}, "SANDPIT_DELIVERY_RETENTION='3d' is under a week"),
    ({"SANDPIT_STATUS_RETENTION": "soon"}, "SANDPIT_STATUS_RETENTION='soon': "),
    ({"SANDPIT_MIRROR_IDLE": "-1d"}, "SANDPIT_MIRROR_IDLE='-1d': "),
])
def test_bad_settings_are_refused_by_name(env: dict[str, str], message: str) -> None:
    """A value that would break replay protection, or that is not a duration, names its variable."""
    with pytest.raises(RetentionConfigError) as caught:
        RetentionSettings.from_env(env)
    assert str(caught.value).startswith(message)
