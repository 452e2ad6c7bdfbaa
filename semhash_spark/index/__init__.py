"""The published index and everything that reads or writes it: shard layout, manifest and atomic publish
(``published``), the one reader and query module (``query``), multi-index hashing and the address table with their
numba kernels, reader leases, the encode, re-index and near-duplicate jobs, and the library lookups (``lookup``,
``image_lookup``). It may import ``models``, ``data``, ``io`` and the top-level modules ``config``, ``codes``,
``resources``, ``progress`` (checked by tests/test_layout.py).
"""
