"""``emmax export``: write a model as a directory that sentence-transformers and transformers
load as they are, a call to ``models.export.export_model``."""

from __future__ import annotations

import click

from .options import force_option


@click.command("export")
@click.argument("model", required=False, default=None)
@click.option(
    "-o",
    "--output",
    required=True,
    type=click.Path(file_okay=False),
    help="Directory to write (written atomically; its parent must exist).",
)
@force_option
def command(model, output, force) -> None:
    """Export MODEL as a sentence-transformers / transformers model directory.

    MODEL: a built-in name, an emmax model directory or a transformers encoder directory;
    default: emmax-small. The directory loads as it is with
    `SentenceTransformer(DIR)` (same embeddings as `emmax embed`: pooling and normalisation
    included) and with transformers' `AutoModel` / `AutoTokenizer`.

    \b
    Examples:
      emmax export emmax-small -o emmax-small-st/
      emmax export runs/em/ -o my-model-st/ --force
    """
    from ..models.export import export_model

    export_model(model, output, force=force)  # logs what it wrote
