"""Entry points users run: train, translate, evaluate, average checkpoints."""
