"""``recjpq serve``: next-item recommendations over HTTP from a model file.

- ``engine.py``: the model behind the server: raw ids in, top-k raw ids out, many queries at once (no HTTP);
- ``payload.py``: request bodies checked into queries; every client mistake is a ``RequestError`` (4xx);
- ``batcher.py``: concurrent requests answered together in small batches (a short wait window);
- ``app.py``: the starlette application (routes, body limit, JSON errors, loading in the background);
- ``server.py``: ``run(cfg)``: the socket, uvicorn, and a graceful stop on SIGTERM.

Only ``server.run`` and ``app`` need the optional extra ``recjpq[serve]`` (uvicorn, starlette).
"""
