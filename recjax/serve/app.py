"""The recommendation HTTP API (FastAPI) over a `Recommender`.

  POST /v1/recommend      {user_id, k, context, exclude, recent_items,
                           weights, rerank, seller_id}
                                             -> ranked items with reasons
                                                (only seller_id's items
                                                when given)
  GET  /v1/similar/{item_id}?k=20            -> nearest items by embedding
  GET  /v1/sellers/recommend?user_id=U&k=10  -> sellers for a user
  GET  /healthz                              -> bundle, model and index
  GET  /metrics                              -> Prometheus text
  GET  /openapi.json, /docs                  -> the schema

Contract: bad requests get a 4xx with a message (422 for a body that does
not validate, including malformed JSON; 401 for a missing or wrong API key;
404 for an unknown item in /similar), never a 5xx; an unknown user is
served by the cold-start path. Handlers are plain `def`s: FastAPI runs them
in its thread pool, and the numeric work (ScaNN, XLA, numpy) releases the
GIL, so concurrent requests overlap.
"""

from __future__ import annotations

import logging
import time
from typing import Optional, Union

import fastapi
from fastapi import responses
import prometheus_client as prom
import pydantic

from recjax.serve.recommender import Recommender, RequestError

RawId = Union[pydantic.StrictInt, pydantic.StrictStr]


class Context(pydantic.BaseModel):
  model_config = pydantic.ConfigDict(extra='forbid')
  hour: Optional[int] = pydantic.Field(None, ge=0, le=23)
  weekday: Optional[int] = pydantic.Field(None, ge=0, le=6)
  device: Optional[str] = pydantic.Field(
      None, description='unknown | desktop | mobile | tablet | app')
  location: Optional[int] = pydantic.Field(None, ge=0)
  now: Optional[int] = pydantic.Field(
      None, ge=0, description='Request time, seconds since the epoch '
      '(default: the bundle\'s data end); drives freshness.')


class RecommendRequest(pydantic.BaseModel):
  model_config = pydantic.ConfigDict(extra='forbid')
  user_id: RawId
  k: int = pydantic.Field(20, ge=1)
  context: Context = Context()
  exclude: list[RawId] = pydantic.Field(default_factory=list,
                                        max_length=10_000)
  recent_items: list[RawId] = pydantic.Field(
      default_factory=list, max_length=500,
      description='Recent items of a user the bundle does not know '
      '(cold start): they seed retrieval and the ranker\'s history.')
  weights: Optional[dict[str, float]] = pydantic.Field(
      None, description='Ranker head weights, e.g. {"click": 1, '
      '"purchase": 2}.')
  rerank: Optional[dict[str, Union[pydantic.StrictBool, pydantic.StrictInt,
                                   float, None]]] = pydantic.Field(
      None, description='Per-request re-ranker overrides, e.g. '
      '{"max_per_seller": 2, "freshness_weight": 0.3}.')
  seller_id: Optional[RawId] = pydantic.Field(
      None, description='Recommend only this seller\'s items, personalised '
      'to the user.')


def create_app(rec: Recommender, api_key: Optional[str] = None,
               max_k: int = 50) -> fastapi.FastAPI:
  """The FastAPI app serving `rec` (already warmed up)."""
  app = fastapi.FastAPI(title='recjax', version='1',
                        description='Retrieval -> ranking -> re-ranking.')
  registry = prom.CollectorRegistry()
  requests = prom.Counter('recjax_requests', 'Requests by endpoint/status',
                          ['endpoint', 'status'], registry=registry)
  latency = prom.Histogram(
      'recjax_request_seconds', 'Request latency by endpoint', ['endpoint'],
      buckets=(.002, .005, .01, .02, .03, .05, .075, .1, .25, .5, 1.0),
      registry=registry)
  stage = prom.Histogram(
      'recjax_stage_seconds', 'Recommend latency by pipeline stage',
      ['stage'], buckets=(.0005, .001, .002, .005, .01, .02, .05, .1),
      registry=registry)
  cold = prom.Counter('recjax_cold_start', 'Requests served by the '
                      'cold-start path', registry=registry)

  def check_key(key: Optional[str]):
    if api_key is not None and key != api_key:
      raise fastapi.HTTPException(401, 'missing or wrong X-API-Key header')

  @app.middleware('http')
  async def count(request: fastapi.Request, call_next):
    t = time.perf_counter()
    try:
      response = await call_next(request)
    except Exception:                          # never a bare 5xx page
      logging.exception('unhandled error on %s', request.url.path)
      response = responses.JSONResponse(
          {'detail': 'internal error'}, status_code=500)
    endpoint = request.scope.get('route').path if request.scope.get(
        'route') else 'unmatched'
    requests.labels(endpoint, str(response.status_code)).inc()
    latency.labels(endpoint).observe(time.perf_counter() - t)
    return response

  @app.post('/v1/recommend')
  def recommend(req: RecommendRequest,
                x_api_key: Optional[str] = fastapi.Header(None)):
    check_key(x_api_key)
    if req.k > max_k:
      raise fastapi.HTTPException(422, f'k={req.k} exceeds the maximum '
                                  f'{max_k}')
    try:
      out = rec.recommend(
          req.user_id, k=req.k, context=req.context.model_dump(),
          exclude=req.exclude, recent_items=req.recent_items,
          weights=req.weights, rerank=req.rerank, seller_id=req.seller_id)
    except RequestError as e:
      raise fastapi.HTTPException(422, str(e)) from None
    for name, ms in out['timings_ms'].items():
      if name != 'total':
        stage.labels(name).observe(ms / 1e3)
    if out['path'] == 'cold_start':
      cold.inc()
    return out

  @app.get('/v1/similar/{item_id}')
  def similar(item_id: str, k: int = fastapi.Query(20, ge=1),
              x_api_key: Optional[str] = fastapi.Header(None)):
    check_key(x_api_key)
    if k > max_k:
      raise fastapi.HTTPException(422, f'k={k} exceeds the maximum {max_k}')
    try:
      return rec.similar(item_id, k)
    except KeyError:
      raise fastapi.HTTPException(404, f'unknown item_id {item_id!r}'
                                  ) from None

  @app.get('/v1/sellers/recommend')
  def recommend_sellers(user_id: str = fastapi.Query(..., min_length=1),
                        k: int = fastapi.Query(10, ge=1),
                        x_api_key: Optional[str] = fastapi.Header(None)):
    check_key(x_api_key)
    if k > max_k:
      raise fastapi.HTTPException(422, f'k={k} exceeds the maximum {max_k}')
    return rec.recommend_sellers(user_id, k)

  @app.get('/healthz')
  def healthz():
    return rec.health()

  @app.get('/metrics')
  def metrics():
    return responses.Response(prom.generate_latest(registry),
                              media_type=prom.CONTENT_TYPE_LATEST)

  return app
