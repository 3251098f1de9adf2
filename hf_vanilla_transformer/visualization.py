"""See inside a model: attention maps, positional encodings and training curves as PNG figures.

Data functions return tensors and lists, so their numbers can be checked and reused:
`collect_attention` (translate a sentence, then re-run the model on it with the weights of every head),
`cross_attention_alignment`, `position_table`, `positional_encoding_table`, `dot_product_by_distance`,
`load_log_history`, `training_curves`. Plot functions take those and write a PNG: `plot_attention`,
`plot_attention_heads`, `plot_alignment`, `plot_positional_encoding`, `plot_training_curves`.
`visualize` does all of it for one sentence and writes `report.html` beside the figures.

Plotting needs matplotlib (`pip install 'hf-vanilla-transformer[viz]'`). Figures are drawn on matplotlib's
Agg canvas without pyplot, so no window opens and the caller's pyplot backend and figure list stay untouched.
"""

from __future__ import annotations

import html
import json
import logging
import math
import os
import re
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import torch

from .model_source import check_model_folder
from .modeling_vanilla_transformer import sinusoid_table

logger = logging.getLogger(__name__)

VIZ_INSTALL_HINT = "pip install 'hf-vanilla-transformer[viz]'"
_METASPACE = "▁"
DPI = 100
# What a Trainer's log_history may hold, in the order the subplots appear.
CURVES = ("loss", "eval_loss", "eval_bleu", "learning_rate", "grad_norm")
_CURVE_TITLES = {
    "loss": "training loss",
    "eval_loss": "validation loss",
    "eval_bleu": "validation BLEU",
    "learning_rate": "learning rate",
    "grad_norm": "gradient norm",
}
KINDS = ("encoder_self_attention", "decoder_self_attention", "cross_attention")


# --- Data: attention weights of one sentence ---


@dataclass
class AttentionMaps:
    """The attention weights of every layer and head for one source sentence and its target.

    Rows are queries, columns keys; each row sums to 1. Decoder position i reads `target_tokens[i]`
    (`<s>` then the translation) and predicts `predicted_tokens[i]` (the translation then `</s>`).
    """

    source: str
    translation: str
    source_ids: list[int]
    decoder_input_ids: list[int]
    source_tokens: list[str]
    target_tokens: list[str]
    predicted_tokens: list[str]
    encoder: torch.Tensor  # (layers, heads, src_len, src_len)
    decoder: torch.Tensor  # (layers, heads, tgt_len, tgt_len), zero above the diagonal
    cross: torch.Tensor  # (layers, heads, tgt_len, src_len)

    def weights(self, kind: str) -> torch.Tensor:
        if kind not in KINDS:
            raise ValueError(f"kind must be one of {KINDS}, got {kind!r}.")
        return {"encoder_self_attention": self.encoder, "decoder_self_attention": self.decoder, "cross_attention": self.cross}[kind]

    def labels(self, kind: str) -> tuple[list[str], list[str]]:
        """(row labels, column labels) for `kind`."""
        if kind == "encoder_self_attention":
            return self.source_tokens, self.source_tokens
        if kind == "decoder_self_attention":
            return self.target_tokens, self.target_tokens
        if kind == "cross_attention":
            return self.predicted_tokens, self.source_tokens
        raise ValueError(f"kind must be one of {KINDS}, got {kind!r}.")


def readable_tokens(tokenizer, ids: Sequence[int]) -> list[str]:
    """Token strings for axis labels: the metaspace marker '▁' of a word's first piece is dropped, and a piece
    that continues a word gets a leading '-' ("▁tusrun", "lenfal" -> "tusrun", "-lenfal")."""
    tokens = tokenizer.convert_ids_to_tokens([int(i) for i in ids])
    special = set(getattr(tokenizer, "all_special_tokens", []))
    uses_metaspace = any(token.startswith(_METASPACE) for token in tokens)
    readable = []
    for token in tokens:
        if token in special:
            readable.append(token)
        elif token.startswith(_METASPACE):
            readable.append(token[len(_METASPACE):] or "␣")
        else:
            readable.append(f"-{token}" if uses_metaspace else token)
    return readable


@contextmanager
def eager_attention(model) -> Iterator[None]:
    """Run `model` with the "eager" attention kernel (the one that returns weights), in eval mode; restore after."""
    previous, was_training = model.config._attn_implementation, model.training
    model.set_attn_implementation("eager")
    model.eval()
    try:
        yield
    finally:
        model.set_attn_implementation(previous)
        model.train(was_training)


def _generated_target(model, batch: dict, generate_kwargs: dict) -> list[int]:
    """The generated ids after the decoder start token, up to and including the first `</s>`."""
    output = model.generate(**batch, **generate_kwargs)[0].tolist()
    ids = output[1:]  # drop decoder_start_token_id
    eos = model.config.eos_token_id
    if eos in ids:
        ids = ids[: ids.index(eos) + 1]
    return ids


@torch.no_grad()
def collect_attention(model, tokenizer, source: str, target: str | None = None, **generate_kwargs) -> AttentionMaps:
    """Translate `source` (or take the given `target`), then run the model once more on the pair with
    `output_attentions=True` under the eager kernel and return every layer's and head's weights.

    `generate_kwargs` go to `model.generate` (e.g. `num_beams=1` for greedy); by default the model's
    generation_config decides. The decoder is fed `<s>` + target, the way it is trained (§3.1).
    """
    if not isinstance(source, str) or not source.strip():
        raise ValueError(f"source must be a non-empty sentence (str), got {source!r}.")
    batch = tokenizer([source], return_tensors="pt")
    batch = {k: v.to(model.device) for k, v in batch.items() if k in ("input_ids", "attention_mask")}
    with eager_attention(model):
        if target is None:
            labels = _generated_target(model, batch, generate_kwargs)
        else:
            labels = tokenizer(text_target=[target])["input_ids"][0]
        if not labels:
            raise ValueError("The model produced an empty translation; there is no target to look at.")
        decoder_input_ids = [model.config.decoder_start_token_id] + labels[:-1]  # shifted right
        outputs = model(
            **batch,
            decoder_input_ids=torch.tensor([decoder_input_ids], device=model.device),
            output_attentions=True,
            use_cache=False,
        )

    def stack(weights: tuple[torch.Tensor, ...]) -> torch.Tensor:
        return torch.stack([w[0] for w in weights]).float().cpu()  # (layers, heads, q_len, k_len)

    return AttentionMaps(
        source=source,
        translation=tokenizer.decode(labels, skip_special_tokens=True).strip(),
        source_ids=batch["input_ids"][0].tolist(),
        decoder_input_ids=decoder_input_ids,
        source_tokens=readable_tokens(tokenizer, batch["input_ids"][0].tolist()),
        target_tokens=readable_tokens(tokenizer, decoder_input_ids),
        predicted_tokens=readable_tokens(tokenizer, labels),
        encoder=stack(outputs.encoder_attentions),
        decoder=stack(outputs.decoder_attentions),
        cross=stack(outputs.cross_attentions),
    )


def cross_attention_alignment(maps: AttentionMaps, layer: int | None = -1) -> torch.Tensor:
    """Soft alignment of target to source tokens, (tgt_len, src_len): the cross-attention weights averaged over
    the heads of decoder layer `layer` (default: the last), or over all layers and heads with `layer=None`."""
    if layer is None:
        return maps.cross.mean(dim=(0, 1))
    check_index("layer", layer, maps.cross.shape[0], "decoder layers")
    return maps.cross[layer].mean(dim=0)


def check_index(name: str, index: int, size: int, what: str) -> None:
    """Raise a ValueError naming the valid range when `index` does not address one of `size` items."""
    if isinstance(index, bool) or not isinstance(index, int) or not -size <= index < size:
        raise ValueError(
            f"{name} {index!r} is out of range: the model has {size} {what}, so use 0..{size - 1} "
            f"(or -{size}..-1 counting from the last)."
        )


def check_layer_and_head(config, layer: int, head: int) -> None:
    """Check a layer index against both stacks and a head index against `num_heads`, with the valid ranges."""
    check_index("layer", layer, min(config.encoder_layers, config.decoder_layers), "layers in its smaller stack")
    check_index("head", head, config.num_heads, "attention heads")


# --- Data: positions (§3.5) ---


def positional_encoding_table(num_positions: int, d_model: int) -> torch.Tensor:
    """§3.5 sinusoids, (num_positions, d_model): PE(pos, 2i) = sin(pos / 10000^(2i/d_model)), PE(pos, 2i+1) = cos(...).

    The model's own table function, so a figure shows what the model adds to its embeddings.
    """
    if num_positions < 1 or d_model < 2 or d_model % 2:
        raise ValueError(f"Need num_positions >= 1 and an even d_model >= 2, got {num_positions} and {d_model}.")
    return sinusoid_table(num_positions, d_model)


def position_table(model, num_positions: int) -> torch.Tensor:
    """What `model` adds for positions 0..num_positions-1: its sinusoids, or its learned vectors (Table 3 row E)."""
    config = model.config
    if config.position_embedding == "learned":
        weight = model.get_encoder().embed_positions.weight
        if num_positions > weight.shape[0]:
            raise ValueError(
                f"num_positions={num_positions} exceeds the learned table's max_position_embeddings={weight.shape[0]}."
            )
        return weight[:num_positions].detach().float().cpu()
    return positional_encoding_table(num_positions, config.d_model)


def dot_product_by_distance(table: torch.Tensor, max_distance: int) -> torch.Tensor:
    """PE(p)·PE(p+k) for k = 0..max_distance, averaged over p. For sinusoids it depends on k only:
    sum_i cos(k / 10000^(2i/d_model)), largest at k = 0 and falling off with distance."""
    if not 0 <= max_distance < table.shape[0]:
        raise ValueError(f"max_distance must be in 0..{table.shape[0] - 1} for a table of {table.shape[0]} positions.")
    table = table.double()
    return torch.stack(
        [(table[: table.shape[0] - k] * table[k:]).sum(-1).mean() for k in range(max_distance + 1)]
    ).float()


# --- Data: training curves ---


def _trainer_state_path(path: str | os.PathLike) -> Path:
    path = Path(path)
    if path.is_file():
        return path
    if not path.is_dir():
        raise FileNotFoundError(f"No trainer state at {path}: give a trainer_state.json file or a run folder.")
    if (path / "trainer_state.json").is_file():
        return path / "trainer_state.json"
    checkpoints = [p for p in path.glob("checkpoint-*/trainer_state.json") if re.fullmatch(r"checkpoint-\d+", p.parent.name)]
    if not checkpoints:
        raise FileNotFoundError(
            f"{path} holds no trainer_state.json and no checkpoint-N/trainer_state.json; the Trainer writes it with "
            "every checkpoint. Point at the file itself."
        )
    return max(checkpoints, key=lambda p: int(p.parent.name.split("-")[1]))


def load_log_history(path: str | os.PathLike) -> list[dict]:
    """The `log_history` of a Trainer run: from a trainer_state.json, a run folder holding one, or the run
    folder's newest checkpoint-N/."""
    path = _trainer_state_path(path)
    try:
        state = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as error:
        raise ValueError(f"{path} is not valid JSON ({error}).") from error
    history = state.get("log_history") if isinstance(state, dict) else None
    if not isinstance(history, list) or not history:
        raise ValueError(
            f"{path} has no log_history entries, so there are no curves to draw. It should be the "
            "trainer_state.json that transformers' Trainer writes (with logging_steps > 0)."
        )
    return history


def training_curves(log_history: list[dict]) -> dict[str, tuple[list[int], list[float]]]:
    """{name: (steps, values)} for each of `CURVES` logged at least once. The end-of-run summary (`train_loss`,
    the average over the whole run) is not a point of the curve and is left out."""
    curves: dict[str, tuple[list[int], list[float]]] = {}
    for entry in log_history:
        step = entry.get("step")
        if step is None:
            continue
        for name in CURVES:
            value = entry.get(name)
            if isinstance(value, (int, float)) and math.isfinite(value):
                steps, values = curves.setdefault(name, ([], []))
                steps.append(int(step))
                values.append(float(value))
    if not curves:
        raise ValueError(f"The log history holds none of {CURVES}; nothing to plot.")
    return {name: curves[name] for name in CURVES if name in curves}


# --- Plots ---


def require_matplotlib():
    """Import matplotlib's Figure and Agg canvas, or raise an ImportError that says how to install it."""
    try:
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure
    except ImportError as error:
        raise ImportError(f"Drawing figures needs matplotlib, which is not installed: {VIZ_INSTALL_HINT}") from error
    return Figure, FigureCanvasAgg


def new_figure(width: float, height: float):
    """A figure on matplotlib's Agg canvas, not registered with pyplot (nothing to close, no window)."""
    Figure, FigureCanvasAgg = require_matplotlib()
    figure = Figure(figsize=(width, height), dpi=DPI, layout="constrained")
    FigureCanvasAgg(figure)
    return figure


def save_figure(figure, path: str | os.PathLike) -> Path:
    """Write `figure` as a PNG at `DPI` (creating the folder) and free its contents."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=DPI)
    figure.clear()
    return path


def _side(count: int, per_token: float = 0.28, minimum: float = 2.5) -> float:
    return max(minimum, per_token * count)


def draw_heatmap(axes, weights: torch.Tensor, rows: Sequence[str], columns: Sequence[str], fontsize: float = 8):
    """Attention weights (rows: queries, columns: keys) on `axes`, on a fixed 0..1 colour scale, tokens as ticks."""
    image = axes.imshow(weights.numpy(), cmap="viridis", vmin=0.0, vmax=1.0, aspect="auto", interpolation="nearest")
    axes.set_xticks(range(len(columns)), columns, rotation=90, fontsize=fontsize)
    axes.set_yticks(range(len(rows)), rows, fontsize=fontsize)
    axes.tick_params(length=0)
    return image


def _check_weights(weights: torch.Tensor, rows: Sequence[str], columns: Sequence[str], dims: int) -> torch.Tensor:
    weights = torch.as_tensor(weights).detach().float().cpu()
    if weights.dim() != dims or tuple(weights.shape[-2:]) != (len(rows), len(columns)):
        raise ValueError(
            f"weights of shape {tuple(weights.shape)} do not match {len(rows)} row and {len(columns)} column labels "
            f"(expected {dims} dimensions ending in ({len(rows)}, {len(columns)}))."
        )
    return weights


def plot_attention(
    weights: torch.Tensor,
    row_tokens: Sequence[str],
    column_tokens: Sequence[str],
    path: str | os.PathLike,
    title: str = "",
    row_label: str = "query",
    column_label: str = "key",
    mark_max: bool = False,
) -> Path:
    """One head (or any average of heads) as a heatmap, (queries, keys), token strings on the axes."""
    weights = _check_weights(weights, row_tokens, column_tokens, 2)
    figure = new_figure(_side(len(column_tokens)) + 1.6, _side(len(row_tokens)) + 1.2)
    axes = figure.add_subplot()
    image = draw_heatmap(axes, weights, row_tokens, column_tokens, fontsize=8)
    if mark_max:
        best = weights.argmax(-1)
        axes.scatter(best.numpy(), range(len(row_tokens)), s=12, c="red", marker="o")
        title = f"{title}\n(red dot: largest weight in each row)"
    axes.set_xlabel(column_label, fontsize=9)
    axes.set_ylabel(row_label, fontsize=9)
    axes.set_title(title, fontsize=10)
    figure.colorbar(image, ax=axes, shrink=0.8, label="attention weight")
    return save_figure(figure, path)


def plot_attention_heads(
    weights: torch.Tensor,
    row_tokens: Sequence[str],
    column_tokens: Sequence[str],
    path: str | os.PathLike,
    title: str = "",
    columns_per_row: int = 4,
) -> Path:
    """Every head of one layer side by side, (heads, queries, keys), on one colour scale."""
    weights = _check_weights(weights, row_tokens, column_tokens, 3)
    heads = weights.shape[0]
    grid_columns = min(heads, columns_per_row)
    grid_rows = math.ceil(heads / grid_columns)
    fontsize = 7 if max(len(row_tokens), len(column_tokens)) <= 20 else 6
    panel_w, panel_h = _side(len(column_tokens), 0.2, 2.0) + 0.6, _side(len(row_tokens), 0.2, 2.0) + 0.6
    figure = new_figure(panel_w * grid_columns + 0.8, panel_h * grid_rows + 0.5)
    grid = figure.subplots(grid_rows, grid_columns, squeeze=False)
    image = None
    for index, axes in enumerate(grid.flat):
        if index >= heads:
            axes.axis("off")
            continue
        image = draw_heatmap(axes, weights[index], row_tokens, column_tokens, fontsize)
        axes.set_title(f"head {index}", fontsize=9)
        if index % grid_columns:
            axes.set_yticklabels([])
    figure.suptitle(title, fontsize=10)
    figure.colorbar(image, ax=grid, shrink=0.6, label="attention weight")
    return save_figure(figure, path)


def plot_alignment(maps: AttentionMaps, path: str | os.PathLike, layer: int | None = -1) -> Path:
    """The cross-attention alignment of `cross_attention_alignment`, a red dot on each row's largest weight."""
    alignment = cross_attention_alignment(maps, layer)
    if layer is None:
        which = "mean over all layers and heads"
    else:
        number = layer % maps.cross.shape[0]
        which = f"decoder layer {number}{' (the last)' if number == maps.cross.shape[0] - 1 else ''}, mean over heads"
    return plot_attention(
        alignment,
        maps.predicted_tokens,
        maps.source_tokens,
        path,
        title=f"Cross-attention alignment\n{which}",
        row_label="target token being predicted",
        column_label="source token",
        mark_max=True,
    )


def plot_positional_encoding(table: torch.Tensor, path: str | os.PathLike, title: str = "sinusoidal (§3.5)") -> Path:
    """Three panels: the table (position x dimension), PE(p)·PE(q) for all pairs, and PE(p)·PE(p+k) against k."""
    table = torch.as_tensor(table).detach().float().cpu()
    if table.dim() != 2 or table.shape[0] < 2:
        raise ValueError(f"table must be (positions >= 2, d_model), got shape {tuple(table.shape)}.")
    positions, d_model = table.shape
    figure = new_figure(14.0, 4.2)
    left, middle, right = figure.subplots(1, 3)
    image = left.imshow(table.numpy(), cmap="RdBu", vmin=-1.0, vmax=1.0, aspect="auto", interpolation="nearest")
    left.set_xlabel("dimension (even: sin, odd: cos)")
    left.set_ylabel("position")
    left.set_title(f"positional encoding, {positions} positions x {d_model} dims")
    figure.colorbar(image, ax=left, shrink=0.8)
    dots = (table @ table.T).numpy()
    image = middle.imshow(dots, cmap="magma", aspect="auto", interpolation="nearest")
    middle.set_xlabel("position q")
    middle.set_ylabel("position p")
    middle.set_title("PE(p) · PE(q)")
    figure.colorbar(image, ax=middle, shrink=0.8)
    by_distance = dot_product_by_distance(table, positions - 1)
    right.plot(range(positions), by_distance.numpy(), color="tab:blue")
    right.axhline(0.0, color="grey", linewidth=0.5)
    right.set_xlabel("distance k = |p - q|")
    right.set_ylabel("PE(p) · PE(p + k), mean over p")
    right.set_title("similarity falls off with distance")
    right.grid(alpha=0.3)
    figure.suptitle(f"Positions: {title}", fontsize=11)
    return save_figure(figure, path)


def plot_training_curves(source: str | os.PathLike | list[dict], path: str | os.PathLike, title: str = "") -> Path:
    """One subplot per logged quantity (training and validation loss share one), against the step.

    `source` is a log_history list, a trainer_state.json, or a run folder (see `load_log_history`).
    """
    history = source if isinstance(source, list) else load_log_history(source)
    curves = training_curves(history)
    panels: list[list[str]] = []
    losses = [name for name in ("loss", "eval_loss") if name in curves]
    if losses:
        panels.append(losses)
    panels += [[name] for name in curves if name not in ("loss", "eval_loss")]
    figure = new_figure(4.0 * len(panels) + 0.5, 3.4)
    grid = figure.subplots(1, len(panels), squeeze=False)[0]
    for axes, names in zip(grid, panels):
        for name in names:
            steps, values = curves[name]
            axes.plot(steps, values, marker="o" if len(steps) < 30 else None, markersize=3, label=_CURVE_TITLES[name])
        axes.set_xlabel("step")
        axes.set_title(" and ".join(_CURVE_TITLES[name] for name in names), fontsize=10)
        axes.grid(alpha=0.3)
        if len(names) > 1:
            axes.legend(fontsize=8)
        if names == ["learning_rate"]:
            axes.ticklabel_format(axis="y", style="sci", scilimits=(0, 0))
    figure.suptitle(title or "Training curves", fontsize=11)
    return save_figure(figure, path)


# --- Everything for one sentence ---


def load_model(folder: str | os.PathLike, device: str | None = None):
    """(model, tokenizer) from a trained model folder, with a clear error when it is not one."""
    folder = check_model_folder(folder)
    from .translation import load_translation_model

    return load_translation_model(str(folder), device=device)


def figure_name(kind: str, layer: int, head: int | None = None) -> str:
    return f"{kind}_layer{layer}_{'all_heads' if head is None else f'head{head}'}.png"


_TITLES = {
    "encoder_self_attention": "Encoder self-attention",
    "decoder_self_attention": "Decoder masked self-attention",
    "cross_attention": "Encoder-decoder (cross) attention",
}
_AXES = {
    "encoder_self_attention": ("source token (query)", "source token (key)"),
    "decoder_self_attention": ("decoder input (query)", "decoder input (key)"),
    "cross_attention": ("target token being predicted (query)", "source token (key)"),
}


def plot_maps(maps: AttentionMaps, output_dir: str | os.PathLike, layer: int = -1, head: int = 0) -> dict[str, Path]:
    """For each kind of attention: one heatmap of (`layer`, `head`) and a grid of all heads of `layer`;
    then the alignment (last decoder layer, mean over heads)."""
    output_dir = Path(output_dir)
    paths: dict[str, Path] = {}
    for kind in KINDS:
        weights = maps.weights(kind)
        layers = weights.shape[0]
        check_index("layer", layer, layers, "layers")
        check_index("head", head, weights.shape[1], "attention heads")
        number, head_number = layer % layers, head % weights.shape[1]
        rows, columns = maps.labels(kind)
        row_label, column_label = _AXES[kind]
        paths[f"{kind}_head"] = plot_attention(
            weights[layer, head], rows, columns, output_dir / figure_name(kind, number, head_number),
            title=f"{_TITLES[kind]}, layer {number}, head {head_number}", row_label=row_label, column_label=column_label,
        )
        paths[f"{kind}_heads"] = plot_attention_heads(
            weights[layer], rows, columns, output_dir / figure_name(kind, number),
            title=f"{_TITLES[kind]}, layer {number}, all heads (rows: queries, columns: keys)",
        )
    paths["alignment"] = plot_alignment(maps, output_dir / "cross_attention_alignment.png")
    return paths


_CAPTIONS = {
    "encoder_self_attention_head": "Encoder self-attention of one head: row i shows how source token i spreads its attention over the source (each row sums to 1).",
    "encoder_self_attention_heads": "All heads of the same encoder layer: heads learn different patterns.",
    "decoder_self_attention_head": "Decoder masked self-attention: position i sees only positions ≤ i, so everything above the diagonal is exactly 0 (§3.1).",
    "decoder_self_attention_heads": "All heads of the same decoder layer.",
    "cross_attention_head": "Cross-attention of one head: the row of each target token shows which source tokens the decoder read to predict it.",
    "cross_attention_heads": "All cross-attention heads of the same decoder layer.",
    "alignment": "Cross-attention averaged over the heads of the last decoder layer: a soft word alignment (red dot: each row's largest weight).",
    "positional_encoding": "The position vectors added to the embeddings (position x dimension), and the dot product of two positions; for the sinusoids of §3.5 it depends only on their distance.",
    "training_curves": "Training curves from the run's trainer_state.json.",
}


def write_report(maps: AttentionMaps, figures: dict[str, Path], path: str | os.PathLike, settings: str = "") -> Path:
    """An HTML page with the sentence, its translation and tokens, and the figures (linked relative to the page)."""
    path = Path(path)
    escape = html.escape
    parts = [
        "<!DOCTYPE html>",
        '<html><head><meta charset="utf-8"><title>Inside the Transformer: one sentence</title>',
        "<style>body{font-family:sans-serif;max-width:1100px;margin:2em auto;padding:0 1em}"
        "img{max-width:100%;border:1px solid #ddd}figure{margin:2em 0}code{background:#f4f4f4}</style></head><body>",
        "<h1>Inside the Transformer: one sentence</h1>",
        f"<p><b>Source:</b> {escape(maps.source)}</p>",
        f"<p><b>Translation:</b> {escape(maps.translation)}</p>",
        f"<p><b>Source tokens:</b> <code>{escape(' '.join(maps.source_tokens))}</code><br>",
        f"<b>Decoder inputs:</b> <code>{escape(' '.join(maps.target_tokens))}</code><br>",
        f"<b>Predicted tokens:</b> <code>{escape(' '.join(maps.predicted_tokens))}</code></p>",
    ]
    if settings:
        parts.append(f"<p>{escape(settings)}</p>")
    for name, figure_path in figures.items():
        relative = os.path.relpath(figure_path, path.parent)
        caption = _CAPTIONS.get(name, name)
        parts.append(
            f'<figure><img src="{escape(relative)}" alt="{escape(name)}"><figcaption>{escape(caption)}</figcaption></figure>'
        )
    parts.append("</body></html>")
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(parts) + "\n", encoding="utf-8")
    return path


def visualize(
    model,
    tokenizer,
    source: str,
    output_dir: str | os.PathLike,
    layer: int = -1,
    head: int = 0,
    trainer_state: str | os.PathLike | None = None,
    target: str | None = None,
    num_positions: int = 100,
    **generate_kwargs,
) -> dict[str, Path]:
    """All figures for one sentence plus `report.html`, in `output_dir`; returns {name: path}.

    `model` may be a model folder (then `tokenizer` may be None). `trainer_state` (a trainer_state.json or a
    run folder) adds the training curves. The model's own translation is shown unless `target` is given;
    `generate_kwargs` go to `model.generate`.
    """
    if isinstance(model, (str, os.PathLike)):
        model, loaded = load_model(model)
        tokenizer = tokenizer or loaded
    check_layer_and_head(model.config, layer, head)
    require_matplotlib()  # fail before the slow part
    maps = collect_attention(model, tokenizer, source, target, **generate_kwargs)
    output_dir = Path(output_dir)
    figures = plot_maps(maps, output_dir, layer, head)
    kind = "learned (Table 3 row E)" if model.config.position_embedding == "learned" else "sinusoidal (§3.5)"
    num_positions = min(num_positions, model.config.max_position_embeddings)
    figures["positional_encoding"] = plot_positional_encoding(
        position_table(model, num_positions), output_dir / "positional_encoding.png", title=kind
    )
    if trainer_state is not None:
        figures["training_curves"] = plot_training_curves(trainer_state, output_dir / "training_curves.png")
    decoding = ", ".join(f"{k}={v}" for k, v in generate_kwargs.items()) or "the model's generation_config"
    decoding = "the given target (teacher forcing)" if target is not None else f"translated with {decoding}"
    layers = min(model.config.encoder_layers, model.config.decoder_layers)
    settings = (
        f"Target: {decoding}. Heatmaps show layer {layer % layers} (of 0..{layers - 1}) and head "
        f"{head % model.config.num_heads} (of 0..{model.config.num_heads - 1})."
    )
    figures["report"] = write_report(maps, figures, output_dir / "report.html", settings)
    logger.info("Wrote %d files to %s", len(figures), output_dir)
    return figures


__all__ = [
    "AttentionMaps",
    "check_layer_and_head",
    "collect_attention",
    "cross_attention_alignment",
    "dot_product_by_distance",
    "draw_heatmap",
    "eager_attention",
    "load_log_history",
    "load_model",
    "new_figure",
    "plot_alignment",
    "plot_attention",
    "plot_attention_heads",
    "plot_maps",
    "plot_positional_encoding",
    "plot_training_curves",
    "position_table",
    "positional_encoding_table",
    "readable_tokens",
    "save_figure",
    "require_matplotlib",
    "training_curves",
    "visualize",
    "write_report",
]
