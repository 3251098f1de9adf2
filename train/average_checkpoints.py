"""`python -m train.average_checkpoints` in a checkout: the same as `hf-vanilla-average`."""

from hf_vanilla_transformer.cli.average_checkpoints import main

if __name__ == "__main__":
    main()
