"""`python -m train.translate` in a checkout: the same as `hf-vanilla-translate`."""

from hf_vanilla_transformer.cli.translate import main

if __name__ == "__main__":
    main()
