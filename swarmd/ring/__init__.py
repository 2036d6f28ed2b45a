"""Routing a session through the stages that hold the model's layers, seen from its entry node."""
