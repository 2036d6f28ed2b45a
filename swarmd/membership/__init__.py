"""Who is in the swarm and what each member holds. Sans-I/O."""
