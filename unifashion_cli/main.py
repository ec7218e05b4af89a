"""The `unifashion` Typer app. Each subcommand lives in its own small module."""

import os

import typer

from unifashion_cli import bench, caption, demo, generate, index, prepare, recipes, search, serve, train
from unifashion_cli.console import OneLineErrors

# Our own rich progress reports the work; the libraries' download/loading bars would only add noise.
os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")

app = typer.Typer(
    name="unifashion",
    cls=OneLineErrors,
    help="UniFashion: one vision-language model for fashion retrieval, captioning and generation.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_show_locals=False,
)

app.command(name="prepare")(prepare.prepare)
app.command(name="train")(train.train)
app.add_typer(index.app, name="index")
app.command(name="search")(search.search)
app.command(name="caption")(caption.caption)
app.command(name="generate")(generate.generate)
app.command(name="serve")(serve.serve)
app.add_typer(bench.app, name="bench")
app.command(name="demo")(demo.demo)
app.add_typer(recipes.app, name="recipes")

if __name__ == "__main__":
    app()
