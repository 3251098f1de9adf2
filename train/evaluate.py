"""`python -m train.evaluate` in a checkout: the same as `hf-vanilla-evaluate`."""

from hf_vanilla_transformer.cli.evaluate import main

if __name__ == "__main__":
    main()
