"""The learned listwise re-ranker: trained at export, applied per request.

Training lists are the logged impression sessions the ranker never trained
on (its time-held-out `eval_frac`), each ordered by the serving score
(ranker log P(click | shown) weighted + retrieval_weight * retrieval logit)
and cut to LIST_LEN; labels are click + purchase. The ListwiseReranker
(`recjax.serve.rerank`) sees each list with the user's embedding and
reorders it; a fifth of the lists is held out to report NDCG@10 of the
served order against the re-ranked one.

At serving, `ListwiseServer` re-scores the top `top` items of the ranked
list in one compiled call (fixed bucket), and the constraint layer runs on
the result.
"""

from __future__ import annotations

import dataclasses
import json
import os
from typing import Any, Optional

import flax.linen as nn
import jax
import numpy as np

from recjax.serve import rerank as rerank_lib

LIST_LEN = 16
_CONFIG_FILE = 'listwise.json'
_PARAMS_DIR = 'params'


@dataclasses.dataclass
class ListwiseConfig:
  dim: int = 32
  num_layers: int = 2
  num_heads: int = 2
  ff_dim: int = 64
  top: int = 64                  # serving: items re-scored per request
  retrieval_weight: float = 2.0  # the serving score the lists are sorted by

  def model(self) -> rerank_lib.ListwiseReranker:
    return rerank_lib.ListwiseReranker(self.dim, self.num_layers,
                                       self.num_heads, self.ff_dim)


def build_lists(ds, users, items, meta: rerank_lib.ItemMeta, rparams, rcfg,
                cfg: ListwiseConfig, max_lists: int = 20_000, seed: int = 0
                ) -> dict:
  """Padded lists of the ranker's held-out impression sessions.

  Returns:
    dict user_emb [B, d], item_emb [B, N, d], feats [B, N, 4], labels
    [B, N], mask bool [B, N], base [B, N] (the serving score), N = LIST_LEN.
  """
  from recjax.serve.ranker import combine_scores
  from recjax.train import ranker_trainer as rt
  imp = rt.build_impressions(ds.train, rcfg.label_window_s, rcfg.session_gap_s)
  imp.retrieval = np.einsum('nd,nd->n', users[imp.user],
                            items[imp.item]).astype(np.float32)
  _, rows = rt.split_by_time(imp, rcfg.eval_frac)
  logits = rt.predict_logits(rparams, rcfg, imp, rows, rt.side_features(
      ds, rcfg))
  base = np.asarray(combine_scores(logits, rcfg.weight_vector(None),
                                   rcfg.combine))
  base = base + cfg.retrieval_weight * imp.retrieval[rows]
  sess = imp.session[rows]
  order = np.lexsort((-base, sess))
  rows, base, sess = rows[order], base[order], sess[order]
  start = np.r_[0, np.flatnonzero(sess[1:] != sess[:-1]) + 1]
  length = np.diff(np.r_[start, len(sess)])
  keep = np.flatnonzero(length >= 2)
  rng = np.random.default_rng(seed)
  if len(keep) > max_lists:
    keep = np.sort(rng.choice(keep, max_lists, replace=False))
  B, N, d = len(keep), LIST_LEN, items.shape[1]
  out = dict(user_emb=np.zeros((B, d), np.float32),
             item_emb=np.zeros((B, N, d), np.float32),
             feats=np.zeros((B, N, 4), np.float32),
             labels=np.zeros((B, N), np.float32),
             mask=np.zeros((B, N), bool), base=np.zeros((B, N), np.float32))
  for b, s in enumerate(keep):
    r = rows[start[s]:start[s] + min(length[s], N)]
    n = len(r)
    it = imp.item[r]
    out['user_emb'][b] = users[imp.user[r[0]]]
    out['item_emb'][b, :n] = items[it]
    out['feats'][b, :n] = rerank_lib.listwise_features(
        it, base[start[s]:start[s] + n], meta, int(imp.timestamp[r[0]]))
    out['labels'][b, :n] = imp.click[r] + imp.purchase[r]
    out['mask'][b, :n] = True
    out['base'][b, :n] = base[start[s]:start[s] + n]
  return out


def _ndcg(scores, labels, mask, k: int = 10) -> float:
  """Mean NDCG@k over lists with a positive label; scores [B, N]."""
  s = np.where(mask, scores, -np.inf)
  order = np.argsort(-s, axis=1, kind='stable')[:, :k]
  disc = 1.0 / np.log2(np.arange(2, k + 2))
  got = (np.take_along_axis(labels, order, 1) * disc[:order.shape[1]]).sum(1)
  ideal = (-np.sort(-labels, axis=1)[:, :k] * disc[:order.shape[1]]).sum(1)
  ok = ideal > 0
  return float(np.mean(got[ok] / ideal[ok])) if ok.any() else float('nan')


def train(lists: dict, cfg: ListwiseConfig, steps: int, seed: int = 0
          ) -> tuple[Any, dict]:
  """Fits the re-ranker on 80% of `lists`; NDCG@10 on the rest.

  Returns:
    (params, metrics: lists, ndcg@10_served (the input order),
    ndcg@10_listwise).
  """
  B = len(lists['mask'])
  perm = np.random.default_rng(seed).permutation(B)
  cut = int(0.8 * B)
  tr, ev = perm[:cut], perm[cut:]
  pick = lambda rows: [lists[k][rows] for k in
                       ('user_emb', 'item_emb', 'feats', 'labels', 'mask')]
  params = rerank_lib.train_listwise(*pick(tr), steps=steps, seed=seed,
                                     batch_size=min(256, max(cut, 1)),
                                     model=cfg.model())
  u, it, f, y, m = pick(ev)
  got = np.asarray(rerank_lib.listwise_scores(params, u, it, f, m,
                                              model=cfg.model()))
  return params, dict(lists=int(B), steps=int(steps),
                      ndcg10_served=round(_ndcg(lists['base'][ev], y, m), 4),
                      ndcg10_listwise=round(_ndcg(got, y, m), 4))


def save(params, cfg: ListwiseConfig, path: str) -> None:
  import orbax.checkpoint as ocp
  path = os.path.abspath(path)
  os.makedirs(path, exist_ok=True)
  ckptr = ocp.StandardCheckpointer()
  ckptr.save(os.path.join(path, _PARAMS_DIR), params, force=True)
  ckptr.wait_until_finished()
  with open(os.path.join(path, _CONFIG_FILE), 'w') as f:
    json.dump(dataclasses.asdict(cfg), f)


def load(path: str, embed_dim: int) -> tuple[Any, ListwiseConfig]:
  import orbax.checkpoint as ocp
  with open(os.path.join(path, _CONFIG_FILE)) as f:
    cfg = ListwiseConfig(**json.load(f))
  n = cfg.top
  target = jax.eval_shape(lambda: nn.meta.unbox(cfg.model().init(
      jax.random.PRNGKey(0), np.zeros((1, embed_dim), np.float32),
      np.zeros((1, n, embed_dim), np.float32), np.zeros((1, n, 4),
                                                        np.float32),
      np.ones((1, n), bool)))['params'])
  params = ocp.StandardCheckpointer().restore(
      os.path.join(path, _PARAMS_DIR), target)
  return params, cfg


class ListwiseServer:
  """Re-scores the top `cfg.top` of one ranked list (one compiled shape)."""

  def __init__(self, params, cfg: ListwiseConfig, item_emb: np.ndarray,
               meta: rerank_lib.ItemMeta):
    self.params, self.cfg, self.item_emb, self.meta = (params, cfg, item_emb,
                                                       meta)
    self.model = cfg.model()

  def warmup(self) -> None:
    self.rerank(np.zeros(self.item_emb.shape[1], np.float32),
                np.arange(min(3, len(self.item_emb))), np.zeros(3), 0)

  def rerank(self, user_vec: Optional[np.ndarray], ranked: np.ndarray,
             scores: np.ndarray, now: int) -> tuple[np.ndarray, np.ndarray]:
    """(ranked ids, scores) with the top `top` reordered by the model.

    The re-scored head keeps its place above the tail: tail scores are
    shifted below the head's minimum, in their original order.
    """
    n, top = min(len(ranked), self.cfg.top), self.cfg.top
    if n < 2:
      return ranked, scores
    d = self.item_emb.shape[1]
    head = ranked[:n]
    emb = np.zeros((1, top, d), np.float32)
    emb[0, :n] = self.item_emb[head]
    feats = np.zeros((1, top, 4), np.float32)
    feats[0, :n] = rerank_lib.listwise_features(head, scores[:n], self.meta,
                                                now)
    mask = np.zeros((1, top), bool)
    mask[0, :n] = True
    u = (np.zeros((1, d), np.float32) if user_vec is None
         else np.asarray(user_vec, np.float32)[None])
    s = np.asarray(rerank_lib.listwise_scores(self.params, u, emb, feats,
                                              mask, model=self.model))[0, :n]
    order = np.argsort(-s, kind='stable')
    new_head, new_s = head[order], s[order].astype(np.float64)
    tail_s = np.asarray(scores[n:], np.float64)
    if len(tail_s):
      tail_s = tail_s - tail_s.max() + new_s.min() - 1.0
    return (np.r_[new_head, ranked[n:]].astype(ranked.dtype),
            np.r_[new_s, tail_s])
