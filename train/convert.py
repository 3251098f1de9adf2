"""`python -m train.convert` in a checkout: the same as `hf-vanilla-convert`."""

from hf_vanilla_transformer.cli.convert import main

if __name__ == "__main__":
    main()
