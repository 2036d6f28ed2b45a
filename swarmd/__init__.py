"""swarmd: one language model served by a leaderless ring of daemons."""

__version__ = "0.1.0"
