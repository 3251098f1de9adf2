"""Saving and loading: a saved folder reloads through the Auto classes, with its own code where the package is not
installed (trust_remote_code), by repo id from the Hub cache offline, and with device_map / dtype options.

The last two tests share one fresh Python in which `import hf_vanilla_transformer` fails, with HF_HOME, the Hub
cache and the module cache inside a temporary folder and the Hub offline, so they neither read nor leave anything
outside it.
"""

import hashlib
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from transformers import AutoConfig, AutoModelForSeq2SeqLM

import hf_vanilla_transformer
from hf_vanilla_transformer import VanillaTransformerConfig, VanillaTransformerForConditionalGeneration

PACKAGE_DIR = Path(hf_vanilla_transformer.__file__).parent
CODE_FILES = ["configuration_vanilla_transformer.py", "modeling_vanilla_transformer.py"]


def ties(model):
    """(source and target embeddings are one tensor, the output projection is the target embedding)."""
    source, target = model.model.encoder.embed_tokens.weight, model.model.decoder.embed_tokens.weight
    return source is target, model.lm_head.weight is target


def make_inputs() -> dict:
    generator = torch.Generator().manual_seed(0)
    source = torch.randint(3, 40, (2, 7), generator=generator)
    mask = torch.ones_like(source)
    mask[1, 5:] = 0
    target = torch.randint(3, 40, (2, 4), generator=generator)
    return dict(input_ids=source, attention_mask=mask, decoder_input_ids=target)


def save_tiny_model(folder: Path, tiny_model):
    """A tiny model saved to `folder`; returns its logits on `make_inputs()` and the model."""
    model = tiny_model(norm_position="pre")
    with torch.no_grad():  # LayerNorm weights away from 1/0 so a norm that failed to load shows in the logits
        for module in model.modules():
            if isinstance(module, torch.nn.LayerNorm):
                module.weight.uniform_(0.5, 1.5)
                module.bias.uniform_(-0.5, 0.5)
    model.save_pretrained(folder)
    with torch.no_grad():
        logits = model(**make_inputs()).logits
    return logits, model


@pytest.fixture
def inputs():
    return make_inputs()


@pytest.fixture
def saved(tmp_path, tiny_model):
    folder = tmp_path / "model"
    logits, model = save_tiny_model(folder, tiny_model)
    return folder, logits, model


def test_saved_folder_holds_weights_config_with_auto_map_and_code(saved):
    folder, _, model = saved
    assert (folder / "model.safetensors").is_file()
    assert not list(folder.glob("*.bin"))
    config = json.loads((folder / "config.json").read_text())
    assert config["model_type"] == "vanilla_transformer"
    assert config["auto_map"] == {
        "AutoConfig": "configuration_vanilla_transformer.VanillaTransformerConfig",
        "AutoModelForSeq2SeqLM": "modeling_vanilla_transformer.VanillaTransformerForConditionalGeneration",
    }
    for name in CODE_FILES:
        assert (folder / name).read_text() == (PACKAGE_DIR / name).read_text()
    # Tied weights are stored once.
    stored = load_file(folder / "model.safetensors")
    assert sum("embed_tokens" in key or "lm_head" in key for key in stored) == 1
    generation = json.loads((folder / "generation_config.json").read_text())
    assert generation["decoder_start_token_id"] == model.config.decoder_start_token_id


def test_auto_model_reloads_identical_logits_with_ties(saved, inputs):
    folder, logits, _ = saved
    config = AutoConfig.from_pretrained(folder)
    assert isinstance(config, VanillaTransformerConfig) and config.norm_position == "pre"
    reloaded = AutoModelForSeq2SeqLM.from_pretrained(folder)
    assert type(reloaded) is VanillaTransformerForConditionalGeneration
    assert ties(reloaded) == (True, True)
    assert reloaded.lm_head.weight is reloaded.model.encoder.embed_tokens.weight
    assert not reloaded.training
    with torch.no_grad():
        torch.testing.assert_close(reloaded(**inputs).logits, logits, atol=0, rtol=0)


@pytest.mark.parametrize("share, tie", [(False, True), (True, False), (False, False)])
def test_untied_variants_reload_with_their_ties(tmp_path, tiny_model, inputs, share, tie):
    model = tiny_model(share_encoder_decoder_embeddings=share, tie_word_embeddings=tie)
    model.save_pretrained(tmp_path)
    reloaded = AutoModelForSeq2SeqLM.from_pretrained(tmp_path)
    assert ties(reloaded) == (share, tie)
    for name, weight in model.state_dict().items():
        torch.testing.assert_close(reloaded.state_dict()[name], weight, atol=0, rtol=0, msg=name)
    with torch.no_grad():
        torch.testing.assert_close(reloaded(**inputs).logits, model(**inputs).logits, atol=0, rtol=0)


def test_device_map_auto_loads_on_cpu(saved, inputs):
    pytest.importorskip("accelerate")
    folder, logits, _ = saved
    reloaded = AutoModelForSeq2SeqLM.from_pretrained(folder, device_map="auto")
    assert {p.device.type for p in reloaded.parameters()} == {"cpu"}
    assert ties(reloaded) == (True, True)
    with torch.no_grad():
        torch.testing.assert_close(reloaded(**inputs).logits, logits, atol=0, rtol=0)


def test_load_with_eager_attention_and_in_bfloat16(saved, inputs):
    folder, logits, _ = saved
    eager = AutoModelForSeq2SeqLM.from_pretrained(folder, attn_implementation="eager")
    assert eager.config._attn_implementation == "eager"
    half = AutoModelForSeq2SeqLM.from_pretrained(folder, dtype=torch.bfloat16)
    assert half.dtype == torch.bfloat16 and ties(half) == (True, True)
    with torch.no_grad():
        torch.testing.assert_close(eager(**inputs).logits, logits, atol=1e-5, rtol=0)
        # The sinusoid buffer is not in the checkpoint and stays float32; the model must still run in bfloat16.
        half_logits = half(**inputs).logits
    assert half_logits.dtype == torch.bfloat16
    torch.testing.assert_close(half_logits.float(), logits, atol=0.1, rtol=0.05)


# --- In a fresh Python without the package: remote code from a folder, and by repo id from the Hub cache offline ---

# Runs in the subprocess. argv: a JSON object with "sources" (folders or repo ids to load), "inputs" and "output"
# (paths of torch.save files).
CHILD = r"""
import importlib.abc, json, sys
args = json.loads(sys.argv[1])


class BlockPackage(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name == "hf_vanilla_transformer" or name.startswith("hf_vanilla_transformer."):
            raise ModuleNotFoundError(f"blocked for this test: {name}", name=name)
        return None


sys.meta_path.insert(0, BlockPackage())
try:
    import hf_vanilla_transformer
except ModuleNotFoundError:
    pass
else:
    raise SystemExit("hf_vanilla_transformer is still importable")

import torch
from huggingface_hub import constants
from transformers import AutoConfig, AutoModelForSeq2SeqLM

torch.set_num_threads(1)
assert constants.HF_HUB_OFFLINE
inputs = torch.load(args["inputs"])
results = {}
for source in args["sources"]:
    config = AutoConfig.from_pretrained(source, trust_remote_code=True)
    model = AutoModelForSeq2SeqLM.from_pretrained(source, trust_remote_code=True)
    with torch.no_grad():
        logits = model(**inputs).logits
    results[source] = {
        "config_class": type(config).__name__,
        "model_class": type(model).__name__,
        "model_module": type(model).__module__,
        "tied": model.lm_head.weight is model.model.encoder.embed_tokens.weight,
        "logits": logits,
    }
assert "hf_vanilla_transformer" not in sys.modules
torch.save(results, args["output"])
"""

REPO_ID = "user/tiny-vanilla"


def build_hub_cache(cache: Path, repo_id: str, folder: Path) -> str:
    """The layout huggingface_hub writes when it downloads a repo: blobs by hash, a snapshot per commit, refs/main."""
    commit = hashlib.sha1(repo_id.encode()).hexdigest()  # any 40-hex string names a commit
    repo = cache / ("models--" + repo_id.replace("/", "--"))
    (repo / "blobs").mkdir(parents=True)
    snapshot = repo / "snapshots" / commit
    snapshot.mkdir(parents=True)
    for file in folder.iterdir():
        blob = repo / "blobs" / hashlib.sha256(file.read_bytes()).hexdigest()
        shutil.copyfile(file, blob)
        (snapshot / file.name).symlink_to(os.path.relpath(blob, snapshot))
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(commit)
    return commit


@pytest.fixture(scope="module")
def fresh_python(tmp_path_factory, tiny_model):
    """One subprocess (starting Python with torch takes seconds) loads the saved folder and the same files by repo id.

    Returns (the child's results by source, the parent's logits, the folder, the child's module cache).
    """
    root = tmp_path_factory.mktemp("fresh_python")
    folder = root / "model"
    logits, _ = save_tiny_model(folder, tiny_model)
    build_hub_cache(root / "hub", REPO_ID, folder)
    torch.save(make_inputs(), root / "inputs.pt")

    hf_variables = ("HF_", "HUGGINGFACE_", "TRANSFORMERS_")
    env = {key: value for key, value in os.environ.items() if not key.startswith(hf_variables)}
    env.pop("PYTHONPATH", None)
    env.update(
        HF_HOME=str(root / "hf_home"),
        HF_HUB_CACHE=str(root / "hub"),
        HF_MODULES_CACHE=str(root / "modules"),
        HF_HUB_OFFLINE="1",
        TRANSFORMERS_OFFLINE="1",
        HF_HUB_DISABLE_TELEMETRY="1",
    )
    args = dict(sources=[str(folder), REPO_ID], inputs=str(root / "inputs.pt"), output=str(root / "out.pt"))
    work = root / "cwd"  # not the repository, so the package is not importable from the current directory
    work.mkdir()
    done = subprocess.run(
        [sys.executable, "-c", CHILD, json.dumps(args)], cwd=work, env=env, capture_output=True, text=True, timeout=180
    )
    assert done.returncode == 0, done.stderr[-3000:]
    return torch.load(root / "out.pt"), logits, folder, root / "modules"


def test_trust_remote_code_loads_where_the_package_is_not_installed(fresh_python):
    results, logits, folder, modules = fresh_python
    result = results[str(folder)]
    assert result["config_class"] == "VanillaTransformerConfig"
    assert result["model_class"] == "VanillaTransformerForConditionalGeneration"
    assert result["model_module"].startswith("transformers_modules.")  # the folder's copy of the code
    assert result["tied"]
    torch.testing.assert_close(result["logits"], logits, atol=1e-6, rtol=0)
    assert list(modules.rglob("modeling_vanilla_transformer.py"))  # the module cache stayed in tmp_path


def test_loading_by_repo_id_from_the_hub_cache_offline(fresh_python):
    results, logits, _, _ = fresh_python
    result = results[REPO_ID]
    assert result["config_class"] == "VanillaTransformerConfig"
    assert result["model_module"].startswith("transformers_modules.")
    assert result["tied"]
    torch.testing.assert_close(result["logits"], logits, atol=1e-6, rtol=0)
