"""Everything before training: raw corpora and image collections (``corpora``, ``image_sources``), the Spark prepare
jobs (``prepare``, ``images``), the prepared-dataset formats (``dataset``, ``documents``), the Petastorm loader
(``loader``, the only petastorm import), the token hash sets (``wordsets``) and generated corpora (``generate``). It
may import ``io`` and the top-level modules ``config``, ``codes``, ``resources``, ``progress`` (checked by
tests/test_layout.py).
"""
