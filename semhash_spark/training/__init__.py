"""Fitting models: the launchers and each rank's loop (``fit``), pretraining and fine-tuning (``train``), the engines'
adapters (``distributed``: the only horovod import; ``torch_dist``), and the image, k-means and documents_vae fits.
Validation uses evaluation's measures. It may import ``evaluation``, ``models``, ``data``, ``io`` and the top-level
modules ``config``, ``codes``, ``resources``, ``progress`` (checked by tests/test_layout.py).
"""
