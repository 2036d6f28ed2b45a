"""The last case of the hostile catalogue (file order): the daemon every case above attacked."""

from __future__ import annotations

import pytest
from cluster import Cluster
from hostile_peer import RSS_MB, rss_mb, still_serves

pytestmark = pytest.mark.ring


def test_zz_memory_growth_over_the_whole_catalogue_is_bounded(daemon: Cluster) -> None:
    """Runs last in this module (pytest keeps file order): everything above hit the same daemon."""
    still_serves(daemon)
    grown = rss_mb(daemon) - RSS_MB["start"]
    print(f"daemon RSS after the hostile catalogue: {RSS_MB['start']:.1f} MB -> {rss_mb(daemon):.1f} MB "
          f"(+{grown:.1f} MB)")
    assert grown < 50, grown
