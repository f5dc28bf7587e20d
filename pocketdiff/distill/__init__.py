"""Training stages and the resumable training loop they share."""
