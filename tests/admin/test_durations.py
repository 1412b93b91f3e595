from __future__ import annotations

import pytest

from resolver.durations import parse_duration
from resolver.errors import ValidationError


@pytest.mark.parametrize(
    ("text", "seconds"),
    [
        ("90", 90),
        ("30s", 30),
        ("30m", 1_800),
        ("1h", 3_600),
        ("7d", 604_800),
        ("2w", 1_209_600),
        (" 1H ", 3_600),
        (45, 45),
    ],
)
def test_durations(text: str | int, seconds: int) -> None:
    assert parse_duration(text) == seconds


@pytest.mark.parametrize("text", ["", "h", "1.5h", "-1h", "1y", "1 h 2m", "soon", True])
def test_bad_durations(text: str) -> None:
    with pytest.raises(ValidationError):
        parse_duration(text)
