"""Twisted protocols: the peer wire protocol, its driver, and the agent's download path."""
