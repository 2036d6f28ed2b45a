"""The local HTTP API: OpenAI-compatible routes, health and swarm status, on a Unix socket."""
