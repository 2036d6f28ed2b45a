"""asyncio drivers for the wire: authenticated connections, the listener and outgoing peer links."""
