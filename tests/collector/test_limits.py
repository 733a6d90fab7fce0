"""Source allowlist and frame-rate limits: pure bookkeeping, tested with explicit times."""

from __future__ import annotations

from pathlib import Path

import pytest

from collector.allowlist import parse_allowlist
from collector.app import Daemon
from collector.config import ConfigError, from_dict
from collector.ingest.health import LimitsHealth
from collector.ingest.limits import Rate, SourceLimiter, TokenBucket, take_all


def test_allowlist_takes_addresses_and_networks_of_both_families() -> None:
    allow = parse_allowlist(["10.0.0.0/8", "192.0.2.7", "::1", "2001:db8::/32"])
    assert allow.active
    assert allow.permits("10.200.3.4")
    assert allow.permits("192.0.2.7")
    assert not allow.permits("192.0.2.8")
    assert allow.permits("::1")
    assert allow.permits("2001:db8::42")
    assert not allow.permits("2001:db9::1")
    # a dual-stack socket reports IPv4 peers as mapped IPv6 addresses
    assert allow.permits("::ffff:10.1.1.1")
    assert not allow.permits("::ffff:11.1.1.1")
    assert not allow.permits("not an address")
    assert allow.permits("10.200.3.4")  # from the cache, same verdict


def test_empty_allowlist_permits_everyone() -> None:
    allow = parse_allowlist([])
    assert not allow.active
    assert allow.permits("203.0.113.9")


@pytest.mark.parametrize(
    ("entry", "says"),
    [
        ("10.0.0.1/8", "host bits set"),
        ("localhost", "does not appear to be"),
        ("10.0.0.0/33", "10.0.0.0/33"),
        ("", "''"),
    ],
)
def test_a_bad_allowlist_entry_is_named(entry: str, says: str) -> None:
    with pytest.raises(ValueError, match="is not an IP address or network") as raised:
        parse_allowlist(["127.0.0.1", entry])
    assert repr(entry) in str(raised.value)
    assert says in str(raised.value)


def test_bucket_allows_a_burst_then_the_rate() -> None:
    bucket = TokenBucket(Rate(10, burst=5), now=0.0)
    assert bucket.take(8, 0.0) == 5  # the burst
    assert bucket.take(1, 0.0) == 0
    assert bucket.take(10, 0.5) == 5  # half a second at 10/s
    assert bucket.take(100, 100.0) == 5  # never more than the burst, however long the pause


def test_burst_zero_means_one_seconds_worth() -> None:
    assert Rate(250.0).burst == 250.0
    assert Rate(0.5).burst == 1.0  # at least one frame
    assert not Rate(0).enabled


def test_disabled_rate_lets_everything_through() -> None:
    bucket = TokenBucket(Rate(0), now=0.0)
    assert bucket.take(10**9, 0.0) == 10**9


def test_rate_rejects_negative_values() -> None:
    with pytest.raises(ValueError, match=">= 0"):
        Rate(-1)


def test_take_all_spends_what_the_emptiest_allows() -> None:
    wide = TokenBucket(Rate(100), now=0.0)
    narrow = TokenBucket(Rate(3), now=0.0)
    assert take_all([wide, narrow], 10, 0.0) == 3
    assert wide.available(0.0) == 97
    assert narrow.available(0.0) == 0


def test_sources_are_limited_separately() -> None:
    limiter = SourceLimiter(per_s=10, burst=10)
    assert limiter.take("10.0.0.1", 50, 0.0) == 10
    assert limiter.take("10.0.0.1", 5, 0.0) == 0
    assert limiter.take("10.0.0.2", 5, 0.0) == 5
    assert limiter.take("10.0.0.1", 5, 0.3) == 3


def test_off_limiter_tracks_nothing() -> None:
    limiter = SourceLimiter()
    assert not limiter.enabled
    assert limiter.take("10.0.0.1", 10**6, 0.0) == 10**6
    assert limiter.tracked == 0


def test_tracked_sources_are_bounded_least_recently_seen_first() -> None:
    limiter = SourceLimiter(per_s=1, burst=1, max_sources=2)
    assert limiter.take("a", 1, 0.0) == 1
    assert limiter.take("b", 1, 0.0) == 1
    assert limiter.take("a", 1, 0.0) == 0  # "a" is now the most recent
    assert limiter.take("c", 1, 0.0) == 1  # forgets "b"
    assert limiter.tracked == 2
    assert limiter.health() == LimitsHealth(tracked_sources=2, forgotten_sources=1)
    assert limiter.take("a", 1, 0.0) == 0  # still tracked: still empty
    assert limiter.take("b", 1, 0.0) == 1  # forgotten: starts full again


def test_configure_at_run_time_keeps_what_sources_spent() -> None:
    limiter = SourceLimiter(per_s=10, burst=10)
    assert limiter.take("a", 10, 0.0) == 10
    limiter.configure(100, 50)
    assert limiter.take("a", 100, 0.0) == 0  # the spent allowance is kept
    assert limiter.take("a", 100, 0.1) == 10  # refilled at the new rate
    assert limiter.take("b", 100, 0.1) == 50  # a new source gets the new burst
    limiter.configure(100, 5)
    assert limiter.take("b", 100, 10.0) == 5  # lowered burst caps at once
    limiter.configure(0)
    assert not limiter.enabled
    assert limiter.tracked == 0


def test_configure_can_shrink_the_table() -> None:
    limiter = SourceLimiter(per_s=1, max_sources=10)
    for source in "abcdef":
        limiter.take(source, 1, 0.0)
    limiter.configure(1, 0, max_sources=2)
    assert limiter.tracked == 2
    assert limiter.forgotten == 4


def test_a_daemon_with_a_bad_allowlist_entry_does_not_start(tmp_path: Path) -> None:
    doc = {
        "storage": {"backend": "none", "state_dir": str(tmp_path)},
        "auth": {"udp_allow": ["127.0.0.1", "10.0.0.1/8"]},
    }
    # (whether loading the configuration already refuses it, or the daemon's start does)
    with pytest.raises(ConfigError, match=r"auth\.udp_allow.*10\.0\.0\.1/8.*host bits set"):
        Daemon(from_dict(doc))


def test_the_daemon_puts_auth_and_limits_in_force(tmp_path: Path) -> None:
    key = "k" * 32
    config = from_dict(
        {
            "storage": {"backend": "none", "state_dir": str(tmp_path)},
            "auth": {"udp_allow": ["10.0.0.0/8"], "udp_keys": [key]},
            "limits": {"source_frames_per_s": 5.0, "connection_frames_per_s": 7.0},
        }
    )
    daemon = Daemon(config)
    assert list(daemon.admission.udp.keys) == [key.encode()]
    allowlist = daemon.admission.udp.allowlist
    assert allowlist is not None
    assert allowlist.permits("10.1.2.3")
    assert daemon.admission.udp.limiter is daemon.admission.source_limiter
    assert daemon.session_settings.source_limiter is daemon.admission.source_limiter
    assert daemon.session_settings.connection_rate is daemon.admission.connection_rate
    assert daemon.admission.source_limiter.rate.per_s == 5.0
    assert daemon.admission.connection_rate.per_s == 7.0
    # a reload reconfigures the same objects in place
    reloaded = from_dict({"limits": {"source_frames_per_s": 9.0}})
    daemon.admission.configure(reloaded.auth, reloaded.limits)
    assert daemon.admission.source_limiter.rate.per_s == 9.0
    assert daemon.admission.udp.allowlist is None
    assert not daemon.admission.udp.keys
    assert daemon.health().limits == LimitsHealth(tracked_sources=0, forgotten_sources=0)
