"""Model parts: the named random-weight architectures (``factory``) and the project tokenizer (``vocab``)."""
