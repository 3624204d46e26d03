"""The write side: HTTP commands, pure aggregates, the outbox and its publisher."""
