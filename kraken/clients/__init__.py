"""
The HTTP clients of the central components, each over the one client factory of
:mod:`kraken.http.client`: :mod:`~kraken.clients.tracker` (announces, metainfo, reports of
unreachable peers), :mod:`~kraken.clients.origin` (the origin ring: uploads, downloads,
stat, locations) and :mod:`~kraken.clients.buildindex` (tags).
"""
