"""The filtering track: DataComp's baselines and others over a pool's metadata, written as subset files.

- ``pool.py``: a pool's metadata (parquet + npz, DataComp's format) from a
  published version's manifest or any folder, optionally restricted to a scale.
- ``baselines.py``: DataComp's baselines as masks over the pool's rows, and
  their composition.
- ``language.py``, ``text_entities.py``, ``image_based.py``: the models and
  data the baselines need, loaded from local files.
- ``run.py``: one baseline -> a subset file and its stats record.
"""
