"""Finding peers: mDNS on the LAN and static seed peers. Discovery only proposes addresses; a peer
becomes a member only after the authenticated handshake."""
