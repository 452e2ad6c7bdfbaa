"""Retrieval quality: metrics (P@k, MAP, mAP@1000, precision-recall), the baselines (TF-IDF, LSA, LSH, pixel hashing),
the papers' address-ball evaluation, bit statistics, plots and the ``semhash evaluate`` assessments for documents
and images. It may import ``index``, ``models``, ``data``, ``io`` and the top-level modules ``config``, ``codes``,
``resources``, ``progress`` (checked by tests/test_layout.py).
"""
