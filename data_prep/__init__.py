"""The encode stage: images -> VAE posteriors (or pixels) in MDS shards; run `python data_prep/encode.py`."""
