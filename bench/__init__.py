"""The eventfold benchmark harness: `python -m bench --help`."""
