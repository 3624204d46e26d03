"""The fault-injection harness: drive commands while killing, pausing and
restarting the parts of a local eventfold deployment, then check with an oracle
that no acknowledged command was lost and the read model equals the topic.

Run it with `python -m chaos --duration 600` (see `chaos/__main__.py`).
"""
