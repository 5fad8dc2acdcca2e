"""The tracker's live swarm page: ``index.html``, ``swarm.js`` and ``swarm.css`` (package data)."""
