"""Built-in stage types, one module each; the contract lives in `base.py`."""
