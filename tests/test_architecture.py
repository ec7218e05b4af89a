"""The house's one downward path: imports between the core's floors, the workspace at the edge, and
one batched embedding/captioning loop (the model's own methods) for every consumer."""

import ast
from pathlib import Path

import pytest

from unifashion_core.config import VisionConfig, load_recipe
from unifashion_core.models.unifashion import UniFashion

ROOT = Path(__file__).resolve().parents[1]
CORE = ROOT / "unifashion_core"
TINY = ROOT / "recipes" / "tiny.yaml"
TINY_BASELINE = VisionConfig(name="tiny", image_size=32)  # the bench's default baseline is slower


def _module_name(path: Path) -> str:
    name = ".".join(path.relative_to(ROOT).with_suffix("").parts)
    return name.removesuffix(".__init__")


def _imports() -> dict[str, set[str]]:
    """Every core module and the core modules it imports (module level and inside functions)."""
    modules = {_module_name(p): p for p in CORE.rglob("*.py")}
    graph = {}
    for name, path in modules.items():
        targets = set()
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.ImportFrom) and node.module:
                submodules = {f"{node.module}.{alias.name}" for alias in node.names} & modules.keys()
                targets |= submodules or {node.module}
            elif isinstance(node, ast.Import):
                targets |= {alias.name for alias in node.names}
        graph[name] = {t for t in targets if t != name}
    return graph


def _external(graph: dict[str, set[str]]) -> set[str]:
    return {target.split(".")[0] for targets in graph.values() for target in targets}


def _cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One import circle among core modules, or None."""
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        stack.append(node)
        for target in sorted(graph.get(node, ())):
            if target not in graph:
                continue
            if state.get(target) == 1:
                return stack[stack.index(target):] + [target]
            if target not in state and (found := visit(target)):
                return found
        stack.pop()
        state[node] = 2
        return None

    for module in sorted(graph):
        if module not in state and (found := visit(module)):
            return found
    return None


def _floor(module: str) -> str:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else ""


# Who may not import whom: each floor stands only on the floors below it.
FORBIDDEN = {
    "distributed": {"data", "models", "losses", "checkpoint", "features", "shards", "metrics", "train", "retrieval",
                    "inference", "evaluation", "walkthrough"},
    "shards": {"data", "models", "losses", "checkpoint", "features", "metrics", "train", "retrieval", "inference",
               "evaluation", "walkthrough"},
    "data": {"models", "losses", "checkpoint", "features", "metrics", "train", "retrieval", "inference",
             "evaluation", "walkthrough", "serve"},
    "models": {"checkpoint", "features", "metrics", "train", "retrieval", "inference", "evaluation", "walkthrough",
               "serve"},
    "metrics": {"checkpoint", "features", "train", "retrieval", "inference", "evaluation", "walkthrough", "serve"},
    "checkpoint": {"features", "metrics", "train", "retrieval", "inference", "evaluation", "walkthrough", "serve"},
    "features": {"checkpoint", "metrics", "train", "retrieval", "inference", "evaluation", "walkthrough", "serve"},
    "train": {"retrieval", "inference", "evaluation", "walkthrough", "serve"},
    "retrieval": {"train", "inference", "evaluation", "walkthrough", "serve"},
    "inference": {"train", "retrieval", "evaluation", "walkthrough", "serve"},
    "evaluation": {"walkthrough", "serve"},
    "serve": {"train", "evaluation", "walkthrough"},
}


def test_core_has_no_import_circle():
    assert _cycle(_imports()) is None


def test_each_floor_imports_only_the_floors_below_it():
    graph = _imports()
    wrong = sorted(f"{module} -> {target}" for module, targets in graph.items() for target in targets
                   if target.startswith("unifashion_core.") and _floor(target) in FORBIDDEN.get(_floor(module), ()))
    assert wrong == []


def test_core_never_imports_the_cli_typer_or_rich():
    assert not {"unifashion_cli", "typer", "rich"} & _external(_imports())


def test_core_has_one_batching_loop_and_the_model_owns_embedding_and_captioning():
    sources = {p: p.read_text(encoding="utf-8") for p in CORE.rglob("*.py")}
    loops = [p.name for p, text in sources.items() if "range(0, len(" in text or "range(0, total" in text]
    assert loops == ["batching.py"]
    generate_calls = sorted(str(p.relative_to(CORE)) for p, text in sources.items() if "captioner.generate(" in text)
    assert generate_calls == ["models/unifashion.py"]
    encoders = {str(p.relative_to(CORE)) for p, text in sources.items()
                if any(call in text for call in (".encode_image(", ".encode_text(", ".encode_multimodal("))}
    # outside the models, only the training losses run the Q-Former's encoders (with gradients)
    assert {path for path in encoders if not path.startswith("models/")} == {"train/stages.py", "train/phase2.py"}


@pytest.fixture
def counted(monkeypatch: pytest.MonkeyPatch) -> dict[str, int]:
    """Counts calls of the model's batched methods."""
    calls = dict.fromkeys(("embed_images", "embed_texts", "embed_composed", "caption_images"), 0)
    for name in calls:
        original = getattr(UniFashion, name)

        def wrapper(self, *args, _name=name, _original=original, **kwargs):
            calls[_name] += 1
            return _original(self, *args, **kwargs)

        monkeypatch.setattr(UniFashion, name, wrapper)
    return calls


def test_every_consumer_goes_through_the_model_batched_methods(tiny_phase1, tmp_path, counted):
    from unifashion_core.evaluation.bench_cir import bench_cir
    from unifashion_core.evaluation.bench_retrieval import bench_retrieval
    from unifashion_core.retrieval.build import build_index
    from unifashion_core.retrieval.search import load_searcher, search
    from unifashion_core.train.phase2 import run_phase2

    phase1, data = tiny_phase1 / "phase1", tiny_phase1 / "data"
    build_index(phase1, data, tmp_path / "index", captions=True)
    assert counted["embed_images"] and counted["embed_texts"] and counted["caption_images"]
    model, index = load_searcher(tmp_path / "index", None)
    image = next(iter((data / "images").rglob("*.png")))
    before = dict(counted)
    search(model, index, text="red shirt", k=3)
    search(model, index, image=image, k=3)
    search(model, index, text="in blue", image=image, k=3)
    assert all(counted[name] > before[name] for name in ("embed_texts", "embed_images", "embed_composed"))
    for bench in (lambda: bench_retrieval(phase1, data, tmp_path / "r", baseline_vision=TINY_BASELINE),
                  lambda: bench_cir(phase1, data, tmp_path / "c"),
                  lambda: run_phase2(load_recipe(TINY, ["train.phase2.max_steps=1", "train.phase2.batch_size=8",
                                                        "train.eval_every=1"]), phase1, data, tmp_path / "p2")):
        before = dict(counted)
        bench()
        assert counted["embed_images"] > before["embed_images"]
    assert counted["embed_composed"] > before["embed_composed"]  # phase 2's validation ranks composed queries


def test_core_entry_points_leave_the_workspace_alone(tiny_phase1, tmp_path, monkeypatch):
    from unifashion_core.data.prepare import prepare
    from unifashion_core.evaluation.bench_retrieval import bench_retrieval
    from unifashion_core.inference import GenerationRequest, caption_images, generate_images
    from unifashion_core.retrieval.build import build_index
    from unifashion_core.retrieval.search import load_searcher, search
    from unifashion_core.train.phase1 import run_training
    from unifashion_core.train.phase2 import run_phase2

    home, cwd = tmp_path / "ws", tmp_path / "cwd"
    cwd.mkdir()
    monkeypatch.setenv("UNIFASHION_HOME", str(home))
    monkeypatch.chdir(cwd)
    data = tmp_path / "data"
    prepare("demo", data, num_items=60, image_size=32)
    short = ["train.retrieval.max_steps=1", "train.caption.max_steps=1", "train.generate.max_steps=1",
             "train.phase2.max_steps=1", "train.phase2.batch_size=4"]
    phase1 = run_training(load_recipe(TINY, short), data, tmp_path / "run").checkpoint
    run_phase2(load_recipe(TINY, short), phase1, data, tmp_path / "run2")
    build_index(phase1, data, tmp_path / "index")
    search(*load_searcher(tmp_path / "index", None), text="red", k=2)
    bench_retrieval(phase1, data, tmp_path / "bench", baseline_vision=TINY_BASELINE)
    caption_images(phase1, next(iter((data / "images").rglob("*.png"))))
    generate_images(phase1, GenerationRequest(text="red dress", steps=1))
    assert not home.exists() and not any(cwd.iterdir())
    assert not list(tmp_path.rglob("state.json"))
