"""SWIM gossip configuration: one commented frozen dataclass with LAN defaults and a fast local preset."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

from ..errors import ConfigError
from .swim_messages import MAX_UPDATE_BYTES, Ping, PushPull


@dataclass(frozen=True)
class SwimConfig:
    # Time between two probes; each period probes one member, in randomised round-robin order.
    probe_interval: float = 0.5
    # How long to wait for the direct Ack before asking helpers to probe indirectly (< probe_interval).
    probe_timeout: float = 0.2
    # Helpers asked (PingReq) to probe a member that missed its direct Ack.
    indirect_checks: int = 3
    # Suspicion timeout with every expected confirmation: mult * max(1, log10(n)) * probe_interval.
    suspicion_mult: int = 3
    # Suspicion timeout with no confirmation: this many times the above.
    suspicion_max_timeout_mult: float = 6.0
    # Floor under the suspicion timeout (seconds): in small swarms log10(n) scaling alone would declare a
    # node dead after 2 s, so a stall of a few seconds (swap, a GC pause, SIGSTOP) would evict it.
    suspicion_min_s: float = 3.0
    # Besides piggy-backing on probes, pending updates are pushed to gossip_nodes random members every
    # gossip_interval (memberlist's gossip timer); nothing is sent when there is nothing new.
    gossip_interval: float = 0.2
    gossip_nodes: int = 3
    # Every node piggy-backs each update mult * ceil(log10(n + 1)) times.
    retransmit_mult: int = 4
    # Full-state exchange with one random alive member (stretched beyond 32 members, as memberlist).
    push_pull_interval: float = 5.0
    # While no other member is known, the join exchange is resent to the seeds this often.
    join_retry_interval: float = 1.0
    # Members told at once (Gossip) when this node leaves or refutes a claim; the rest hear it by piggyback.
    announce_fanout: int = 3
    # How long dead and left members stay as tombstones (rejecting stale claims) before removal.
    tombstone_s: float = 30.0
    # A member declared dead (not one that left) may be behind a healed partition or back from a
    # reboot: every reconnect_interval one such address gets a full-state exchange, for up to
    # reconnect_timeout_s after its death (Serf's reconnect; memberlist alone never merges two sides).
    reconnect_interval: float = 2.0
    reconnect_timeout_s: float = 6 * 3600.0
    # Largest member table, tombstones and this node included; new members past it are ignored (logged).
    max_members: int = 1024
    # Updates piggy-backed on one Ping/Ack/PingReq, by count and by estimated encoded size.
    max_piggyback: int = 16
    max_piggyback_bytes: int = 8 * 1024
    # Pending gossip updates; past this the most-sent are dropped (counted).
    max_broadcasts: int = 1024
    # Indirect probes served at once for other members; further PingReqs are dropped (counted).
    max_relays: int = 64
    # An update raising a known member's incarnation by more than this is dropped as absurd; so is a
    # claim about this node that far ahead (it would burn the incarnation space towards the cap).
    max_incarnation_jump: int = 1 << 20

    def __post_init__(self) -> None:
        if not 0 < self.probe_timeout < self.probe_interval:
            raise ConfigError("swim: need 0 < probe_timeout < probe_interval")
        for name in ("push_pull_interval", "join_retry_interval", "tombstone_s", "suspicion_max_timeout_mult",
                     "gossip_interval", "reconnect_interval", "reconnect_timeout_s"):
            if not getattr(self, name) > 0:
                raise ConfigError(f"swim: {name} must be positive")
        for name in ("suspicion_mult", "retransmit_mult", "max_piggyback", "max_broadcasts", "max_relays",
                     "max_incarnation_jump"):
            if getattr(self, name) < 1:
                raise ConfigError(f"swim: {name} must be at least 1")
        if self.indirect_checks < 0 or self.announce_fanout < 0 or self.gossip_nodes < 0 or self.suspicion_min_s < 0:
            raise ConfigError("swim: indirect_checks, announce_fanout, gossip_nodes and suspicion_min_s must not be "
                              "negative")
        # A message of piggyback (plus its own header) must stay under the Ping/Ack/PingReq wire cap.
        if not MAX_UPDATE_BYTES <= self.max_piggyback_bytes <= Ping.CAP - 1024:
            raise ConfigError(f"swim: max_piggyback_bytes must be in [{MAX_UPDATE_BYTES}, {Ping.CAP - 1024}]")
        # A full table must fit one PushPull.
        if not 2 <= self.max_members <= (PushPull.CAP - 1024) // MAX_UPDATE_BYTES:
            raise ConfigError(f"swim: max_members must be in [2, {(PushPull.CAP - 1024) // MAX_UPDATE_BYTES}]")

    @classmethod
    def lan(cls) -> SwimConfig:
        """The defaults: one switched LAN, round trips well under probe_timeout."""
        return cls()

    @classmethod
    def local(cls) -> SwimConfig:
        """Short timings for tests and loopback clusters (memberlist's DefaultLocalConfig, scaled down)."""
        return dataclasses.replace(
            cls(), probe_interval=0.1, probe_timeout=0.04, suspicion_mult=3, push_pull_interval=1.0,
            join_retry_interval=0.2, tombstone_s=5.0, suspicion_min_s=0.0, gossip_interval=0.05,
            reconnect_interval=0.5,
        )
