"""train.py's run: flags, the run itself, the loops, the recipe, the run folder, torchrun (map: effnet/__init__.py)."""
