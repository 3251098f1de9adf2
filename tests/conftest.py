"""Shared tiny configs for the tests, and the `slow` marker (skipped unless RUN_SLOW=1)."""

import os
import socket
import threading

import pytest
import torch

from hf_vanilla_transformer import VanillaTransformerConfig, VanillaTransformerForConditionalGeneration

# Small enough that every test runs in well under a second on a laptop CPU. Dropout is off so that outputs are
# deterministic; tests that need it switch it on.
TINY = dict(
    vocab_size=40,
    d_model=16,
    d_ff=32,
    num_heads=2,
    encoder_layers=2,
    decoder_layers=2,
    dropout=0.0,
    max_position_embeddings=64,
)


def pytest_configure(config):
    config.addinivalue_line("markers", "slow: minutes on a CPU; runs only with RUN_SLOW=1")
    # Tiny tensors gain nothing from intra-op threads, and when the cores are busy OpenMP's hand-offs make every
    # op many times slower (measured: 25x on a loaded 2-core machine).
    torch.set_num_threads(1)


def pytest_collection_modifyitems(config, items):
    if os.environ.get("RUN_SLOW") == "1":
        return
    skip = pytest.mark.skip(reason="slow; set RUN_SLOW=1 to run")
    for item in items:
        if "slow" in item.keywords:
            item.add_marker(skip)


@pytest.fixture(scope="session")
def tiny_config():
    """`tiny_config(**overrides)` -> a `VanillaTransformerConfig` built on `TINY`."""

    def make(**overrides) -> VanillaTransformerConfig:
        return VanillaTransformerConfig(**{**TINY, **overrides})

    return make


@pytest.fixture(scope="session")
def tiny_model(tiny_config):
    """`tiny_model(**overrides)` -> a seeded `VanillaTransformerForConditionalGeneration` in eval mode."""

    def make(**overrides) -> VanillaTransformerForConditionalGeneration:
        torch.manual_seed(0)
        return VanillaTransformerForConditionalGeneration(tiny_config(**overrides)).eval()

    return make


@pytest.fixture
def umask_027():
    """The process umask 027 for one test: what the package saves must come out 0640 (files), 0750 (folders)."""
    old = os.umask(0o027)
    yield
    os.umask(old)


class Tripwire:
    """A proxy that records every connection made to it and answers none (closes it at once, so nothing waits)."""

    def __init__(self):
        self.server = socket.create_server(("127.0.0.1", 0))
        self.server.settimeout(0.2)
        self.url = f"http://127.0.0.1:{self.server.getsockname()[1]}"
        self.requests: list[str] = []
        self.running = True
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def _serve(self):
        while self.running:
            try:
                connection, _ = self.server.accept()
            except OSError:
                continue
            with connection:
                connection.settimeout(2)
                try:
                    self.requests.append(connection.recv(300).split(b"\r\n")[0].decode(errors="replace"))
                except OSError:
                    self.requests.append("(connection without a request)")

    def close(self):
        self.running = False
        self.thread.join()
        self.server.close()


@pytest.fixture
def tripwire():
    """A `Tripwire` to point HF_ENDPOINT or the proxy variables at: `tripwire.requests` lists what reached it."""
    wire = Tripwire()
    yield wire
    wire.close()
