"""What a checkout runs: `python -m train.train ...` and the like, each calling `hf_vanilla_transformer.cli`.

This folder is not packaged; `pip install` gives the same commands as `hf-vanilla-train`, `hf-vanilla-translate`,
`hf-vanilla-evaluate`, `hf-vanilla-average`, `hf-vanilla-visualize`, `hf-vanilla-export` and `hf-vanilla-convert`.
"""
