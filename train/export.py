"""`python -m train.export` in a checkout: the same as `hf-vanilla-export`."""

from hf_vanilla_transformer.cli.export import main

if __name__ == "__main__":
    main()
