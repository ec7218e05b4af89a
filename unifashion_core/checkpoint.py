"""Checkpoint directories, written atomically and loadable on their own (docs/design.md section 8).

Training writes them; retrieval, inference, the benches and phase 2 read them, so they live at
the core's top level rather than inside ``train/``.

Layout: ``config.yaml`` (the resolved recipe), ``model.safetensors`` (every weight that cannot be
rebuilt from its source: frozen pretrained vision/LLM/VAE weights are referenced, not copied),
``tokenizer/``, ``meta.json`` (version, git SHA, fingerprint, stage, step, metrics) and, for
``--resume``, ``training_state.pt`` (optimiser, scheduler, RNG states, data position).
"""

import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from unifashion_core import __version__
from unifashion_core.config import ModelConfig, Recipe, dump_recipe, load_recipe
from unifashion_core.errors import UserError
from unifashion_core.fileio import atomic_dir, read_json, refuse_corrupt, write_json, write_text_atomic
from unifashion_core.models.unifashion import UniFashion, build_model
from unifashion_core.models.vision import trainable_prefixes

FORMAT_VERSION = 1
REMEDY = "restore the checkpoint from a copy or train it again"


def _git_sha() -> str:
    try:
        result = subprocess.run(
            ["git", "rev-parse", "HEAD"],
            capture_output=True,
            text=True,
            timeout=5,
            cwd=Path(__file__).parent,
        )
        return result.stdout.strip() or "unknown"
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def _is_rebuildable(key: str, m: ModelConfig) -> bool:
    """True for frozen weights that come from their source (not stored in the checkpoint)."""
    if key.startswith("vision."):
        trained = trainable_prefixes(m.vision)
        return m.vision.name != "tiny" and not (trained and key.removeprefix("vision.").startswith(trained))
    if key.startswith("captioner.llm.") and m.captioner.llm not in ("tiny", "small"):
        return "lora_" not in key
    if key.startswith("generator.vae."):
        return m.generator.preset == "paper"
    return False


def persistent_state(model: UniFashion) -> dict[str, torch.Tensor]:
    """The weights a checkpoint stores (contiguous, CPU)."""
    return {
        key: tensor.detach().cpu().contiguous()
        for key, tensor in model.state_dict().items()
        if not _is_rebuildable(key, model.config)
    }


def save_checkpoint(
    out: str | Path,
    model: UniFashion,
    recipe: Recipe,
    meta: dict[str, Any],
    training_state: dict[str, Any] | None = None,
) -> Path:
    """Write a checkpoint directory atomically (temporary directory, then rename).

    Args:
        out: the checkpoint directory (replaced as a whole).
        model: the model (built from ``recipe.model``).
        recipe: the resolved recipe, stored as ``config.yaml``.
        meta: run facts for ``meta.json`` (stage, step, metrics, provenance).
        training_state: what ``--resume`` needs (optimiser, scheduler, RNG, step), or None.
    """
    out = Path(out)
    with atomic_dir(out) as tmp:
        write_text_atomic(tmp / "config.yaml", dump_recipe(recipe))
        state = persistent_state(model)
        save_file(_dedupe_shared(state), str(tmp / "model.safetensors"))
        model.tokenizer.save_pretrained(str(tmp / "tokenizer"))
        write_json(
            tmp / "meta.json",
            {
                "format_version": FORMAT_VERSION,
                "unifashion_version": __version__,
                "git_sha": _git_sha(),
                "fingerprint": model.fingerprint(),
                **meta,
            },
        )
        if training_state is not None:
            torch.save(training_state, tmp / "training_state.pt")
    return out


def _dedupe_shared(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """safetensors refuses tensors that share memory (tied embeddings): store copies."""
    seen: set[int] = set()
    result = {}
    for key, tensor in state.items():
        pointer = tensor.data_ptr()
        result[key] = tensor.clone() if pointer in seen else tensor
        seen.add(pointer)
    return result


def checkpoint_dir(path: str | Path) -> Path:
    """Accept a run directory (holding checkpoint/) or a checkpoint directory."""
    path = Path(path)
    return path / "checkpoint" if (path / "checkpoint").is_dir() else path


def read_meta(path: str | Path) -> dict[str, Any]:
    """The checkpoint's meta.json (``path``: a checkpoint or run directory); a clear error when
    it is not a checkpoint."""
    path = checkpoint_dir(path)
    missing = [name for name in ("meta.json", "model.safetensors", "config.yaml") if not (path / name).is_file()]
    if missing:
        raise UserError(f"{path} is not a unifashion checkpoint (no {', '.join(missing)}).")
    meta = read_json(path / "meta.json")
    if not isinstance(meta, dict) or not isinstance(meta.get("fingerprint"), str):
        raise UserError(f"{path / 'meta.json'} is not a checkpoint's meta (no fingerprint); {REMEDY}.")
    if meta.get("format_version", 0) > FORMAT_VERSION:
        raise UserError(f"checkpoint {path} was written by a newer unifashion; upgrade to load it.")
    return meta


def read_weights(path: str | Path) -> dict[str, torch.Tensor]:
    """The tensors of a checkpoint's ``model.safetensors`` (``path``: a checkpoint or run directory).

    Raises:
        UserError: the file is truncated or damaged (one line naming it).
    """
    file = checkpoint_dir(path) / "model.safetensors"
    with refuse_corrupt(file, REMEDY, errors=(SafetensorError,)):
        return load_file(str(file))


@dataclass(frozen=True)
class LoadedCheckpoint:
    """A model rebuilt from a checkpoint directory, with the recipe and meta it was saved with."""

    model: UniFashion
    recipe: Recipe
    meta: dict[str, Any]
    path: Path

    @property
    def fingerprint(self) -> str:
        """The model fingerprint recorded at save time (vision + Q-Former weights)."""
        return str(self.meta["fingerprint"])


def load_checkpoint(path: str | Path, heads: tuple[str, ...] = ()) -> LoadedCheckpoint:
    """Rebuild the model from ``config.yaml`` and load its weights (eval mode).

    Args:
        path: checkpoint directory, or a run directory holding ``checkpoint/``.
        heads: heads to build ("caption", "generate"); each must have been trained.

    Raises:
        UserError: not a checkpoint, a head it has not trained, or weights that do not match.
    """
    path = checkpoint_dir(path)
    meta = read_meta(path)
    for head in heads:
        if head not in meta.get("heads", []):
            raise UserError(
                f"checkpoint {path} has no trained {head} head; train it with "
                f"`unifashion train RECIPE --phase 1` (stage {'caption' if head == 'caption' else 'generate'})."
            )
    recipe = load_recipe(path / "config.yaml")
    model = build_model(recipe.model, recipe.data.max_text_length, heads)
    state = read_weights(path)
    wanted = {k: v for k, v in state.items() if k.split(".")[0] in ("vision", "qformer", *_modules(heads))}
    mismatch = f"checkpoint {path} does not match its config"
    try:
        missing, unexpected = model.load_state_dict(wanted, strict=False)
    except RuntimeError:  # a tensor of another shape than the config builds
        raise UserError(f"{mismatch} (weights of other shapes); {REMEDY}.") from None
    missing = [k for k in missing if not _is_rebuildable(k, recipe.model)]
    if missing or unexpected:
        raise UserError(f"{mismatch} ({len(missing)} missing, {len(unexpected)} unexpected weights); {REMEDY}.")
    if model.fingerprint() != meta["fingerprint"]:
        raise UserError(
            f"{path / 'meta.json'} records the fingerprint {meta['fingerprint']} but the weights give "
            f"{model.fingerprint()}: the files come from different runs or were changed; {REMEDY}."
        )
    model.eval()
    return LoadedCheckpoint(model, recipe, meta, path)


def _modules(heads: tuple[str, ...]) -> tuple[str, ...]:
    return tuple({"caption": "captioner", "generate": "generator"}[h] for h in heads)


def load_training_state(path: str | Path) -> dict[str, Any]:
    """The resume state saved with a checkpoint (tensors and plain values only)."""
    file = Path(path) / "training_state.pt"
    if not file.is_file():
        raise UserError(f"{path} has no training_state.pt to resume from.")
    with refuse_corrupt(file, "the run cannot resume from it; start it again with --overwrite"):
        return torch.load(file, map_location="cpu", weights_only=True)
