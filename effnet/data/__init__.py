"""Photos and folders: decoding, class folders, the dataset, the flower photos (map: effnet/__init__.py)."""
