"""TFDS builder `recjax_marketplace`: the synthetic marketplace for TFDS.

Importing this module registers the builder, then

  import recjax.data.tfds_marketplace  # noqa: F401  (registers the builder)
  ds = tfds.load('recjax_marketplace/tiny', split='train', data_dir=tmpdir)

generates the data locally (no downloads: `_split_generators` runs
`recjax.data.synthetic`) and reads it back. Configs: 'default' and 'tiny'
(`MarketplaceConfig()` and `MarketplaceConfig.tiny()`).

Splits (the split of `synthetic.split_marketplace`):
  train    every training event (all event types), one example per row,
           in time order;
  test     click-or-deeper test events (warm and cold-start rows), in time
           order;
  catalog  one example per item, in item index order.

TFDS gives all splits one feature spec, so an example carries both the event
and the item fields and fills the ones that do not apply to its split with
sentinels: in train/test, seller = created_at = -1, price = margin = NaN and
taxonomy/text/image are empty; in catalog, `item` is the item index and
user = timestamp = event = device = location = hour = -1, rating = NaN. In
catalog examples taxonomy has L entries (root first), text T tokens (0 = pad)
and image D floats. Per-dataset facts (sizes, category parents and names,
cold users and items) are in `info.metadata`.

TensorFlow is imported here only (never by `recjax.data.synthetic`), and it
is kept off GPUs so it cannot take accelerator memory JAX needs.
"""

from __future__ import annotations

import numpy as np
import tensorflow as tf
import tensorflow_datasets as tfds
from etils import epath

from recjax.data import synthetic
from recjax.data.schema import Catalog, Interactions

try:
  tf.config.set_visible_devices([], 'GPU')
except (RuntimeError, ValueError):   # TF already initialised its devices
  pass

_EVENT_FIELDS = dict(user=np.int32, item=np.int32, timestamp=np.int64,
                     event=np.int32, rating=np.float32, device=np.int32,
                     location=np.int32, hour=np.int32)
_CATALOG_SCALARS = dict(seller=np.int32, price=np.float32, margin=np.float32,
                        created_at=np.int64)
_CATALOG_VECTORS = dict(taxonomy=np.int32, text=np.int32, image=np.float32)


class MarketplaceBuilderConfig(tfds.core.BuilderConfig):
  """A builder config that carries the `MarketplaceConfig` it generates."""

  def __init__(self, *, marketplace: synthetic.MarketplaceConfig, **kwargs):
    super().__init__(**kwargs)
    self.marketplace = marketplace


class RecjaxMarketplace(tfds.core.GeneratorBasedBuilder):
  """The recjax synthetic marketplace: events and catalogue."""

  VERSION = tfds.core.Version('1.0.0')
  RELEASE_NOTES = {'1.0.0': 'Initial release.'}
  BUILDER_CONFIGS = [
      MarketplaceBuilderConfig(
          name='default', marketplace=synthetic.MarketplaceConfig(),
          description='6k users, 3k items, 150 sellers, 400k events.'),
      MarketplaceBuilderConfig(
          name='tiny', marketplace=synthetic.MarketplaceConfig.tiny(),
          description='300 users, 200 items, 20 sellers, 20k events.'),
  ]

  @tfds.core.utils.classproperty
  @classmethod
  def code_path(cls) -> epath.Path:
    # TFDS 4.9.10 computes this with `importlib_resources`, which it declares
    # as a dependency only for Python < 3.9, so on 3.11 it fails to import;
    # the answer is simply this file.
    return epath.Path(__file__)

  def _info(self) -> tfds.core.DatasetInfo:
    scalar = lambda dt, doc: tfds.features.Scalar(dtype=dt, doc=doc)
    vector = lambda dt, doc: tfds.features.Tensor(shape=(None,), dtype=dt,
                                                  doc=doc)
    features = dict(
        user=scalar(np.int32, 'user index (-1 in catalog)'),
        item=scalar(np.int32, 'item index'),
        timestamp=scalar(np.int64, 'seconds since the epoch (-1 in catalog)'),
        event=scalar(np.int32, 'index into schema.EVENT_TYPES (-1 in catalog)'),
        rating=scalar(np.float32, '1..5 on review events, else NaN'),
        device=scalar(np.int32, 'index into schema.DEVICES (-1 in catalog)'),
        location=scalar(np.int32, 'location index, 0 unknown (-1 in catalog)'),
        hour=scalar(np.int32, 'local hour 0..23 (-1 in catalog)'),
        seller=scalar(np.int32, 'seller index (catalog; else -1)'),
        price=scalar(np.float32, 'price (catalog; else NaN)'),
        margin=scalar(np.float32, 'margin fraction (catalog; else NaN)'),
        created_at=scalar(np.int64, 'listing time (catalog; else -1)'),
        taxonomy=vector(np.int32, '[L] category path, root first (catalog)'),
        text=vector(np.int32, '[T] description token ids, 0 pad (catalog)'),
        image=vector(np.float32, '[D] image vector (catalog)'),
    )
    return self.dataset_info_from_configs(
        description=__doc__.split('\n\n')[0],
        features=tfds.features.FeaturesDict(features),
        metadata=tfds.core.MetadataDict(),
        # Keep rows in generation order: events by time, items by index.
        disable_shuffling=True,
        homepage='https://github.com/recjax',
    )

  def _split_generators(self, dl_manager):
    del dl_manager                     # nothing to download
    cfg = self.builder_config.marketplace
    ds = synthetic.generate_marketplace(cfg)
    self.info.metadata.update(
        num_users=ds.num_users, num_items=ds.num_items,
        num_sellers=cfg.num_sellers,
        category_parent=ds.catalog.category_parent.tolist(),
        category_names=ds.vocabs['category'].to_json(),
        cold_users=ds.cold_users.tolist(), cold_items=ds.cold_items.tolist())
    return {'train': self._generate_examples(events=ds.train),
            'test': self._generate_examples(events=ds.test),
            'catalog': self._generate_examples(catalog=ds.catalog)}

  def _generate_examples(self, events: Interactions = None,
                         catalog: Catalog = None):
    """Yields (row index, example) for events or for catalogue items."""
    if events is not None:
      n = len(events)
      cols = {f: getattr(events, f).astype(dt).tolist()
              for f, dt in _EVENT_FIELDS.items()}
      fill = dict(seller=-1, price=np.nan, margin=np.nan, created_at=-1,
                  **{f: np.zeros(0, dt) for f, dt in _CATALOG_VECTORS.items()})
    else:
      n = len(catalog)
      cols = {f: getattr(catalog, f).astype(dt).tolist()
              for f, dt in _CATALOG_SCALARS.items()}
      cols['item'] = list(range(n))
      rows = {f: np.asarray(getattr(catalog, f), dt)
              for f, dt in _CATALOG_VECTORS.items()}
      fill = {f: -1 for f in _EVENT_FIELDS if f not in ('item', 'rating')}
      fill['rating'] = np.nan
    for i in range(n):
      ex = dict(fill)
      ex.update({f: col[i] for f, col in cols.items()})
      if catalog is not None:
        ex.update({f: a[i] for f, a in rows.items()})
      yield i, ex
