"""The hashing networks and their files: the papers' RBMs and deep autoencoder, the documents_vae and k-means
patch-feature hashers (torch), ``inference`` (the encoder's forward pass in numpy, for lookups without torch),
``checkpoint`` (self-describing safetensors + JSON model files) and ``msh`` (multiple semantic hashing's retina
glimpses and patch scoring). It may import ``io`` and the top-level modules ``config``, ``codes``, ``resources``,
``progress`` (checked by tests/test_layout.py).
"""
