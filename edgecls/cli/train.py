"""`edgecls models`, `edgecls train`, `edgecls eval`."""

from __future__ import annotations

import click

from edgecls.cli.common import DATA_HELP
from edgecls.defaults import CHECKPOINT_DIR, DEFAULT_VAL_SPLIT, VAL_SPLIT_PERCENT
from edgecls.recipes import DEFAULT_RECIPE, RECIPES


@click.command()
def models() -> None:
    """List the models with their size, cost and the paper's Table 2 figures.

    Example: edgecls models
    """
    from edgecls.models import MODELS, create_model, model_stats

    click.echo(f"{'model':6} {'paper name':14} {'params':>9} {'fc params':>10} {'fc %':>6} {'MMACs':>7}   "
               f"{'paper params':>12} {'paper fc %':>10}")
    notes = []
    for name, spec in MODELS.items():
        stats = model_stats(create_model(name))
        click.echo(f"{name:6} {spec.paper_name:14} {stats.params:>9,} {stats.fc_params:>10,} {stats.fc_share:>6.1f} "
                   f"{stats.macs / 1e6:>7.1f}   {spec.paper.params:>12,} {spec.paper.fc_share:>10.1f}")
        notes.append(f"  {name}: {spec.description}. {spec.note}.")
    click.echo("\n".join(["", "Notes:", *notes]))


@click.command()
@click.option("--model", "model_name", default="new2", show_default=True, help="Model to train (see `edgecls models`).")
@click.option("--data", help=DATA_HELP)
@click.option("--download", is_flag=True, help="Download CIFAR-10 with torchvision into the data folder first.")
@click.option("--recipe", type=click.Choice(list(RECIPES)), default=DEFAULT_RECIPE, show_default=True,
              help="fast: accuracy per second (batch 1024, 40 epochs); best: accuracy first (batch 512, 200 epochs); "
                   "paper: the paper's protocol (batch 128, 120 epochs, 6 crops per image).")
@click.option("--epochs", type=int, help="Override the recipe's epoch count.")
@click.option("--batch-size", type=int, help="Override the recipe's batch size (the learning rate scales with it).")
@click.option("--lr", type=float, help="Override the peak learning rate.")
@click.option("--seed", type=int, default=0, show_default=True,
              help="Seed of the initial weights, the augmentation and the validation split (0 or more).")
@click.option("--val-split", type=click.IntRange(min=0),
              help="Training images (seeded) held out for validation: --eval-every picks best.pt on them, and export "
                   "makes its accuracy decisions on them. 0: none (best.pt is then picked on the test split). "
                   f"Default: {VAL_SPLIT_PERCENT}% of the training images, at most {DEFAULT_VAL_SPLIT:,} (CIFAR-10: "
                   f"{DEFAULT_VAL_SPLIT:,}).")
@click.option("--device", help="cuda, cuda:1, cpu ... Default: cuda when available.")
@click.option("--out", "out_dir", default=CHECKPOINT_DIR, show_default=True, help="Folder for checkpoints and the log.")
@click.option("--eval-every", type=click.IntRange(min=0), default=0,
              help="Measure test accuracy every N epochs and keep the best checkpoint.")
@click.option("--resume", is_flag=True, help="Continue the interrupted run from <out>/<model>.pt.")
@click.option("--train-images", type=click.IntRange(min=1),
              help="Use a seeded subset of this many training images (quick CPU runs).")
@click.option("--test-images", type=click.IntRange(min=1), help="Use a seeded subset of this many test images.")
def train(model_name: str, data: str | None, download: bool, recipe: str, epochs: int | None, batch_size: int | None,
          lr: float | None, seed: int, val_split: int | None, device: str | None, out_dir: str, eval_every: int, resume: bool,
          train_images: int | None, test_images: int | None) -> None:
    """Train a model on CIFAR-10, or on your own photos, and write <out>/<model>.pt.

    Your own data: a folder (or .tar/.tar.gz) with train/<class>/ folders of images of any size and format (JPEG, PNG,
    WebP, BMP, ...) and optionally test/<class>/; without test images, 20% of each class is held out (seeded).

    Example: edgecls train --model new2 --data ../shared/data/cifar10-jpeg.tar.gz --epochs 40

    Example: edgecls train --data my-photos/
    """
    import time

    from edgecls.data import imbalance_warning, load_cifar10
    from edgecls.train import TrainRequest
    from edgecls.train import train as run_training

    # every option is checked here, before the data is read
    request = TrainRequest(model_name, recipe=recipe, epochs=epochs, batch_size=batch_size, lr=lr, seed=seed,
                           val_split=val_split, device=device, out_dir=out_dir, eval_every=eval_every, resume=resume)
    started = time.perf_counter()
    dataset = load_cifar10(data, download=download)
    if train_images is not None or test_images is not None:
        dataset = dataset.subset(train_images, test_images, seed=seed)
    request = request.for_data(dataset)
    resized = dataset.details.get("resized")
    fitted = (f"; {resized:,} images brought to 32x32 (files from {'x'.join(map(str, dataset.details['smallest']))} "
              f"to {'x'.join(map(str, dataset.details['largest']))})") if resized else ""
    click.echo(f"data: {dataset.source}: {len(dataset.class_names)} classes, {len(dataset.train_images):,} training "
               f"({request.val_split:,} held out for validation) / {len(dataset.test_images):,} test images, loaded in "
               f"{time.perf_counter() - started:.1f} s{fitted}", err=True)
    if batch_size is None and request.batch_size is not None:  # fitted to a small data set (TrainRequest.for_data)
        recipe_batch = RECIPES[recipe].batch_size
        steps = (len(dataset.train_images) - request.val_split) * RECIPES[recipe].crops_per_image // recipe_batch
        click.echo(f"batch size {request.batch_size}, learning rate {request.plan.lr:g}: the {recipe} recipe's batch of "
                   f"{recipe_batch} would make {steps} step{'' if steps == 1 else 's'} an epoch on this data (--batch-size to "
                   "choose)", err=True)
    warning = imbalance_warning(dataset)
    if warning:
        click.echo(warning, err=True)
    result = run_training(request, dataset)
    validation = "" if result.val_accuracy is None else f"validation accuracy {result.val_accuracy:.2f}%, "
    averaged = "" if result.live_test_accuracy is None else (
        f"; weight average, the last weights alone {result.live_test_accuracy:.2f}%")
    click.echo(f"{model_name}: {validation}test accuracy {result.test_accuracy:.2f}% (single center crop{averaged}) "
               f"after {result.train_seconds:.1f} s of training ({result.images_per_second:,.0f} images/s, "
               f"warm-up of {result.warmup_seconds:.1f} s not counted)")
    click.echo(f"checkpoint: {result.checkpoint}" + (f", best: {result.best_checkpoint}" if result.best_checkpoint else ""))


@click.command("eval")
@click.option("--checkpoint", required=True, help="A checkpoint written by `edgecls train`.")
@click.option("--data", help=DATA_HELP)
@click.option("--mirror", is_flag=True, help="Average the center crop with its mirror image.")
@click.option("--device", help="cuda or cpu. Default: cuda when available.")
def eval_command(checkpoint: str, data: str | None, mirror: bool, device: str | None) -> None:
    """Test accuracy of a checkpoint, overall and per class.

    Example: edgecls eval --checkpoint checkpoints/new2.pt --mirror
    """
    from edgecls.evaluate import evaluate_checkpoint

    report = evaluate_checkpoint(checkpoint, data, mirror=mirror, device=device)
    click.echo(f"{report.model}: test accuracy {report.accuracy:.2f}% on {report.images:,} images "
               f"({'center + mirrored crop' if mirror else 'single center crop'})")
    for name, value in report.per_class.items():
        click.echo(f"  {name:12} {value:6.2f}%" if value is not None else f"  {name:12}      -")


COMMANDS = (models, train, eval_command)
