"""`unifashion recipes list|show`: the recipes that ship inside the package."""

import typer

from unifashion_cli.console import handle_errors, out

app = typer.Typer(name="recipes", help="The packaged recipes (usable by name: `unifashion train demo`).",
                  no_args_is_help=True)


@app.command(name="list")
@handle_errors
def list_recipes() -> None:
    """Name and purpose (the first comment line) of every packaged recipe."""
    from unifashion_core.config import packaged_recipes

    for name, path in packaged_recipes().items():
        first = path.read_text(encoding="utf-8").splitlines()[0].lstrip("# ")
        out.print(f"{name:<16} {first.partition(': ')[2] or first}")


@app.command()
@handle_errors
def show(name: str = typer.Argument(..., help="A packaged recipe's name, e.g. demo.")) -> None:
    """Print a packaged recipe (copy it to start your own)."""
    from unifashion_core.config import recipe_path

    out.print(recipe_path(name).read_text(encoding="utf-8"), end="", markup=False, highlight=False)
