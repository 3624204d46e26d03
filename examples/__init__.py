"""Example domains served by eventfold; `examples.bank` is the default app."""
