"""The console scripts' code: hf-vanilla-train, -translate, -evaluate, -average, -visualize, -export, -convert.

Each module has a `main(argv)`; the scripts installed by pip and the thin ones in a checkout's `train/`
folder call it. The rest of the library never imports this package.
"""
