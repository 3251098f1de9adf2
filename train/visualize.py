"""`python -m train.visualize` in a checkout: the same as `hf-vanilla-visualize`."""

from hf_vanilla_transformer.cli.visualize import main

if __name__ == "__main__":
    main()
