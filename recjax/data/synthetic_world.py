"""The hidden world behind the synthetic marketplace: taxonomy, catalogue,
user tastes, and the alias tables the event simulation samples from.

Used by `recjax.data.synthetic`; see its docstring for the model. Everything
here is per item, per user or per category (never per event), so it is cheap
next to the event simulation even at 10M events. Shapes: I items, U users,
C categories over all levels, K leaf categories, R root categories,
d = factor_dim, D = image_dim, T = text_len.
"""

from __future__ import annotations

import numpy as np

from recjax.data.schema import Catalog

DAY = 86_400
# Hours from UTC that the synthetic locations are spread over.
_TIMEZONES = np.array([-8, -7, -6, -5, -4, -3, 0, 1, 2, 3, 5, 8, 9, 10])
# Device mix of users' preferred devices (desktop, mobile, tablet, app).
_DEVICE_P = np.array([0.30, 0.45, 0.10, 0.15])
NUM_FAVOURITE_SELLERS = 3
# Strength of personal taste against popularity. Tuned so that on the default
# config popularity has recall@20 ~0.09 and simple CF (EASE, user-kNN) ~1.5-2x
# that: popularity is strong, as in real logs, but not the whole story.
USER_FACTOR_SCALE = 1.6           # std of user factors: score std ~1.9
POPULARITY_EXPONENT = 0.85        # item popularity ~ rank^-0.85
ROOT_ALPHA = 0.25                 # per-user Dirichlet over root categories
LEAF_SHAPE = 0.12                 # per-user Gamma taste over leaves (sparse)


def taxonomy_tree(branching: tuple[int, ...]
                  ) -> tuple[np.ndarray, np.ndarray, list[str]]:
  """The complete category tree with `branching[l]` children per level-l node.

  Categories are numbered level by level (roots first), so indices are global
  across levels as `Catalog.taxonomy` wants.

  Returns:
    (parent int32 [C] (-1 for roots), leaf_path int32 [K, L] (root first),
    names [C] like 'c0', 'c0/3', 'c0/3/1').
  """
  parent, names, paths = [], [], []
  level_nodes = [()]          # each node as its path of child positions
  offset = 0
  for level, b in enumerate(branching):
    prev_offset = offset - (len(level_nodes) if level else 0)
    nodes = [p + (c,) for p in level_nodes for c in range(b)]
    for j, node in enumerate(nodes):
      parent.append(-1 if level == 0 else prev_offset + j // b)
      names.append('c' + '/'.join(map(str, node)))
    paths.append(offset + np.arange(len(nodes)))
    offset += len(nodes)
    level_nodes = nodes
  num_leaves = len(level_nodes)
  # Level-l ancestor of leaf k: the leaf's position divided by the number of
  # leaves under one level-l node.
  below = [int(np.prod(branching[l + 1:])) for l in range(len(branching))]
  leaf_path = np.stack([paths[l][np.arange(num_leaves) // below[l]]
                        for l in range(len(branching))], axis=1)
  return (np.asarray(parent, np.int32), leaf_path.astype(np.int32), names)


def alias_tables(weights: np.ndarray, starts: np.ndarray
                 ) -> tuple[np.ndarray, np.ndarray]:
  """Walker/Vose alias tables, one per contiguous segment of `weights`.

  Sampling segment [a, b) is then O(1): x = a + U * (b - a), j = floor(x),
  pick j if frac(x) < prob[j] else alias[j]. O(1) matters: the simulation
  draws ~13 candidates per event, and binary search (searchsorted) over the
  item cumsum was the single largest cost at 10M events.

  Args:
    weights: float [N] non-negative, each segment with a positive sum.
    starts: int [S] segment starts (ascending, starts[0] == 0); the last
      segment ends at N.

  Returns:
    (prob float64 [N], alias int32 [N]) with alias as global positions.
  """
  prob = np.ones(len(weights))
  alias = np.arange(len(weights), dtype=np.int32)
  bounds = np.r_[starts, len(weights)]
  for a, b in zip(bounds[:-1], bounds[1:]):
    if b <= a:
      continue
    q = weights[a:b] * ((b - a) / weights[a:b].sum())
    small = (a + np.flatnonzero(q < 1.0)).tolist()
    large = (a + np.flatnonzero(q >= 1.0)).tolist()
    q = q.tolist()
    al = alias[a:b].tolist()
    # Vose's pairing is sequential; a Python loop over I items is ~0.1 s/1e5.
    while small and large:
      s, l = small.pop(), large[-1]
      al[s - a] = l
      q[l - a] -= 1.0 - q[s - a]
      if q[l - a] < 1.0:
        small.append(large.pop())
    prob[a:b] = np.minimum(q, 1.0)
    prob[np.array(small + large, np.int64)] = 1.0   # leftovers: exact 1
    alias[a:b] = al
  return prob, alias


def alias_draw(rng: np.random.Generator, prob: np.ndarray, alias: np.ndarray,
               start: np.ndarray, size: np.ndarray, shape) -> np.ndarray:
  """Positions drawn from alias segments [start, start + size), broadcast.

  Args:
    start, size: int arrays broadcastable to `shape` (size > 0).

  Returns:
    int32 array of `shape`.
  """
  x = rng.random(shape) * size
  j = x.astype(np.int64)
  j = np.minimum(j, size - 1)               # guards x == size after rounding
  pos = start + j
  return np.where(x - j < prob[pos], pos, alias[pos]).astype(np.int32)


def _zipf(rng: np.random.Generator, n: int, exponent: float,
          shift: float = 1.0) -> np.ndarray:
  """Power-law weights (rank + shift)^-exponent in a random order, sum 1."""
  w = (np.arange(n) + shift) ** -exponent
  w = w[rng.permutation(n)]
  return w / w.sum()


def _vectors(rng, n, d):
  """Rows with N(0, 1/d) entries: norm about 1 in any dimension d."""
  return rng.standard_normal((n, d)) / np.sqrt(d)


def make_catalog(cfg, rng: np.random.Generator, start: int
                 ) -> tuple[Catalog, dict]:
  """Sellers, taxonomy, prices, margins, listing times, text and images.

  Returns:
    (catalog, truth) with truth keys item_factors [I, d] float32,
    item_popularity [I] (sums to 1), seller_home_root [S], category_names,
    image_map [d, D], price_z [I] (log price standardised within its leaf).
  """
  I, S, d = cfg.num_items, cfg.num_sellers, cfg.factor_dim
  parent, leaf_path, names = taxonomy_tree(tuple(cfg.taxonomy))
  num_cats, num_leaves = len(parent), len(leaf_path)
  num_roots = int(cfg.taxonomy[0])
  leaves_per_root = num_leaves // num_roots

  # Sellers: every seller lists at least one item, then power-law sizes.
  # Sellers specialise: 80% of a seller's items sit under its home root.
  seller_size = _zipf(rng, S, 1.0)
  seller = np.r_[np.arange(S), rng.choice(S, I - S, p=seller_size)]
  seller = seller[rng.permutation(I)].astype(np.int32)
  home_root = rng.integers(0, num_roots, S)
  leaf_w = rng.gamma(2.0, size=num_leaves)
  leaf_cum = np.r_[0.0, np.cumsum(leaf_w)]
  own = rng.random(I) < 0.8
  lo = np.where(own, home_root[seller] * leaves_per_root, 0)
  hi = np.where(own, lo + leaves_per_root, num_leaves)
  x = leaf_cum[lo] + rng.random(I) * (leaf_cum[hi] - leaf_cum[lo])
  leaf = np.clip(np.searchsorted(leaf_cum, x, side='right') - 1, lo, hi - 1)
  taxonomy = leaf_path[leaf]

  # Item factors: shared along the taxonomy path and the seller, so the
  # catalogue's structure carries preference signal, plus item noise.
  level_w = np.linspace(0.7, 0.4, taxonomy.shape[1])
  cat_vec = _vectors(rng, num_cats, d)
  item_f = (cat_vec[taxonomy] * level_w[:, None]).sum(1)
  item_f += 0.3 * _vectors(rng, S, d)[seller] + 0.6 * _vectors(rng, I, d)

  # Price: log-normal around a per-leaf level; margin in (0, 0.5).
  leaf_mu = rng.normal(3.2, 0.8, num_leaves)
  log_price = leaf_mu[leaf] + rng.normal(0.0, 0.5, I)
  price_z = (log_price - leaf_mu[leaf]) / 0.5
  margin = np.clip(0.5 * rng.beta(2.0, 6.0, I), 0.005, 0.495)

  # Listing times: most items predate the window, a fifth are listed during
  # it (new items; the simulation cannot show them earlier and boosts them
  # while fresh).
  new = rng.random(I) < 0.2
  created = np.where(new, start + rng.integers(0, cfg.days * DAY, I),
                     start - rng.integers(DAY, 365 * DAY, I))

  # Image: a fixed random linear map of the hidden factors plus noise, so
  # content predicts preference for cold items.
  image_map = rng.standard_normal((d, cfg.image_dim))
  image = item_f @ image_map + 0.5 * rng.standard_normal((I, cfg.image_dim))

  text = _descriptions(cfg, rng, item_f, taxonomy, num_cats)
  popularity = _zipf(rng, I, POPULARITY_EXPONENT)
  catalog = Catalog(
      seller=seller, taxonomy=taxonomy.astype(np.int32),
      price=np.exp(log_price).astype(np.float32),
      margin=margin.astype(np.float32), created_at=created.astype(np.int64),
      text=text, category_parent=parent, image=image.astype(np.float32))
  truth = dict(item_factors=item_f.astype(np.float32),
               item_popularity=popularity, seller_home_root=home_root,
               category_names=names, image_map=image_map,
               price_z=price_z.astype(np.float32))
  return catalog, truth


def _descriptions(cfg, rng, item_f, taxonomy, num_cats) -> np.ndarray:
  """int32 [I, T] token ids, 0-padded at the end.

  Token ids 1..2d are attribute words: word 1 + 2j (+1 if negative) says
  factor j is large for this item; three per item, from its largest |factor|
  dims (20% replaced by noise). The rest are topic words: each category has
  12 words from ids above 2d, and tokens are drawn along the item's path,
  leaf-heavy.
  """
  I, T, d, V = len(item_f), cfg.text_len, cfg.factor_dim, cfg.text_vocab
  topics = rng.integers(2 * d + 1, V, (num_cats, 12))
  levels = taxonomy.shape[1]
  level_p = np.arange(1, levels + 1, dtype=float)
  level = np.searchsorted(np.cumsum(level_p / level_p.sum()),
                          rng.random((I, T)), side='right')
  level = np.minimum(level, levels - 1)
  cats = np.take_along_axis(taxonomy, level, axis=1)
  tokens = topics[cats, rng.integers(0, 12, (I, T))]
  n_attr = min(3, T)
  top = np.argsort(-np.abs(item_f), axis=1)[:, :n_attr]
  sign = np.take_along_axis(item_f, top, axis=1) < 0
  attr = 1 + 2 * top + sign
  noise = rng.random((I, n_attr)) < 0.2
  tokens[:, :n_attr] = np.where(noise, rng.integers(1, V, (I, n_attr)), attr)
  # Variable lengths; shuffle real tokens so no position is special, then pad.
  length = rng.integers(max(1, T // 2), T + 1, I)
  key = rng.random((I, T)) + (np.arange(T) >= length[:, None])
  order = np.argsort(key, axis=1)
  tokens = np.take_along_axis(tokens, order, axis=1)
  tokens[np.arange(T) >= length[:, None]] = 0
  return tokens.astype(np.int32)


def make_users(cfg, rng: np.random.Generator, catalog: Catalog,
               truth: dict) -> dict:
  """Hidden user tastes and habits.

  Returns:
    dict with user_factors [U, d] float32, user_activity [U] (sums to 1),
    user_root_log_affinity [U, R] float32, user_leaf_cdf [U, K] float32 (the
    cumulative per-user distribution of session intents over leaves; the
    last column is 1), user_top_leaf [U], user_sellers [U, 3],
    user_price_sensitivity [U], user_location [U] (1..num_locations),
    user_device [U] (1..4), user_peak_hour [U], location_tz [L + 1] hours,
    location_p [L + 1], leaf_size [K].
  """
  U, d = cfg.num_users, cfg.factor_dim
  parent = catalog.category_parent
  num_roots = int(cfg.taxonomy[0])
  leaf0 = len(parent) - int(np.prod(cfg.taxonomy))
  leaf_size = np.bincount(catalog.leaf_category - leaf0,
                          minlength=len(parent) - leaf0)
  num_leaves = len(leaf_size)
  leaf_root = np.repeat(np.arange(num_roots), num_leaves // num_roots)

  # Per-user Dirichlet over roots, and within each root a sparse Gamma taste
  # over its leaves: users shop a few corners of the catalogue.
  theta = rng.dirichlet(np.full(num_roots, ROOT_ALPHA), U)
  g = rng.gamma(LEAF_SHAPE, size=(U, num_leaves)) * (leaf_size > 0)
  g += 1e-12 * (leaf_size > 0)               # no all-zero root for a user
  # Leaves are numbered root by root, so a reshape groups them per root.
  root_sum = g.reshape(U, num_roots, -1).sum(2)
  pref = theta[:, leaf_root] * g / np.maximum(root_sum[:, leaf_root], 1e-300)
  total = pref.sum(1, keepdims=True)
  # A user whose liked roots hold no items (tiny catalogues) browses by size.
  pref = np.where(total > 0, pref / np.maximum(total, 1e-300),
                  leaf_size / leaf_size.sum())
  cdf = np.cumsum(pref, axis=1).astype(np.float32)
  cdf[:, -1] = 1.0

  seller_size = np.bincount(catalog.seller, minlength=cfg.num_sellers)
  seller_p = np.sqrt(seller_size) / np.sqrt(seller_size).sum()
  loc_p = np.r_[0.0, _zipf(rng, cfg.num_locations, 0.8)]
  loc_tz = np.r_[0, rng.choice(_TIMEZONES, cfg.num_locations)]
  return dict(
      user_factors=(USER_FACTOR_SCALE * rng.standard_normal((U, d))).astype(
          np.float32),
      user_activity=_zipf(rng, U, 0.9, max(2.0, U / 200)),
      user_root_log_affinity=np.log(num_roots * theta + 1e-3).astype(
          np.float32),
      user_leaf_cdf=cdf, user_top_leaf=pref.argmax(1),
      user_sellers=rng.choice(cfg.num_sellers, (U, NUM_FAVOURITE_SELLERS),
                              p=seller_p).astype(np.int32),
      user_price_sensitivity=rng.normal(0.3, 0.4, U).astype(np.float32),
      user_location=rng.choice(len(loc_p), U, p=loc_p).astype(np.int32),
      user_device=1 + rng.choice(4, U, p=_DEVICE_P),
      user_peak_hour=rng.normal(20.0, 3.0, U) % 24,
      location_tz=loc_tz, location_p=loc_p, leaf_size=leaf_size)
