"""`python -m train.train` in a checkout: the same as `hf-vanilla-train`."""

from hf_vanilla_transformer.cli.train import main

if __name__ == "__main__":
    main()
