"""`unifashion generate`: garment images from text, image + text, or person + mask (+ sketch)."""

from pathlib import Path

import typer

from unifashion_cli.console import RichProgress, err, handle_errors, out, print_json


@handle_errors
def generate(
    out_path: Path = typer.Option(..., "--out", help="Output PNG (several images: NAME-0.png, NAME-1.png...)."),
    text: str | None = typer.Option(None, "--text", help='What to draw, e.g. "blue polka-dot dress".'),
    image: Path | None = typer.Option(None, "--image", help="Reference garment image (with --text: edit it)."),
    person: Path | None = typer.Option(None, "--person", help="Try-on: the person to dress (needs --mask)."),
    mask: Path | None = typer.Option(
        None, "--mask", help="Try-on: agnostic mask, white = generate (thresholded at 50 %; resized if scaled)."
    ),
    sketch: Path | None = typer.Option(
        None, "--sketch", help="Design: the garment's lines (either polarity); with --person, on the person."
    ),
    steps: int | None = typer.Option(
        None, "--steps", help="Sampling steps (default: the recipe's, 20; paper: 50 plms)."
    ),
    sampler: str | None = typer.Option(
        None, "--sampler", help="dpm++ (DPM-Solver++), plms (PNDM) or ddim (default: recipe's)."
    ),
    guidance: float | None = typer.Option(
        None, "--guidance", help="Classifier-free guidance scale (default: recipe's)."
    ),
    seed: int = typer.Option(0, "--seed", help="Random seed (stored in the PNG metadata)."),
    num_images: int = typer.Option(1, "--num-images", help="How many images."),
    checkpoint: Path | None = typer.Option(None, "--checkpoint", help="Checkpoint (default: workspace latest)."),
    json_output: bool = typer.Option(False, "--json", help="Print the written paths and settings as JSON."),
    quiet: bool = typer.Option(False, "-q", "--quiet", help="No progress output."),
) -> None:
    """Generate images; PNGs carry the seed and settings in their metadata."""
    from unifashion_cli import workspace
    from unifashion_core.inference import GenerationRequest, check_request, generate_images, save_png

    request = GenerationRequest(text, image, person, mask, sketch, steps, sampler, guidance, seed, num_images)
    for warning in check_request(request):
        if not quiet:
            err.print(f"warning: {warning}", soft_wrap=True)
    with RichProgress(quiet) as progress:
        images, settings = generate_images(workspace.resolve("checkpoint", checkpoint), request, progress)
    target = out_path if out_path.suffix else out_path.with_suffix(".png")
    paths = (
        [target]
        if len(images) == 1
        else [target.with_name(f"{target.stem}-{i}{target.suffix}") for i in range(len(images))]
    )
    for note in settings["notes"]:
        err.print(f"note: {note}")
    for i, (picture, path) in enumerate(zip(images, paths, strict=True)):
        save_png(picture, path, {**settings, "index": i})
    if json_output:
        print_json({"images": [str(p) for p in paths], "settings": settings})
    else:
        out.print("\n".join(str(p) for p in paths))
