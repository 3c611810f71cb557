"""`engine serve`: pipelines behind an OpenAI-compatible HTTP gateway.

```
engine/serve/
  config.py       the settings (CLI → frozen model, JSON for workers) and the --config file
  keys.py         API keys: hashed, constant-time check → an Identity (user, tenant)
  limits.py       client address (trusted proxies), per-key / per-IP limits, load shedding
  openai.py       the OpenAI wire shapes: chat request, completion, chunk, error
  mapping.py      chat messages → a pipeline's input record; output → assistant text
  idempotency.py  Idempotency-Key over HTTP: replay, 422 on another body, wait in flight
  streaming.py    stream: true as server-sent events
  gateway.py      the pipelines served and every request's admission, run and observers
  shadow.py       a candidate run after the response on a share of requests, compared live
  canary.py       a candidate answering a stepped share of users, rolled back on a breach
  audit.py        the audit record of each request, the opt-out list
  feedback.py     POST /v1/feedback lines next to the run store
  middleware.py   ASGI: body limit and timeout, response counts
  app.py          the FastAPI routes and error handlers
  protocol.py     uvicorn's HTTP protocol with a header timeout
  server.py       uvicorn: one process or --workers N
```
"""

from engine.serve.app import create_app
from engine.serve.config import ServeConfig
from engine.serve.gateway import Gateway

__all__ = ["Gateway", "ServeConfig", "create_app"]
